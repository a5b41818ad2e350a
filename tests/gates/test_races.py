"""The race gate on real git repositories, with real sandboxes (bubblewrap) running the tests.

Each test commits a base and a change in a repository made in tmp_path, builds the GateInput
the queue would (base.py's changes_between) and runs RacesGate with a fixed seed, so which
runs fail is the same every time. The race under test is a real one (two threads, a lost
update); whether it loses depends on FACTORY_TEST_SEED, which makes it a race the gate's
seeds find, not a coin the test suite flips.
"""

from __future__ import annotations

import random
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agents import events as ev
from agents.config import FactoryConfig
from agents.gates.base import Change, GateInput, Verdict, changes_between
from agents.gates.races import RacesGate, plan_seeds, stateful_imports, touched
from agents.gates.registry import GateServices
from agents.sandbox.base import Limits
from agents.sandbox.select import make_backend
from agents.store import Store
from tests.conftest import git, make_repo

LIMITS = Limits(wall_seconds=60, memory_mb=512, max_processes=128, output_bytes=200_000)
# The engine's own Python (mounted read-only in the sandbox), without the plugins the engine's
# environment would load into every run (textual's snapshots): a second per run saved.
PYTEST = f"PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {sys.executable} -m pytest -q -p no:cacheprovider"

COUNTER = '''import threading
import time


class Counter:
    """Counts, badly: read, pause, write, without the lock it should take."""

    def __init__(self):
        self.value = 0

    def add(self, pause):
        seen = self.value
        if pause:  # the window another thread's update is lost in
            time.sleep(pause)
        self.value = seen + 1


def race(pause_a, pause_b):
    counter = Counter()
    threads = [threading.Thread(target=counter.add, args=(p,)) for p in (pause_a, pause_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counter.value
'''
# Loses an update (the first thread's read is stale when it writes) for even seeds only.
RACE_TEST = '''import os
from pkg.counter import race


def test_counts_both():
    seed = int(os.environ.get("FACTORY_TEST_SEED", "1"))
    pause = 0.05 if seed % 2 == 0 else 0.0
    assert race(pause, 0.0) == 2


def test_plain():
    assert 1 + 1 == 2
'''
BASE = {
    "pkg/__init__.py": "",
    "pkg/util.py": "def double(x):\n    return 2 * x\n",
    "tests/__init__.py": "",
    "tests/test_util.py": "from pkg.util import double\n\n\ndef test_double():\n"
                          "    assert double(2) == 4\n",
}
EVENTS: list[ev.Event] = []


def config(**races: Any) -> FactoryConfig:
    return FactoryConfig.model_validate({"gates": {"races": races}})


def services(root: Path, command: str = PYTEST, store: Store | None = None,
             **races: Any) -> GateServices:
    async def emit(event: ev.Event) -> object:
        EVENTS.append(event)
        return await store.append(event) if store is not None else None

    return GateServices(config=config(**races), backend=make_backend(
        "bwrap", limits=LIMITS, root=root), limits=LIMITS, test_command=command, emit=emit,
        store=store)


def commit(root: Path, change: dict[str, str]) -> GateInput:
    for rel, text in change.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "change")
    before, after = git(root, "rev-parse", "HEAD~1", "HEAD").split()
    return GateInput(repo=root, tree=root, base=before, merged=after, main=before,
                     entry_commit=after, spec_id="s", task_id="t")


async def given_for(tmp_path: Path, change: dict[str, str],
                    base: dict[str, str] | None = None) -> GateInput:
    root = make_repo(tmp_path / "repo", {**BASE, **(base or {})})
    given = commit(root, change)
    given.changes = await changes_between(root, given.base, given.merged)
    return given


@pytest.fixture(autouse=True)
def _events() -> None:
    EVENTS.clear()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "factory.db")
    try:
        yield opened
    finally:
        await opened.close()


def failing_seed_index(seed: int, runs: int) -> int | None:
    """Which run of a gate seeded so first gets an even (losing) seed."""
    for index, (run_seed, _, _) in enumerate(plan_seeds(random.Random(seed), runs)):
        if run_seed % 2 == 0:
            return index
    return None


