"""The queue's planner (agents/queue/chain.py) driven to the end over random queues.

Each example is a queue of entries, some good, some breaking the tests, some pairs that pass
alone and fail together, some conflicting with main, and a flaky test hit at a random rate.
The planner's intents are carried out against a model of the trees (which entries a commit
holds) whose tests fail exactly as the entries say, plus the flakes. In every mode: main
only ever moves to a tree whose tests pass; every good entry lands; every bad entry is
rejected with its reason; no entry is evicted for a flake. The same planner runs the real
queue; tests/test_queue.py drives that on real repositories.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.queue import chain
from agents.queue.chain import MODES, QueueSettings


@dataclass
class World:
    """The trees the chain builds, what their tests say, and the queue's rows."""

    breakers: set[str]
    pairs: list[tuple[str, str]]
    conflicting: set[str]
    flaky_rate: float
    rng: random.Random
    contents: dict[str, frozenset[str]] = field(default_factory=lambda: {"m0": frozenset()})
    runs: list[dict[str, Any]] = field(default_factory=list)
    links: dict[str, dict[str, Any]] = field(default_factory=dict)
    flakes: set[str] = field(default_factory=set)
    quarantined: set[str] = field(default_factory=set)
    mains: list[str] = field(default_factory=lambda: ["m0"])
    landed: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    why: dict[str, Any] = field(default_factory=dict)

    def failing(self, commit: str) -> list[str]:
        held = self.contents[commit]
        out = {f"tests/test_mod_{k}.py::test_value" for k in held & self.breakers}
        out |= {f"tests/test_pair_{i}.py::test_not_both"
                for i, (a, b) in enumerate(self.pairs) if a in held and b in held}
        return sorted(out)

    def test(self, commit: str, **extra: Any) -> None:
        """A run starts; it ends (`finish`) some rounds later, in any order."""
        names = self.failing(commit)
        if self.rng.random() < self.flaky_rate:
            names = [*names, f"tests/test_flaky.py::test_{self.rng.randrange(3)}"]
        self.runs.append({"id": f"r{len(self.runs)}", "commit_sha": commit,
                          "status": "running", "outcome": names, "failing": [],
                          "reason": "tests failed", "alone": None, **extra})

    def finish_one(self) -> bool:
        running = [r for r in self.runs if r["status"] == "running"]
        if not running:
            return False
        run = self.rng.choice(running)
        run.update(status="failed" if run["outcome"] else "passed", failing=run["outcome"])
        return True


def files_of(key: str, world: World) -> list[str]:
    for i, (a, b) in enumerate(world.pairs):
        if key in (a, b):
            return [f"pairs/pair_{i}_{'a' if key == a else 'b'}.py"]
    return [f"pkg/mod_{key}.py" if key in world.breakers else f"pkg/feat_{key}.py"]


