"""The merge queue on real repositories: the engine's reconciler, git, bubblewrap sandboxes.

Entries are committed branches of a real repository (tests/queue_support.py); `Factory.run`
lands them. What a user relies on: main only ever points to a tree that passed its tests,
every good entry lands, every bad one is rejected with a reason that names the cause, a
flaky test evicts nobody, and a test command that cannot run pauses the queue instead of
rejecting everything.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.engine import Factory
from agents.orchestrator import RunSummary
from agents.queue.chain import MODES
from agents.store.audit import compare_projections, verify_chain
from tests.queue_support import (
    BREAK,
    CONFLICT,
    GOOD,
    build,
    configure,
    entry_name,
    git,
    main_trees_green,
    seed,
)


async def land(root: Path, branches: dict[str, str]) -> tuple[RunSummary, list]:
    factory = await Factory.open(root)
    try:
        await seed(factory, root, branches)
        summary = await factory.run(["q"])
        events = [s.event for s in await factory.store.read_events(limit=1_000_000)]
    finally:
        await factory.close()
    db = root / ".factory" / "factory.db"
    assert verify_chain(db).ok
    assert compare_projections(db) == []
    return summary, events


def key(i: int) -> str:
    return f"q/{entry_name(i)}"


async def test_a_batch_lands_in_one_test_run_and_its_culprit_is_named(tmp_path: Path) -> None:
    kinds = [GOOD] * 8
    kinds[3] = BREAK
    root = tmp_path / "repo"
    branches = build(root, kinds, [])
    configure(root, mode="batch", runners=1)
    start = git(root, "rev-parse", "main").strip()
    summary, events = await land(root, branches)
    assert sorted(summary.landed) == [key(i) for i in range(8) if i != 3]
    (rejected, reason), = summary.rejected
    assert rejected == key(3)
    assert reason.startswith("tests: tests failed (exit code 1)") and "test_mod_3" in reason
    runs = [e for e in events if e.kind == "queue_test_started"]
    # main itself, the batch of 8 (red), e03 alone on main (red again), the other 7 (green)
    assert [(r.position, r.size, r.alone) for r in runs] == [
        (0, 0, ""), (8, 8, ""), (1, 1, key(3)), (7, 7, "")]
    assert main_trees_green(root, start, kinds, []) == []
    moves = [e for e in events if e.kind == "main_moved" and e.by == "queue"]
    assert len(moves) == 1 and len(moves[0].keys) == 7
    # Every landed entry's commit is in main, and main is the tree that was tested.
    for i in range(8):
        if i != 3:
            assert git(root, "merge-base", "--is-ancestor", branches[entry_name(i)], "main") == ""
    assert git(root, "rev-parse", "main").strip() == runs[-1].commit


async def test_a_pair_that_fails_only_together_rejects_the_second(tmp_path: Path) -> None:
    kinds = [GOOD] * 6
    root = tmp_path / "repo"
    branches = build(root, kinds, [(1, 4)])
    configure(root, mode="speculative-batch", runners=2)
    start = git(root, "rev-parse", "main").strip()
    summary, _ = await land(root, branches)
    # Whichever of the two comes second in the queue fails on top of the other.
    (rejected, reason), = summary.rejected
    assert rejected in (key(1), key(4)) and "test_pair_0" in reason
    assert sorted(summary.landed) == [key(i) for i in range(6) if key(i) != rejected]
    assert main_trees_green(root, start, kinds, [(1, 4)]) == []


async def test_a_conflict_with_main_is_rejected_naming_the_file(tmp_path: Path) -> None:
    kinds = [GOOD, CONFLICT, GOOD]
    root = tmp_path / "repo"
    branches = build(root, kinds, [])
    configure(root, mode="speculative", runners=2)
    summary, _ = await land(root, branches)
    assert sorted(summary.landed) == [key(0), key(2)]
    (rejected, reason), = summary.rejected
    assert rejected == key(1) and reason.startswith("conflicts: ") and "pkg/shared.txt" in reason


async def test_a_test_command_that_cannot_run_pauses_the_queue(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    branches = build(root, [GOOD, GOOD], [])
    configure(root, mode="serial", runners=1, test_command="no-such-test-runner -q")
    start = git(root, "rev-parse", "main").strip()
    summary, events = await land(root, branches)
    assert summary.rejected == [] and summary.landed == []
    assert [k for k, _ in summary.waiting] == [key(0), key(1)]
    why = summary.waiting[0][1]
    assert "paused" in why and "exit code 127" in why and "could not run" in why, why
    paused, = [e for e in events if e.kind == "queue_paused"]
    assert paused.main == start
    notice = [e for e in events if e.kind == "notice" and "merge queue is paused" in e.message]
    assert notice and "nothing is blamed on an entry" in notice[0].message
    assert git(root, "rev-parse", "main").strip() == start
    assert summary.status == "failed"


async def test_a_test_failing_on_main_is_quarantined_not_blamed(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    branches = build(root, [GOOD, GOOD], [])
    configure(root, mode="serial", runners=1)
    (root / "tests" / "test_broken.py").write_text(
        "import unittest\n\n\nclass BrokenTest(unittest.TestCase):\n"
        "    def test_clock(self):\n        self.fail('broken on main')\n")
    git(root, "add", "tests/test_broken.py")
    git(root, "commit", "-qm", "a person commits a broken test to main")
    summary, events = await land(root, branches)
    assert sorted(summary.landed) == [key(0), key(1)] and summary.rejected == []
    quarantined, = [e for e in events if e.kind == "tests_quarantined"]
    assert [t for t in quarantined.tests if "test_broken" in t] == quarantined.tests != []
    assert not any(e.kind == "queue_paused" for e in events)
    notice = [e for e in events if e.kind == "notice" and "Quarantined" in e.message]
    assert notice and "test_broken" in notice[0].message
    conn = sqlite3.connect(root / ".factory" / "factory.db")
    try:
        rows = conn.execute("SELECT name FROM flaky_tests WHERE quarantined IS NOT NULL")
        assert sorted(name for (name,) in rows) == sorted(quarantined.tests)
    finally:
        conn.close()


async def test_main_moved_by_someone_else_is_tested_and_built_on(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    branches = build(root, [GOOD, GOOD, GOOD], [])
    configure(root, mode="speculative-batch", runners=2)
    factory = await Factory.open(root)
    try:
        await seed(factory, root, dict(list(branches.items())[:1]))
        first = await factory.run(["q"])
    finally:
        await factory.close()
    assert first.landed == [key(0)]
    (root / "NOTES.md").write_text("a person's commit\n")
    git(root, "add", "NOTES.md")
    git(root, "commit", "-qm", "a person commits to main")
    outside = git(root, "rev-parse", "main").strip()
    summary, events = await land(root, dict(list(branches.items())[1:]))
    assert sorted(summary.landed) == [key(0), key(1), key(2)]
    moved = [e for e in events if e.kind == "main_moved" and e.by == "outside"]
    assert moved and moved[-1].main_after == outside
    # Main itself was tested again before anything landed on it.
    assert any(e.kind == "queue_test_started" and e.commit == outside for e in events)
    assert git(root, "merge-base", "--is-ancestor", outside, "main") == ""


@st.composite
def queues(draw: st.DrawFn) -> tuple[list[str], list[tuple[int, int]], float, str]:
    n = draw(st.integers(2, 9))
    kinds = draw(st.lists(st.sampled_from([GOOD, GOOD, GOOD, BREAK, CONFLICT]), min_size=n,
                          max_size=n))
    good = [i for i, k in enumerate(kinds) if k == GOOD]
    pairs: list[tuple[int, int]] = []
    if len(good) >= 2 and draw(st.booleans()):
        a, b = draw(st.permutations(good))[:2]
        pairs = [(a, b)]
    return kinds, pairs, draw(st.sampled_from([0.0, 0.1])), draw(st.sampled_from(MODES))


@given(queues())
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
async def test_every_mode_keeps_main_green_on_a_real_repository(
        tmp_path_factory: pytest.TempPathFactory,
        case: tuple[list[str], list[tuple[int, int]], float, str]) -> None:
    kinds, pairs, flaky_rate, mode = case
    root = tmp_path_factory.mktemp("queue") / "repo"
    branches = build(root, kinds, pairs, flaky_rate=flaky_rate)
    configure(root, mode=mode, runners=1 if mode == "serial" else 3)
    start = git(root, "rev-parse", "main").strip()
    summary, _ = await land(root, branches)
    assert main_trees_green(root, start, kinds, pairs) == []
    landed = set(summary.landed)
    rejected = dict(summary.rejected)
    partner = {a: b for a, b in pairs} | {b: a for a, b in pairs}
    for i, kind in enumerate(kinds):
        if kind == BREAK:
            assert rejected.get(key(i), "").startswith("tests:"), (i, summary)
        elif kind == CONFLICT:
            assert rejected.get(key(i), "").startswith("conflicts:"), (i, summary)
        elif i in partner and key(partner[i]) in landed:
            assert key(i) in landed or rejected.get(key(i), "").startswith("tests:")
        else:
            assert key(i) in landed, (i, kinds, pairs, summary)  # no flaky eviction
