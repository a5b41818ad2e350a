"""Races and flakes in stateful code: the tests run several times before such a change lands.

A race passes the queue's one test run more often than not, then fails on main a day later
and is blamed on whoever lands next. Code that uses threads, asyncio, multiprocessing,
sockets or databases is where races live, so an entry touching it (judged from the imports of
the changed files' merged versions, or from [gates.races] globs, or every entry with
`always`) has its test command run `runs` times, each time:

- in a fresh sandbox over a fresh copy of the merged tree (git's own `checkout-index` of the
  merged commit into a scratch folder: no worktree record, so no turn to take with the
  queue's worktree adds, and no `.git` at all, so nothing in the run can write the
  repository), with the same backend, limits and quota as the landing's test run;
- with its own seed: FACTORY_TEST_SEED and PYTHONHASHSEED (set order and hashing vary), so a
  suite that seeds its randomness from FACTORY_TEST_SEED explores a new case each run;
- in a shuffled order when the command runs pytest: a tiny plugin the engine writes into the
  copy (loaded through PYTEST_PLUGINS, since pytest-randomly is not a dependency of the
  projects we test) shuffles the modules, then the tests within each, from
  FACTORY_TEST_SHUFFLE, and reseeds `random`. Every second run replays the previous run's
  order reversed: a test that pollutes another is caught within two runs whichever of the
  pair comes first, where two independent shuffles catch it only half the time. Any other
  command gets the seeds only.

Any failure denies with "failed k of n runs". The gate stops at the first failing run: the
verdict cannot change after it, the link step (one entry at a time) is not held up by runs
that decide nothing, and the summary says how many runs were done and how many were planned,
so k of n is always the runs actually made. A command that cannot run (exit 126 or 127)
denies at once: repeating it proves nothing.

Per-test history: the tests each run ran (from the plugin, for pytest) and the ones that
failed (from the plugin, else from the output as landing reads it) are recorded in one
`test_history_recorded` event, which the store projects into `test_history` (runs and
failures per test name); the findings name each failing test with its history so far.
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import shutil
import stat
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents import events as ev
from agents.beneath import Beneath, PathDenied
from agents.deps import imports_of
from agents.gates.base import Change, Finding, GateInput, GateVerdict, Verdict
from agents.gitcmd import GitError, git, shown
from agents.landing import failing_tests
from agents.sandbox.base import SandboxContext
from agents.sandbox.quota import DiskMeter
from agents.specs import path_in_boundaries

# Top-level modules whose use makes code stateful in the way races need: threads, event
# loops, processes, sockets, databases and the libraries that wrap them.
STATEFUL = frozenset({
    "threading", "_thread", "asyncio", "multiprocessing", "concurrent", "socket",
    "socketserver", "selectors", "sqlite3", "dbm", "shelve",
    "psycopg", "psycopg2", "asyncpg", "aiopg", "pymysql", "MySQLdb", "aiomysql", "mysql",
    "sqlalchemy", "aiosqlite", "peewee", "pony", "tortoise", "databases", "redis", "aioredis",
    "pymongo", "motor", "elasticsearch", "cassandra", "kafka", "aiokafka", "pika", "aio_pika",
    "trio", "anyio", "curio", "gevent", "eventlet", "twisted", "tornado", "aiohttp",
    "uvloop", "zmq", "grpc", "websockets", "httpx", "celery", "kombu",
})
# A changed .py file larger than this is not parsed: it counts as stateful (never a blind
# pass for a file too large to read).
MAX_SOURCE = 2_000_000
# Names recorded per event: a suite of more tests records only its failing ones.
MAX_NAMES = 5000
OUTPUT_TAIL = 8000
PLUGIN = "factory_races_plugin"
# For files that do not parse (a syntax error the tests will report anyway).
_IMPORT_LINE = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][\w]*)", re.M)

PLUGIN_SOURCE = '''"""Written by Factory's race gate into a copy of a tree: shuffles its tests."""
import os
import random

_SEED = int(os.environ.get("FACTORY_TEST_SHUFFLE", "0"))
_REVERSE = os.environ.get("FACTORY_TEST_REVERSE") == "1"
_DIR = os.environ.get("FACTORY_TEST_REPORT", "")