def drive(mode: str, world: World, keys: list[str], runners: int = 4) -> int:
    """Carry the planner's intents out until the queue is empty; the number of test runs."""
    q = QueueSettings(mode=mode, runners=1 if mode == "serial" else runners)  # type: ignore[arg-type]
    entries = [{"key": k, "commit_sha": f"c{k}", "files": files_of(k, world), "cap": None,
                "suspect": 0, "failed_tests": [], "suspect_single": 0} for k in keys]
    main, window, merges = "m0", chain.START_WINDOW, 0
    for _ in range(20000):
        if not entries:
            return len(world.runs)
        intents = chain.plan(main, entries, world.links, world.runs, window, q,
                             flaky=frozenset(world.flakes),
                             quarantined=frozenset(world.quarantined))
        assert sum(r["status"] == "running" for r in world.runs) <= q.runners
        changed = False
        for intent in intents:
            match intent:
                case chain.LinkEntry(key=key, onto=onto):
                    merges += 1
                    merged = f"x{merges}"
                    ok = key not in world.conflicting  # it conflicts with main itself
                    world.contents[merged] = world.contents[onto] | {key}
                    world.links[key] = {"base": onto, "entry_commit": f"c{key}",
                                        "merge_commit": merged if ok else "", "ok": ok,
                                        "gate": "" if ok else "conflicts",
                                        "reason": "" if ok else "conflicts with main"}
                case chain.TestPoint(commit=commit):
                    world.test(commit)
                case chain.TestAlone(key=key, onto=onto):
                    merges += 1
                    merged = f"x{merges}"
                    world.contents[merged] = world.contents[onto] | {key}
                    world.test(merged, alone=key)
                case chain.LandChain(commit=commit, keys=landed, window=window):
                    assert not world.failing(commit), "main moved to a red tree"
                    main = commit
                    world.mains.append(commit)
                    world.landed += landed
                    entries = [e for e in entries if e["key"] not in landed]
                case chain.Evict(key=key, gate=gate, run_id=run_id):
                    world.rejected[key] = gate
                    world.why[key] = ([r for r in world.runs if r["id"] == run_id],
                                      [e for e in entries if e["key"] == key],
                                      sorted(world.flakes))
                    entries = [e for e in entries if e["key"] != key]
                case chain.Suspect(keys=suspects, run_ids=ids, failing=failing,
                                   single=single):
                    settle(world, ids)
                    for e in entries:
                        if e["key"] in suspects:
                            e.update(suspect=1, failed_tests=list(failing),
                                     suspect_single=int(single))
                case chain.Requeue(keys=back, cap=cap, run_ids=ids, failing=failing,
                                   window=window, flaky=flaky):
                    settle(world, ids)
                    if flaky:
                        world.flakes |= set(failing)
                    moved = [e for e in entries if e["key"] in back]
                    for e in moved:
                        e.update(cap=cap, suspect=0, suspect_single=0,
                                 failed_tests=list(failing) or e["failed_tests"])
                    entries = [e for e in entries if e["key"] not in back] + moved
                case chain.FlakeSeen(run_id=run_id, failing=failing):
                    settle(world, (run_id,))
                    world.flakes |= set(failing)
                case chain.Quarantine(tests=tests):
                    # Main's flaky test failed twice alike, by name: set aside, not paused.
                    assert world.flaky_rate, "main passes its own tests here"
                    world.quarantined |= set(tests)
                    changed = True
                    break
                case chain.Release(tests=tests):
                    world.quarantined -= set(tests)
                case chain.Pause(run_ids=ids):
                    # Main's flaky test failed twice alike: the engine waits, then tests main
                    # again (the pause settles those runs), as here.
                    assert world.flaky_rate, "main passes its own tests here"
                    settle(world, ids)
            if isinstance(intent, (chain.LandChain, chain.Evict, chain.Requeue,
                                   chain.Suspect, chain.LinkEntry)):
                changed = True
                break  # the state changed: decide again, as the engine does
        if not changed or world.rng.random() < 0.3:
            assert world.finish_one() or intents, ("stuck", main, entries)
    raise AssertionError("the queue never emptied")


def settle(world: World, ids: tuple[str, ...]) -> None:
    for run in world.runs:
        if run["id"] in ids:
            run["handled"] = 1