async def test_a_thread_race_is_denied_failed_k_of_r(tmp_path: Path) -> None:
    given = await given_for(tmp_path, {"pkg/counter.py": COUNTER,
                                       "tests/test_counter.py": RACE_TEST})
    seed = next(s for s in range(100) if failing_seed_index(s, 5) == 2)  # third run loses
    gate = RacesGate(services(given.repo, runs=5), seed=seed)
    verdict = await gate.check(given)
    assert verdict.verdict == Verdict.DENY, verdict.summary
    assert verdict.summary.startswith("failed 1 of 3 runs (stopped at the first failure; "
                                      "5 planned)"), verdict.summary
    assert "tests/test_counter.py::test_counts_both" in verdict.summary
    assert "pkg/counter.py imports threading" in verdict.summary
    named = [f for f in verdict.findings if f.rule == "races.test"]
    assert [f.file for f in named] == ["tests/test_counter.py"]
    assert "failed in 1 of 3 runs" in named[0].message
    assert [r.ok for r in gate.last_runs] == [True, True, False]
    # The run that failed is the one whose seed the race loses with, and it says so.
    assert str(gate.last_runs[2].seed) in verdict.summary


async def test_the_same_race_passes_when_no_seed_loses(tmp_path: Path) -> None:
    given = await given_for(tmp_path, {"pkg/counter.py": COUNTER,
                                       "tests/test_counter.py": RACE_TEST})
    seed = next(s for s in range(100) if failing_seed_index(s, 3) is None)
    gate = RacesGate(services(given.repo, runs=3), seed=seed)
    verdict = await gate.check(given)
    assert verdict.verdict == Verdict.PASS, verdict.summary
    assert "passed 3 of 3 runs" in verdict.summary and "shuffled order" in verdict.summary
    seeds = [r.seed for r in gate.last_runs]
    assert len(set(seeds)) == 3


async def test_a_stateless_change_passes_without_runs(tmp_path: Path) -> None:
    given = await given_for(tmp_path, {"pkg/util.py": "def double(x):\n    return x + x\n",
                                       "README.md": "uses threading, in prose only\n"})
    gate = RacesGate(services(given.repo), seed=1)
    verdict = await gate.check(given)
    assert verdict.verdict == Verdict.PASS
    assert verdict.summary.startswith("no stateful code touched")
    assert gate.last_runs == [] and EVENTS == []
    assert not (given.repo / ".factory" / "landing").exists() or \
        not any((given.repo / ".factory" / "landing").iterdir())


async def test_globs_make_a_path_stateful(tmp_path: Path) -> None:
    given = await given_for(tmp_path, {"db/schema.sql": "create table t (x int);\n"})
    gate = RacesGate(services(given.repo, runs=2, globs=["db/*.sql"]), seed=1)
    verdict = await gate.check(given)
    assert verdict.verdict == Verdict.PASS, verdict.summary
    assert "db/schema.sql matches [gates.races] globs" in verdict.summary
    assert "passed 2 of 2 runs" in verdict.summary
    unmatched = RacesGate(services(given.repo, runs=2, globs=["migrations/**"]), seed=1)
    assert (await unmatched.check(given)).summary.startswith("no stateful code touched")


async def test_always_runs_every_entry(tmp_path: Path) -> None:
    given = await given_for(tmp_path, {"pkg/util.py": "def double(x):\n    return x + x\n"})
    gate = RacesGate(services(given.repo, runs=2, always=True), seed=1)
    verdict = await gate.check(given)
    assert verdict.verdict == Verdict.PASS, verdict.summary
    assert "[gates.races] always = true" in verdict.summary
    assert len(gate.last_runs) == 2
    # The scratch copies are gone afterwards.
    assert not any((given.repo / ".factory" / "landing").iterdir())


async def test_shuffled_order_differs_between_runs(tmp_path: Path) -> None:
    many = {f"tests/test_m{i}.py": "".join(f"def test_{j}():\n    pass\n\n\n"
                                           for j in range(4)) for i in range(5)}
    given = await given_for(tmp_path, {"pkg/net.py": "import socket\n"}, base=many)
    gate = RacesGate(services(given.repo, runs=4), seed=7)
    verdict = await gate.check(given)
    assert verdict.verdict == Verdict.PASS, verdict.summary
    orders = [r.order for r in gate.last_runs]
    assert all(sorted(o) == sorted(orders[0]) and len(o) == 21 for o in orders)
    assert orders[0] != orders[2]  # two shuffles
    assert orders[1] == orders[0][::-1] and orders[3] == orders[2][::-1]  # each reversed
    # Modules stay together (module-scoped fixtures are built once per run).
    modules = [name.split("::")[0] for name in orders[0]]
    assert len([m for i, m in enumerate(modules) if i == 0 or modules[i - 1] != m]) == 6