def _write(name, lines):
    if _DIR:
        with open(os.path.join(_DIR, name), "a", encoding="utf-8") as f:
            f.write("".join(line + "\\n" for line in lines))


def pytest_configure(config):
    random.seed(_SEED)


def pytest_collection_modifyitems(session, config, items):
    rng = random.Random(_SEED)
    groups = {}
    for item in items:
        groups.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    keys = list(groups)
    rng.shuffle(keys)
    order = []
    for key in keys:
        group = groups[key]
        rng.shuffle(group)
        order.extend(group)
    if _REVERSE:
        order.reverse()
    items[:] = order
    _write("order", [item.nodeid for item in order])


def pytest_runtest_logreport(report):
    if report.failed:
        _write("failed", [report.nodeid])
'''


@dataclass(frozen=True)
class Touched:
    """Why an entry counts as stateful: a changed file's import, a glob, or `always`."""

    path: str
    why: str
    line: int = 0


@dataclass
class RaceRun:
    """One of the gate's runs, kept on the gate (`last_runs`) for tests and the bench."""

    index: int
    seed: int
    order_seed: int
    reverse: bool
    ok: bool = False
    why: str = ""
    could_not_run: str = ""
    failing: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # empty: the order was not shuffled
    output: str = ""
    duration: float = 0.0


def stateful_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of each import of a stateful module, in source order."""
    uses = imports_of(source)
    if uses is None:
        found = []
        for m in _IMPORT_LINE.finditer(source):
            if m.group(1) in STATEFUL:
                found.append((source.count("\n", 0, m.start()) + 1, m.group(1)))
        return found
    return [(u.line, u.module) for u in uses if u.module and u.top in STATEFUL]


def touched(tree: Path, changes: Sequence[Change], globs: Sequence[str],
            always: bool) -> list[Touched]:
    """What makes the change stateful, read beneath a handle on the merged tree (the agent's
    files: a link, FIFO or device is never followed or read). Deleted files have no merged
    version and count only through a glob."""
    found: list[Touched] = []
    if always:
        found.append(Touched("", "[gates.races] always = true"))
    with Beneath(tree) as handle:
        for change in changes:
            if globs and path_in_boundaries(change.path, list(globs)):
                found.append(Touched(change.path, "matches [gates.races] globs"))
                continue
            if not change.path.endswith(".py") or change.status == "D":
                continue
            try:
                st = handle.lstat(change.path)
                if st is None or not stat.S_ISREG(st.st_mode):
                    continue
                if st.st_size > MAX_SOURCE:
                    found.append(Touched(change.path, "too large to read for its imports"))
                    continue
                text = handle.read(change.path, MAX_SOURCE).decode("utf-8", "replace")
            except (PathDenied, OSError):
                continue
            for line, module in stateful_imports(text)[:1]:
                found.append(Touched(change.path, f"imports {module}", line))
    return found


def plan_seeds(rng: random.Random, runs: int) -> list[tuple[int, int, bool]]:
    """(seed, order seed, reversed) per run: distinct seeds; odd runs replay the previous
    run's order reversed (see the module's docstring)."""
    seeds: list[int] = []
    while len(seeds) < runs:
        seed = rng.getrandbits(32)
        if seed not in seeds:
            seeds.append(seed)
    return [(seed, seeds[i - i % 2], i % 2 == 1) for i, seed in enumerate(seeds)]


class RacesGate:
    """Runs an entry's tests several times when it touches stateful code (the module's
    docstring says how and why)."""

    name = "races"
    cost = 50  # the most expensive gate but the reviewers': R runs of the test suite

    def __init__(self, services: Any, *, seed: int | None = None) -> None:
        self.services = services
        races = services.config.gates.races
        self.runs: int = races.runs
        self.globs: list[str] = list(races.globs)
        self.always: bool = races.always
        # A fixed seed makes the runs' seeds reproducible (tests, the bench); by default
        # they come from the system's randomness, so nobody can aim a change at them.
        self.rng: random.Random = random.Random(seed) if seed is not None \
            else secrets.SystemRandom()
        self.last_runs: list[RaceRun] = []

    async def check(self, given: GateInput) -> GateVerdict:
        self.last_runs = []
        reasons = await asyncio.to_thread(touched, given.tree, given.changes, self.globs,
                                          self.always)
        if not reasons:
            return GateVerdict(self.name, Verdict.PASS,
                               "no stateful code touched (no changed file imports threads, "
                               "asyncio, multiprocessing, sockets or databases; no path "
                               "matches [gates.races] globs): no repeated runs")
        why = ", ".join(f"{shown(t.path)} {t.why}" if t.path else t.why for t in reasons[:3])
        why += f" and {len(reasons) - 3} more" if len(reasons) > 3 else ""
        noted = [Finding("races.stateful", t.why, Verdict.PASS, shown(t.path), t.line)
                 for t in reasons[:20]]
        scratch = given.repo / ".factory" / "landing" / f"races-{uuid.uuid4().hex[:10]}"
        try:
            runs = await self._runs(given, scratch)
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)
        self.last_runs = runs
        return await self._verdict(given, runs, why, noted)

    async def _runs(self, given: GateInput, scratch: Path) -> list[RaceRun]:
        runs: list[RaceRun] = []
        plugin = True
        for index, (seed, order_seed, reverse) in enumerate(plan_seeds(self.rng, self.runs)):
            run = RaceRun(index, seed, order_seed, reverse)
            await self._run(given, scratch / f"run-{index + 1}", run, plugin)
            if not run.ok and not run.order and PLUGIN in run.output:
                # The command's own PYTHONPATH or PYTEST_PLUGINS hid the plugin, and pytest
                # refused to start without it: seeds only from here on.
                plugin = False
                run = RaceRun(index, seed, order_seed, reverse)
                await self._run(given, scratch / f"run-{index + 1}-plain", run, plugin)
            runs.append(run)
            if not run.ok:
                break
        return runs

    async def _copy(self, given: GateInput, where: Path) -> Path:
        """A fresh copy of the merged commit's files, made by git from its object store."""
        where.mkdir(parents=True)
        tree = where / "tree"
        env = {"GIT_INDEX_FILE": str(where / "index")}
        await git("read-tree", given.merged, cwd=given.tree, env=env)
        await git("checkout-index", "-a", "-f", f"--prefix={tree}/", cwd=given.tree, env=env)
        tree.mkdir(exist_ok=True)  # an empty tree writes nothing
        return tree

    async def _run(self, given: GateInput, where: Path, run: RaceRun, plugin: bool) -> None:
        services = self.services
        try:
            tree = await self._copy(given, where)
        except GitError as exc:
            run.why = f"the merged tree could not be copied: {exc}"[:500]
            run.could_not_run = run.why
            return
        report = tree / f".factory-races-{uuid.uuid4().hex[:8]}"
        report.mkdir()
        (report / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
        env = {"FACTORY_TEST_SEED": str(run.seed), "PYTHONHASHSEED": str(run.seed),
               "FACTORY_TEST_RUN": f"races-{run.index + 1}-of-{self.runs}",
               "FACTORY_TEST_ATTEMPT": str(run.index + 1),
               "FACTORY_TEST_SHUFFLE": str(run.order_seed),
               "FACTORY_TEST_REVERSE": "1" if run.reverse else "0"}
        if plugin:
            env.update(PYTEST_PLUGINS=PLUGIN, PYTHONPATH=str(report),
                       FACTORY_TEST_REPORT=str(report))
        meter = DiskMeter(tree, services.quota) if services.quota is not None else None
        sandbox = await services.backend.open(SandboxContext(
            worktree=tree, agent_id=f"races-{uuid.uuid4().hex[:8]}", meter=meter))
        try:
            result = await sandbox.run(["sh", "-c", services.test_command], cwd=tree, env=env,
                                       limits=services.limits)
        finally:
            await sandbox.close()
        run.duration = result.duration
        run.output = (result.stdout + result.stderr)[-OUTPUT_TAIL:]
        run.order = _lines(tree, report.name, "order")
        run.ok = result.ok
        if run.ok:
            return  # what failed in a run the command calls a pass is not held against it
        named = _lines(tree, report.name, "failed")
        run.failing = list(dict.fromkeys(named)) or failing_tests(run.output)
        if result.stop == "exit" and result.exit_code in (126, 127):
            first = next((line.strip()[:200] for line in run.output.splitlines()
                          if line.strip()), "no output")
            run.could_not_run = f"the test command could not run (exit code " \
                                f"{result.exit_code}): {first}"
        run.why = f"exit code {result.exit_code}" if result.stop == "exit" else result.detail

    async def _verdict(self, given: GateInput, runs: list[RaceRun], why: str,
                       noted: list[Finding]) -> GateVerdict:
        done = len(runs)
        shuffled = any(r.order for r in runs)
        how = "each in a fresh sandbox with its own seed" + \
            (", in shuffled order" if shuffled else " (order not shuffled: not pytest)")
        broken = next((r for r in runs if r.could_not_run), None)
        if broken is not None:
            return GateVerdict(self.name, Verdict.DENY, broken.could_not_run, [
                Finding("races.cannot_run", broken.could_not_run), *noted])
        history = await self._record(given, runs)
        failed = [r for r in runs if not r.ok]
        if not failed:
            return GateVerdict(self.name, Verdict.PASS,
                               f"stateful code touched ({why}): the tests passed {done} of "
                               f"{done} runs, {how}", noted)
        stopped = f" (stopped at the first failure; {self.runs} planned)" \
            if done < self.runs else ""
        names = [n for r in failed for n in r.failing]
        first = failed[0]
        unique = list(dict.fromkeys(names))
        more = f" and {len(unique) - 3} more" if len(unique) > 3 else ""
        summary = (f"failed {len(failed)} of {done} runs{stopped}, {how}: "
                   + (", ".join(unique[:3]) + more if unique else first.why)
                   + f" (seed {first.seed}; {why})")
        findings = [Finding("races.failed", summary)]
        for name in dict.fromkeys(names):
            count = sum(name in r.failing for r in runs)
            seeds = ", ".join(str(r.seed) for r in runs if name in r.failing)
            total = history.get(name)
            so_far = f"; so far it failed {total[1]} of {total[0]} runs" if total else ""
            findings.append(Finding("races.test", f"{name} failed in {count} of {done} runs "
                                    f"(seed {seeds}){so_far}", Verdict.DENY,
                                    name.split("::", 1)[0] if "::" in name else ""))
        return GateVerdict(self.name, Verdict.DENY, summary, [*findings, *noted])

    async def _record(self, given: GateInput, runs: list[RaceRun]) -> dict[str, tuple[int, int]]:
        """The runs' per-test counts as one event; (runs, failures) per failing test as the
        store has them afterwards (this event's counts alone without a store)."""
        ran: dict[str, int] = {}
        failed: dict[str, int] = {}
        for run in runs:
            for name in dict.fromkeys([*run.order, *run.failing]):
                ran[name] = ran.get(name, 0) + 1
            for name in dict.fromkeys(run.failing):
                failed[name] = failed.get(name, 0) + 1
        for name in failed:  # a failing test without a recorded order ran in every run
            ran[name] = max(ran[name], len(runs))
        if len(ran) > MAX_NAMES:
            ran = {name: ran[name] for name in failed}
        if not ran:
            return {}
        await self.services.emit(ev.TestHistoryRecorded(
            spec_id=given.spec_id, task_id=given.task_id, gate=self.name,
            commit=given.merged, ran=ran, failed=failed))
        store = getattr(self.services, "store", None)
        out: dict[str, tuple[int, int]] = {}
        for name in failed:
            row = store.get("test_history", name) if store is not None else None
            out[name] = (int(row["runs"] or 0), int(row["failures"] or 0)) if row \
                else (ran[name], failed[name])
        return out


def _lines(tree: Path, folder: str, name: str) -> list[str]:
    """A file the plugin wrote, read beneath the copy (the run could have swapped it)."""
    try:
        with Beneath(tree) as handle:
            text = handle.read(f"{folder}/{name}", 4_000_000).decode("utf-8", "replace")
    except (PathDenied, OSError):
        return []
    return [line for line in text.splitlines() if line.strip()]

