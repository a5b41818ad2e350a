"""A refused entry goes back to its agent (issue 14, item 9): its conversation continues with
the gate's findings, main merged in by the engine when it moved, and it submits again within
`[queue] resubmits`.

On the demo project, run for real (git, the queue, the sandbox backend "none", the replay
model): `stats/fast-count` breaks a test and fixes it when told; whichever slug task lands
second conflicts and resolves it; `stats/unicode-words` cannot drop its import and gives up;
`stats/counter` and `cli/main` are refused by two gates in turn, and revised twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agents import demo
from agents import events as ev
from agents.engine import Factory
from tests.conftest import git
from tests.test_engine import SLUG_PAIR, build_demo


async def run_demo(root: Path) -> tuple[Any, list[ev.Event], dict[str, list[dict[str, Any]]]]:
    factory = await Factory.open(root)
    try:
        summary = await factory.run()
        events = [s.event for s in await factory.store.read_events(limit=100_000)]
        conversations = {a["id"]: await factory.store.messages(a["id"])
                         for a in factory.store.rows("agents")}
    finally:
        await factory.close()
    return summary, events, conversations


def of(events: list[ev.Event], kind: str) -> dict[str, Any]:
    return {f"{e.spec_id}/{e.task_id}": e for e in events if e.kind == kind}


def edit_trajectory(root: Path, key: str, turns: int, *extra: dict[str, Any]) -> None:
    """Keep the first `turns` of an agent's recorded turns, then play `extra`."""
    path = root / ".factory" / "replay" / "demo.json"
    doc = json.loads(path.read_text())
    doc["agents"][key] = doc["agents"][key][:turns] + list(extra)
    path.write_text(json.dumps(doc))  # under .factory/: read by the engine, not in git


def finish(summary: str) -> dict[str, Any]:
    return {"content": None, "tool_calls": [{"name": "finish", "arguments": {"summary": summary}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10}}


async def test_refused_entries_go_back_to_their_agents_and_land_revised(tmp_path: Path) -> None:
    root = build_demo(tmp_path)
    summary, events, conversations = await run_demo(root)
    returned = of(events, "branch_returned")
    loser, = set(returned) & SLUG_PAIR
    assert set(returned) == {"stats/fast-count", "stats/unicode-words", "stats/counter",
                             "cli/main", loser}
    assert {"stats/fast-count", "stats/counter", "cli/main", loser} <= set(summary.landed)
    # A second refusal by another gate: back again, within `[queue] resubmits` (2).
    rounds = [(e.gate, e.round) for e in events if isinstance(e, ev.BranchReturned)
              and e.task_id == "main"]
    assert rounds == [("policy", 1), ("todo", 2)]

    # The same agent, its conversation continued: the findings follow its first finish.
    agents = {e.agent_id for e in events if e.kind == "agent_started"
              and e.task_id == "fast-count" and e.role != "reviewer"}  # type: ignore[union-attr]
    assert agents == {"stats.fast-count.1"}
    talk = conversations["stats.fast-count.1"]
    told = [m for m in talk if m["role"] == "user" and "merge queue refused" in m["content"]]
    assert len(told) == 1 and "`tests` gate" in told[0]["content"]
    assert "test_hyphenated_is_one_word" in told[0]["content"]
    finishes = [i for i, m in enumerate(talk) for c in m.get("tool_calls") or []
                if c["function"]["name"] == "finish"]
    assert len(finishes) == 2 and finishes[0] < talk.index(told[0]) < finishes[1]

    # The conflict's loser got main merged in (git's merge, recorded as the revision's
    # parent), was told which file conflicts, and its resolution landed with both options.
    # (Its second return, the review's, starts from the commit that resolved the conflict.)
    conflict, reviewed = [e for e in events if isinstance(e, ev.BranchReturned)
                          and f"{e.spec_id}/{e.task_id}" == loser]
    resolving, = [e for e in events if isinstance(e, ev.RevisionStarted)
                  and f"{e.spec_id}/{e.task_id}" == loser and e.round == 1]
    assert (conflict.gate, reviewed.gate) == ("conflicts", "review")
    assert resolving.conflicts == ["textkit/slug.py"]
    head = reviewed.commit
    parents = git(root, "rev-list", "--parents", "-n", "1", head).split()[1:]
    assert conflict.commit in parents and resolving.merged_main in parents
    slug = git(root, "show", "main:textkit/slug.py")
    assert "max_length" in slug and "separator" in slug
    merged_note = [m for m in conversations[returned[loser].agent_id]
                   if m["role"] == "user" and "merged the current main" in m["content"]]
    assert merged_note and "textkit/slug.py" in merged_note[0]["content"]

    # An agent that cannot fix it gives up: the rejection is final, with the gate's reason.
    rejected = of(events, "branch_rejected")
    assert set(rejected) == {"stats/unicode-words"}
    assert rejected["stats/unicode-words"].gate == "dependencies"
    assert "its revision changed nothing" in rejected["stats/unicode-words"].reason


async def test_a_conflict_left_unresolved_is_not_committed(tmp_path: Path) -> None:
    root = build_demo(tmp_path)
    path = root / ".factory" / "replay" / "demo.json"
    first = {key: len(turns) for key, turns in json.loads(path.read_text())["agents"].items()}
    revisions = len(demo.SLUG_RESOLVED) + len(demo.SLUG_REVIEWED)
    for key in SLUG_PAIR:  # the loser finishes at once: git's markers are still in the file
        edit_trajectory(root, key, first[key] - revisions, finish("resolved, I think"))
    summary, events, _ = await run_demo(root)
    loser, = set(of(events, "branch_returned")) & SLUG_PAIR
    rejected = of(events, "branch_rejected")[loser]
    assert rejected.gate == "conflicts"
    assert "conflict markers left in textkit/slug.py" in rejected.reason
    assert loser not in summary.landed
    assert "<<<<<<<" not in git(root, "show", "main:textkit/slug.py")


async def test_no_resubmits_rejects_at_once(tmp_path: Path) -> None:
    root = build_demo(tmp_path)
    config = root / ".factory.toml"
    config.write_text(config.read_text().replace("[queue]\n", "[queue]\nresubmits = 0\n"))
    git(root, "commit", "-qam", "no resubmits")
    summary, events, _ = await run_demo(root)
    assert not of(events, "branch_returned")
    rejected = {key: reason.split(":")[0] for key, reason in summary.rejected}
    loser, = set(rejected) & SLUG_PAIR
    assert rejected == {"stats/unicode-words": "dependencies", "stats/fast-count": "tests",
                        "stats/counter": "overlap", "cli/main": "policy", loser: "conflicts"}