@st.composite
def queues(draw: st.DrawFn) -> tuple[World, list[str]]:
    n = draw(st.integers(1, 24))
    keys = [f"e{i}" for i in range(n)]
    kinds = draw(st.lists(st.sampled_from(["good", "good", "good", "break", "conflict"]),
                          min_size=n, max_size=n))
    good = [k for k, kind in zip(keys, kinds, strict=True) if kind == "good"]
    pairs = draw(st.integers(0, len(good) // 2))
    pair_keys = draw(st.permutations(good))[:2 * pairs]
    world = World(
        breakers={k for k, kind in zip(keys, kinds, strict=True) if kind == "break"},
        pairs=[(pair_keys[2 * i], pair_keys[2 * i + 1]) for i in range(pairs)],
        conflicting={k for k, kind in zip(keys, kinds, strict=True) if kind == "conflict"},
        flaky_rate=draw(st.sampled_from([0.0, 0.05, 0.2])),
        rng=random.Random(draw(st.integers(0, 2**32))))
    return world, keys


@given(queues(), st.sampled_from(MODES))
@settings(max_examples=300, deadline=None, derandomize=True)
def test_every_mode_keeps_main_green_and_lands_every_good_entry(
        case: tuple[World, list[str]], mode: str) -> None:
    world, keys = case
    drive(mode, world, keys)
    order = {k: i for i, k in enumerate(world.landed)}
    for key in keys:
        if key in world.breakers:
            assert world.rejected.get(key) == "tests", (key, world.rejected)
        elif key in world.conflicting:
            assert world.rejected.get(key) == "conflicts", (key, world.rejected)
        else:
            partner = next((b if key == a else a for a, b in world.pairs if key in (a, b)),
                           None)
            if partner is not None and partner in order:
                # The pair fails together: whichever came second is rejected, not both.
                assert key in order or world.rejected.get(key) == "tests"
            else:
                assert key in order, (key, world.why.get(key), "a good entry was evicted")
    for a, b in world.pairs:
        assert not (a in order and b in order), "both halves of a pair landed"


def test_a_batch_lands_in_one_run_and_a_hinted_culprit_is_tested_alone() -> None:
    world = World(breakers={"e3"}, pairs=[], conflicting=set(), flaky_rate=0.0,
                  rng=random.Random(0))
    runs = drive("batch", world, [f"e{i}" for i in range(8)], runners=1)
    assert world.rejected == {"e3": "tests"}
    assert sorted(world.landed) == [f"e{i}" for i in range(8) if i != 3]
    # Pre-flight, the batch of 8 (fails), e3 alone (fails again), the other 7 (pass).
    assert runs == 4, world.runs


def test_a_flaky_failure_is_tested_again_and_evicts_nothing() -> None:
    world = World(breakers=set(), pairs=[], conflicting=set(), flaky_rate=0.0,
                  rng=random.Random(0))
    real_test = world.test
    hit = iter([True])

    def flaky_once(commit: str, **extra: Any) -> None:
        real_test(commit, **extra)
        if commit != "m0" and next(hit, False):
            world.runs[-1]["outcome"] = ["tests/test_flaky.py::test_sometimes"]

    world.test = flaky_once  # type: ignore[method-assign]
    drive("speculative-batch", world, [f"e{i}" for i in range(6)])
    assert world.rejected == {}
    assert sorted(world.landed) == [f"e{i}" for i in range(6)]
    assert "tests/test_flaky.py::test_sometimes" in world.flakes


def test_test_names_point_at_files() -> None:
    assert chain.named_by(["tests/test_stats.py::test_mean"], ["textkit/stats.py"])
    assert chain.named_by(["tests.test_stats.StatsTest.test_mean"], ["textkit/stats.py"])
    assert chain.named_by(["tests/test_pair_1.py::test_x"], ["pairs/pair_1_a.py"])
    assert chain.named_by(["tests/test_app.py::test_x"], ["tests/test_app.py"])
    assert not chain.named_by(["tests/test_stats.py::test_mean"], ["textkit/slug.py"])
    assert not chain.named_by(["tests/test_flaky.py::test_x"], ["pkg/mod_1.py"])


def run(id_: str, commit: str, status: str, failing: tuple[str, ...] = (),
        reason: str = "tests failed (exit code 1)") -> dict[str, Any]:
    return {"id": id_, "commit_sha": commit, "status": status, "failing": list(failing),
            "reason": reason if status == "failed" else "", "output": "", "handled": 0,
            "alone": ""}


def test_a_test_failing_on_main_is_quarantined_and_released_once_a_landing_passes_it() -> None:
    q = QueueSettings(mode="serial", runners=1)
    broken = ("tests/test_clock.py::test_tz",)
    entry = {"key": "s/a", "commit_sha": "ca", "files": ["src/a.py"], "cap": None,
             "suspect": 0, "failed_tests": [], "suspect_single": 0}
    twice = [run("r1", "m0", "failed", broken), run("r2", "m0", "failed", broken)]
    intents = chain.plan("m0", [entry], {}, twice, 1, q)
    assert intents == [chain.Quarantine("m0", broken, "tests failed (exit code 1)",
                                        ("r1", "r2"))]
    # Quarantined, main's failures count against nobody: the entry is linked and tested.
    quarantined = frozenset(broken)
    intents = chain.plan("m0", [entry], {}, twice, 1, q, quarantined=quarantined)
    assert [type(i) for i in intents] == [chain.LinkEntry]
    link = {"s/a": {"base": "m0", "entry_commit": "ca", "merge_commit": "x1", "ok": True,
                    "gate": "", "reason": ""}}
    # Its point failing only the quarantined test passed: it lands, the quarantine stays.
    excused = [*twice, run("r3", "x1", "failed", broken)]
    intents = chain.plan("m0", [entry], link, excused, 1, q, quarantined=quarantined)
    assert [type(i) for i in intents] == [chain.LandChain]
    # A point that passes every test, the quarantined one too: released as it lands.
    clean = [*twice, run("r3", "x1", "passed")]
    intents = chain.plan("m0", [entry], link, clean, 1, q, quarantined=quarantined)
    assert [type(i) for i in intents] == [chain.LandChain, chain.Release]
    # Another failure on top of the quarantined one still counts.
    worse = [*twice, run("r3", "x1", "failed", (*broken, "tests/test_a.py::test_a"))]
    intents = chain.plan("m0", [entry], link, worse, 1, q, quarantined=quarantined)
    assert not any(isinstance(i, chain.LandChain) for i in intents)


def test_a_test_command_that_cannot_run_pauses_the_queue() -> None:
    q = QueueSettings(mode="serial", runners=1)
    cannot = "tests failed (exit code 127) (the test command could not run: sh: python: not found)"
    twice = [run("r1", "m0", "failed", (), cannot), run("r2", "m0", "failed", (), cannot)]
    entry = {"key": "s/a", "commit_sha": "ca", "files": ["src/a.py"], "cap": None,
             "suspect": 0, "failed_tests": [], "suspect_single": 0}
    assert chain.plan("m0", [entry], {}, twice, 1, q) == [chain.Pause("m0", cannot,
                                                                      ("r1", "r2"))]