async def test_history_is_recorded_and_shown(tmp_path: Path, store: Store) -> None:
    given = await given_for(tmp_path, {"pkg/counter.py": COUNTER,
                                       "tests/test_counter.py": RACE_TEST})
    seed = next(s for s in range(100) if failing_seed_index(s, 5) == 1)
    gate = RacesGate(services(given.repo, store=store, runs=5), seed=seed)
    first = await gate.check(given)
    assert first.verdict == Verdict.DENY
    race = "tests/test_counter.py::test_counts_both"
    row = store.get("test_history", race)
    assert row is not None and (row["runs"], row["failures"]) == (2, 1)
    assert row["last_failed"] == given.merged
    plain = store.get("test_history", "tests/test_counter.py::test_plain")
    assert plain is not None and (plain["runs"], plain["failures"]) == (2, 0)
    assert store.get("test_history", "tests/test_util.py::test_double")["runs"] == 2  # type: ignore[index]
    recorded = [e for e in EVENTS if isinstance(e, ev.TestHistoryRecorded)]
    assert len(recorded) == 1 and recorded[0].failed == {race: 1}
    # Again: the history adds up, and the finding shows it.
    again = RacesGate(services(given.repo, store=store, runs=5), seed=seed)
    second = await again.check(given)
    shown = next(f for f in second.findings if f.rule == "races.test")
    assert "so far it failed 2 of 4 runs" in shown.message, shown.message


async def test_a_command_that_cannot_run_denies_at_once(tmp_path: Path) -> None:
    given = await given_for(tmp_path, {"pkg/jobs.py": "import multiprocessing\n"})
    gate = RacesGate(services(given.repo, command="no-such-test-runner --all", runs=5),
                     seed=1)
    verdict = await gate.check(given)
    assert verdict.verdict == Verdict.DENY
    assert "the test command could not run (exit code 127)" in verdict.summary
    assert verdict.findings[0].rule == "races.cannot_run"
    assert len(gate.last_runs) == 1 and EVENTS == []


async def test_another_command_gets_the_seeds_only(tmp_path: Path) -> None:
    check = ("import os, sys\n"
             "seed = os.environ['FACTORY_TEST_SEED']\n"
             "assert os.environ['PYTHONHASHSEED'] == seed\n"
             "print('FAIL: test_seed (check.Seeds.test_seed)') if int(seed) % 3 == 0 "
             "else None\n"
             "sys.exit(1 if int(seed) % 3 == 0 else 0)\n")
    given = await given_for(tmp_path, {"check.py": check, "pkg/db.py": "import sqlite3\n"})
    seed = next(s for s in range(200)
                if [r[0] % 3 == 0 for r in plan_seeds(random.Random(s), 4)] ==
                [False, False, False, True])
    gate = RacesGate(services(given.repo, command=f"{sys.executable} check.py", runs=4),
                     seed=seed)
    verdict = await gate.check(given)
    assert verdict.verdict == Verdict.DENY, verdict.summary
    assert re.match(r"failed 1 of 4 runs, each in a fresh sandbox with its own seed "
                    r"\(order not shuffled: not pytest\)", verdict.summary), verdict.summary
    assert "check.Seeds.test_seed" in verdict.summary  # named from the output, as landing does
    assert all(r.order == [] for r in gate.last_runs)


def test_detection_reads_imports_not_words(tmp_path: Path) -> None:
    assert stateful_imports("from concurrent.futures import ThreadPoolExecutor\n") == \
        [(1, "concurrent.futures")]
    assert stateful_imports("import os\nimport sqlalchemy.orm as orm\n") == \
        [(2, "sqlalchemy.orm")]
    assert stateful_imports("from . import threading\n# import socket\ns = 'import redis'\n") \
        == []
    assert stateful_imports("def broken(:\n    pass\nimport asyncio\n") == [(3, "asyncio")]
    root = tmp_path / "tree"
    (root / "pkg").mkdir(parents=True)
    (root / "outside.py").write_text("import threading\n")
    (root / "pkg" / "link.py").symlink_to(root / "outside.py")
    (root / "pkg" / "loop.py").write_text('"""Doc."""\nimport trio\n')
    found = touched(root, [Change("pkg/link.py", "A"), Change("pkg/loop.py", "M"),
                           Change("pkg/gone.py", "D")], [], False)
    assert [(t.path, t.why, t.line) for t in found] == [("pkg/loop.py", "imports trio", 2)]
