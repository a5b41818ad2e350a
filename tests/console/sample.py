"""A small factory history written event by event on a fixed clock, for snapshots: the
same events, times and order on every run, over a real store and the demo's real specs."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

from agents import demo
from agents import events as ev
from agents.config import load_config
from agents.engine import Factory
from console.client import InProcessClient

T0 = 1_790_000_000.0
NOW = T0 + 95


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def time(self) -> float:
        self.now += 1.0
        return self.now


def _agent(spec: str, task: str, files: list[str], steps: int, status: str) -> list[ev.Event]:
    ids: dict[str, Any] = {"spec_id": spec, "task_id": task, "agent_id": f"{spec}.{task}.1"}
    out: list[ev.Event] = [
        ev.TaskStarted(**ids, attempt=1, branch=f"factory/{spec}/{task}",
                       worktree=f".factory/worktrees/{spec}--{task}", base_commit="0" * 40),
        ev.AgentStarted(**ids, role="implementer", model="replay/demo",
                        messages=[{"role": "user", "content": f"do {task}"}]),
    ]
    for step in range(1, steps + 1):
        call = {"id": f"c{step}", "type": "function",
                "function": {"name": "edit_file",
                             "arguments": f'{{"path": "{files[0]}", "search": "a", '
                                          f'"replace": "b{step}"}}'}}
        out.append(ev.AgentTurn(**ids, step=step, model="replay/demo",
                                message={"role": "assistant", "content": f"step {step}",
                                         "tool_calls": [call]},
                                tokens_in=1200 * step, tokens_out=80, cost_usd=0.0004 * step))
        out.append(ev.ToolExecuted(**ids, step=step, call_id=f"c{step}", name="edit_file",
                                   arguments={"path": files[0]}, result="edited 1 line",
                                   changed=True, duration=0.002))
    out.append(ev.AgentFinished(**ids, status=status, summary=f"{task} done"))
    return out


def history() -> list[ev.Event]:
    events: list[ev.Event] = [
        ev.RunStarted(run_id="run1", specs=["stats", "slug", "cli"], concurrency=4,
                      sandbox="bwrap", budget_tokens=2_000_000, budget_usd=5.0),
    ]
    plans = {"stats": [("sentences", ["textkit/stats.py", "tests/test_sentences.py"]),
                       ("fast-count", ["textkit/stats.py"])],
             "slug": [("max-length", ["textkit/slug.py", "tests/test_slug_length.py"]),
                      ("separator", ["textkit/slug.py", "tests/test_slug_separator.py"])],
             "cli": [("main", ["textkit/__main__.py", "tests/test_cli.py"])]}
    for spec, tasks in plans.items():
        events.append(ev.SpecRegistered(spec_id=spec, title=spec.title(),
                                        path=f"specs/{spec}.md", digest=spec))
        events.append(ev.PlanAccepted(spec_id=spec, digest=spec, tasks=[
            ev.PlannedTask(id=t, title=f"{spec} {t}", paths=files,
                           acceptance=["python -m unittest"]) for t, files in tasks]))
    outcomes = {"sentences": "landed", "fast-count": "rejected", "max-length": "awaiting",
                "separator": "awaiting", "main": "running"}
    for spec, tasks in plans.items():
        for task, files in tasks:
            ids = {"spec_id": spec, "task_id": task}
            outcome = outcomes[task]
            agent = _agent(spec, task, files, 3, "finished")
            if outcome == "running":  # and waiting for a person's answer
                events.extend(agent[:-1])
                events.append(ev.QuestionAsked(
                    **ids, agent_id=f"{spec}.{task}.1", question_id="q-0123456789",
                    task_key=f"{spec}/{task}", step=4, call_id="c4",
                    question="Should `python -m textkit` read stdin when no file is given?",
                    options=["yes, read stdin", "no, print usage"]))
                continue
            events.extend(agent)
            branch = f"factory/{spec}/{task}"
            commit = f"{abs(hash(task)) % 10**8:08d}".ljust(40, "0")
            events.append(ev.BranchCommitted(**ids, branch=branch, commit=commit,
                                             base_commit="0" * 40, files=files,
                                             insertions=12, deletions=3))
            events.append(ev.QueueEntered(**ids, branch=branch, commit=commit,
                                          risk="medium" if len(files) > 1 else "low",
                                          risk_reasons=[f"changes tests ({files[-1]})"]
                                          if len(files) > 1 else [],
                                          needs_approval=True))
            if outcome == "landed":
                events += [ev.ApprovalDecided(**ids, approved=True),
                           ev.LandingStarted(**ids, branch=branch, commit=commit),
                           ev.GateResult(**ids, gate="conflicts", passed=True),
                           ev.GateResult(**ids, gate="dependencies", passed=True),
                           ev.GateResult(**ids, gate="tests", passed=True),
                           ev.BranchLanded(**ids, branch=branch, commit=commit,
                                           main_before="0" * 40, main_after="1" * 40)]
            elif outcome == "rejected":
                events += [ev.ApprovalDecided(**ids, approved=True),
                           ev.LandingStarted(**ids, branch=branch, commit=commit),
                           ev.GateResult(**ids, gate="conflicts", passed=True),
                           ev.GateResult(**ids, gate="dependencies", passed=True),
                           ev.GateResult(**ids, gate="tests", passed=False,
                                         detail="test_hyphenated_is_one_word"),
                           ev.BranchRejected(**ids, branch=branch, gate="tests",
                                             reason="tests failed: test_hyphenated_is_one_word")]
    events += [
        ev.ConflictChecked(a="factory/slug/max-length", b="factory/slug/separator",
                           a_head="a" * 40, b_head="b" * 40, conflicts=True,
                           files=["textkit/slug.py"]),
        ev.ConflictChecked(a="factory/slug/max-length", b="factory/stats/sentences",
                           a_head="a" * 40, b_head="c" * 40, conflicts=False, files=[]),
        # The queue's own state: main moved by it, the batch size after, a flake seen, and
        # main's tests running again.
        ev.MainMoved(main_before="0" * 40, main_after="1" * 40, keys=["stats/sentences"],
                     window=9),
        ev.QueueTestStarted(run_id="run-flaky", commit="1" * 40, position=0),
        ev.QueueTestFinished(run_id="run-flaky", commit="1" * 40, passed=False,
                             failing=["tests/test_clock.py::test_tick"], reason="red"),
        ev.FlakeRecorded(run_id="run-flaky", tests=["tests/test_clock.py::test_tick"]),
        ev.QueueTestStarted(run_id="run-main", commit="1" * 40, position=0, attempt=2),
    ]
    return events


async def open_sample(root: Path, monkeypatch: Any, *, empty: bool = False) -> InProcessClient:
    """Build the demo repository at root and a store holding `history()` (none if `empty`:
    a factory before its first run)."""
    import agents.store.store as store_module
    import console.format as fmt

    monkeypatch.setattr(store_module, "time", types.SimpleNamespace(time=Clock().time))
    monkeypatch.setattr(fmt, "time", types.SimpleNamespace(time=lambda: NOW))
    if not root.exists():
        demo.build(root, "bwrap")
    factory = await Factory.open(root, load_config(root / ".factory.toml"))
    if factory.store.last_id == 0 and not empty:
        for event in history():
            await factory.store.append(event)
    return InProcessClient(factory)
