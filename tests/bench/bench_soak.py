"""Soak benchmark (issue 16): a day of factory life compressed, to show that a long-lived
daemon neither leaks memory nor slows down as its history grows.

What runs, all real: a git repository made in a temporary folder; the daemon in its own
process (`agents.daemon.serve(..., watch=True)`, what `factory daemon --watch` runs) with its
SQLite store, watchfiles on the specs folder, worktrees, the merge queue (speculative
batches, the project's test command `true` in the sandbox) and litellm with the offline
`replay` provider at zero latency. The bench process only writes spec files and reads the
store (SQLite in WAL mode lets it read while the daemon writes).

Why the replayed turns are computed, not read from a file: a replay trajectory is keyed by
agent (`plan:<spec>`, `<spec>/<task>`) and plays from its first turn for every new agent, so
a recorded file would submit the same plan on every re-plan and a save would change nothing.
The daemon process therefore registers its `replay/soak` trajectory with turns derived from
the spec file as saved (each spec lists its tasks and their versions): the planner submits
exactly that list, and a task's agent writes its file at its version and finishes. Everything
else (litellm, the provider, the tools, the engine) is the ordinary path.

The day, by construction (counts follow from --saves/--agents/--landings):
- S specs, each with W tasks, planned and landed at start (the warm-up);
- every save edits one spec (round robin); its re-plan adds new tasks and changes the oldest
  landed ones (a changed task's agent runs again and lands again on top of main), drops the
  oldest beyond W, keeps the rest unchanged (their work kept), and adds a few tasks whose
  agent finds nothing to change and gives up (agents that run but never land, as on a real
  day; the next save of that spec drops them);
- the bench waits for each re-plan (its latency is measured), then for the factory to go
  quiet before the next save, so the first and the last saves are measured under the same
  load and differ only by the history behind them.

Printed: parameters, store size (.db + -wal), the daemon's RSS after warm-up and at the end
and the growth, re-plan latency (save -> plan_accepted seen in the store) median and p95 over
the first and the last N saves and their ratio, landings, agents, events; PASS/FAIL against
the goals (growth under 100 MB, end/start p50 ratio at most 1.2).

Usage: python tests/bench/bench_soak.py [--scale F] [--saves N] [--agents N] [--landings N]
       [--specs S] [--window W] [--sandbox auto|bwrap|none] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

MODEL = "soak"
# A spec's task lines, as the planner (and each task's agent) reads them from the file.
TASK_LINE = re.compile(r"^- (?P<id>[a-z0-9-]+) v(?P<version>\d+) (?P<kind>lands|gives-up) "
                       r"(?P<file>[a-z0-9-]+)$", re.MULTILINE)
OPEN_TASKS = ("pending", "running", "committed", "landing")
OPEN_QUEUE = ("queued", "awaiting_approval", "landing")
GOAL_GROWTH_MB = 100.0
GOAL_RATIO = 1.2


# -- the day's plan -------------------------------------------------------------------------


@dataclass
class Task:
    id: str
    slot: int  # its file, soak/<spec>/slot-<n>.txt: a new task takes a dropped task's file
    version: int = 1
    touched: int = 0  # the save that last added or changed it (the oldest changes first)


@dataclass
class SpecState:
    """What one spec file says now: its landing tasks (oldest first) and its give-up tasks."""

    id: str
    tasks: list[Task] = field(default_factory=list)
    gives: list[str] = field(default_factory=list)
    saves: int = 0
    next_task: int = 0

    def new_task(self, save: int, slot: int) -> Task:
        self.next_task += 1
        return Task(f"t{self.next_task:05d}", slot, touched=save)

    def text(self) -> str:
        lines = [f"- {t.id} v{t.version} lands slot-{t.slot}" for t in self.tasks]
        lines += [f"- {g} v1 gives-up idle-{k}" for k, g in enumerate(self.gives)]
        return SPEC.format(id=self.id, saves=self.saves, tasks="\n".join(lines))


SPEC = """\
+++
id = "{id}"
title = "Soak files of {id}"
+++

## Goal
Keep one file per task under `soak/{id}/` at the version this list gives (save {saves}).

{tasks}

## Architecture
One text file per task, named after the task.

## Boundaries
- soak/{id}/

## Edge cases
- A task that finds nothing to change gives up; the next save drops it.

## Invariants
- Files of other specs never change.

## Acceptance
- `true`
"""

CONFIG = """\
[models]
planner = "replay/{model}"
implementer = "replay/{model}"
reviewer = "replay/{model}"

[run]
concurrency = {concurrency}
max_steps = 10
task_retries = 0

[budgets.run]
tokens = 1000000000000
usd = 1000000.0

[sandbox]
backend = "{sandbox}"

[repo]
test_command = "true"

[queue]
approval = "never"
"""


@dataclass
class Day:
    """The parameters and the per-save mix that add up to the requested totals."""

    saves: int
    agents: int
    landings: int
    specs: int
    window: int

    @property
    def initial_landings(self) -> int:
        return self.specs * self.window

    @property
    def lands_per_save(self) -> float:
        return (self.landings - self.initial_landings) / self.saves

    @property
    def gives_per_save(self) -> float:
        # agents = planners (one per spec at start, one per save) + one per landing + give-ups
        return (self.agents - self.specs - self.saves - self.landings) / self.saves

    def check(self) -> None:
        if self.saves < 1:
            raise SystemExit("--saves must be at least 1")
        if self.lands_per_save < 0:
            raise SystemExit(f"--landings {self.landings} is below the warm-up's "
                             f"{self.initial_landings} (specs x window)")
        if self.gives_per_save < 0:
            raise SystemExit(f"--agents {self.agents} is below planners + landings "
                             f"({self.specs + self.saves + self.landings})")


def spread(total_per_save: float, i: int) -> int:
    """How many of a fractional per-save count save `i` gets (the totals come out exact)."""
    return math.floor(total_per_save * (i + 1) + 1e-9) - math.floor(total_per_save * i + 1e-9)


def edit(spec: SpecState, save: int, lands: int, gives: int, window: int) -> None:
    """One save's change of a spec: new tasks, changed old ones, drops, give-ups."""
    spec.saves += 1
    adds = (lands + 1) // 2
    old = list(spec.tasks)
    drop = max(0, len(old) + adds - window)
    old = old[drop:]
    changes = min(lands - adds, len(old))
    adds = lands - changes  # where too few old tasks are left, new ones land instead
    for task in sorted(old, key=lambda t: t.touched)[:changes]:
        task.version += 1
        task.touched = save
    # New tasks reuse the dropped tasks' files: main's tree keeps its size all day, so the
    # last saves meet the same repository as the first, only a longer history.
    used = {t.slot for t in old}
    free = [n for n in range(window + adds) if n not in used]
    spec.tasks = old + [spec.new_task(save, free[k]) for k in range(adds)]
    spec.gives = [f"g{save:05d}-{k}" for k in range(gives)]


# -- the daemon's side ----------------------------------------------------------------------


class SpecDrivenTurns(dict[str, list[dict[str, Any]]]):
    """The `replay/soak` trajectory's turns, derived from the spec files as saved.

    The provider looks an agent's turns up with `.get(key)`; a planner gets one
    `submit_plan` turn listing the spec's tasks, a task's agent a `write_file` of its file at
    its version and a `finish` (or only `finish`: it gives up)."""

    def __init__(self, specs_dir: Path) -> None:
        super().__init__()
        self.specs_dir = specs_dir

    def _tasks(self, spec_id: str) -> dict[str, tuple[int, str, str]]:
        text = (self.specs_dir / f"{spec_id}.md").read_text()
        return {m["id"]: (int(m["version"]), m["kind"], f"soak/{spec_id}/{m['file']}.txt")
                for m in TASK_LINE.finditer(text)}

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        if key.startswith("plan:"):
            spec_id = key.split(":", 1)[1]
            tasks = [{"id": tid, "title": f"{tid} of {spec_id}",
                      "instructions": f"write {path} at version {v}"
                      + (" (there is nothing to change: give up)" if kind == "gives-up" else ""),
                      "paths": [path], "acceptance": ["true"]}
                     for tid, (v, kind, path) in self._tasks(spec_id).items()]
            return [{"content": None, "usage": usage,
                     "tool_calls": [{"name": "submit_plan", "arguments": {"tasks": tasks}}]}]
        spec_id, _, task_id = key.partition("/")
        version, kind, path = self._tasks(spec_id).get(task_id, (0, "gives-up", ""))
        finish = {"content": None, "usage": usage,
                  "tool_calls": [{"name": "finish", "arguments": {"summary": "done"}}]}
        if kind == "gives-up":
            return [finish]
        write = {"path": path,
                 "content": f"{spec_id} {task_id} version {version}\n"}
        return [{"content": None, "usage": usage,
                 "tool_calls": [{"name": "write_file", "arguments": write}]}, finish]


def serve(root: Path, sock: Path) -> None:
    """The daemon process: `factory daemon --watch` with the spec-driven trajectory."""
    from agents import replay

    original = replay.load

    def load(name: str, path: Path) -> replay.Trajectory:
        # The engine loads (and registers) trajectories at open and again when a run checks
        # its models: each time, ours replaces the file's empty one.
        trajectory = original(name, path)
        if name == MODEL:
            trajectory.agents = SpecDrivenTurns(root / "specs")
            replay.register(trajectory)
        return trajectory

    replay.load = load  # type: ignore[assignment]

    async def main() -> None:
        from agents.daemon import serve as serve_daemon
        from agents.engine import Factory

        current = asyncio.current_task()
        assert current is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, current.cancel)
        factory = await Factory.open(root)

        def ready(_: object) -> None:
            print(f"ready pid {os.getpid()} backend {factory.backend.name}", flush=True)

        try:
            await serve_daemon(factory, sock, watch=True, ready=ready)
        except asyncio.CancelledError:
            pass
        finally:
            await factory.close()

    asyncio.run(main())


# -- the bench's side -----------------------------------------------------------------------


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def build(root: Path, specs: list[SpecState], sandbox: str, concurrency: int) -> None:
    """A real repository: a README, the configuration, the specs, one commit on main."""
    (root / "specs").mkdir(parents=True)
    (root / "README.md").write_text("A repository the soak bench's factory works on.\n")
    (root / ".gitignore").write_text(".factory/\n")
    (root / ".factory.toml").write_text(CONFIG.format(model=MODEL, sandbox=sandbox,
                                                      concurrency=concurrency))
    for spec in specs:
        (root / "specs" / f"{spec.id}.md").write_text(spec.text())
    replay_file = root / ".factory" / "replay" / f"{MODEL}.json"
    replay_file.parent.mkdir(parents=True)
    replay_file.write_text(json.dumps({"format": "factory-replay/1", "latency_ms": 0,
                                       "agents": {}}))
    git(root, "init", "-q", "-b", "main")
    git(root, "-c", "user.name=bench", "-c", "user.email=bench@example.com", "add", "-A")
    git(root, "-c", "user.name=bench", "-c", "user.email=bench@example.com",
        "commit", "-q", "-m", "initial")


class StoreReader:
    """Reads the daemon's store with plain SQLite (WAL: never blocks the writer)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)

    def one(self, sql: str, *args: Any) -> Any:
        row = self.db.execute(sql, args).fetchone()
        return row[0] if row else None

    def last_event(self) -> int:
        return int(self.one("SELECT coalesce(max(id), 0) FROM events"))

    def replanned(self, spec_id: str, after: int) -> str | None:
        return self.one("SELECT kind FROM events WHERE id > ? AND spec_id = ? AND kind IN "
                        "('plan_accepted', 'plan_rejected') LIMIT 1", after, spec_id)

    def replan_times(self, spec_id: str, after: int) -> tuple[float, float]:
        """When the store recorded the save (spec_saved) and its re-plan (plan_accepted)."""
        def ts(kind: str) -> float:
            return float(self.one("SELECT ts FROM events WHERE id > ? AND spec_id = ? AND "
                                  "kind = ? ORDER BY id LIMIT 1", after, spec_id, kind))
        return ts("spec_saved"), ts("plan_accepted")

    def quiet(self) -> bool:
        marks = ",".join("?" * len(OPEN_TASKS))
        open_tasks = self.one(f"SELECT count(*) FROM tasks WHERE status IN ({marks})",
                              *OPEN_TASKS)
        marks = ",".join("?" * len(OPEN_QUEUE))
        open_queue = self.one(f"SELECT count(*) FROM queue WHERE status IN ({marks})",
                              *OPEN_QUEUE)
        return open_tasks == 0 and open_queue == 0

    def count(self, kind: str) -> int:
        return int(self.one("SELECT count(*) FROM events WHERE kind = ?", kind))

    def agents(self) -> tuple[int, int]:
        """(all agents, planners)."""
        return (int(self.one("SELECT count(*) FROM agents")),
                int(self.one("SELECT count(*) FROM agents WHERE role = 'planner'")))

    def stuck(self) -> str:
        rows = self.db.execute("SELECT key, status, reason FROM tasks WHERE status IN "
                               "('pending','running','committed','landing')").fetchall()
        queue = self.db.execute("SELECT key, status, reason FROM queue WHERE status IN "
                                "('queued','awaiting_approval','landing')").fetchall()
        notices = self.db.execute("SELECT data FROM events WHERE kind = 'notice' "
                                  "ORDER BY id DESC LIMIT 5").fetchall()
        return f"open tasks {rows[:10]}; open queue {queue[:10]}; last notices {notices}"

    def close(self) -> None:
        self.db.close()


def git_out(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                          text=True).stdout


def rss_kb(pid: int) -> int:
    """The process's resident set (VmRSS, kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def store_bytes(db: Path) -> tuple[int, int]:
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size, wal.stat().st_size if wal.exists() else 0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_quiet(reader: StoreReader, daemon: subprocess.Popen[bytes], what: str,
               timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not reader.quiet():
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited ({daemon.returncode}) while {what}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the factory did not go quiet within {timeout:.0f} s after "
                             f"{what}: {reader.stuck()}")
        time.sleep(0.01)


def start_daemon(root: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    sock = root / ".factory" / "soak.sock"
    with log.open("wb") as out:
        daemon = subprocess.Popen([sys.executable, __file__, "--serve", str(root), str(sock)],
                                  stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"^ready pid \d+ backend (\S+)$", log.read_text(), re.MULTILINE)
        if found:
            return daemon, found[1]
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited ({daemon.returncode}):\n{log.read_text()}")
        time.sleep(0.05)
    daemon.kill()
    raise SystemExit(f"the daemon did not start:\n{log.read_text()}")


def stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def run(args: argparse.Namespace) -> bool:
    day = Day(saves=args.saves, agents=args.agents, landings=args.landings,
              specs=args.specs, window=args.window)
    day.check()
    base = Path(tempfile.mkdtemp(prefix="factory-bench-soak-"))
    root = base / "repo"
    specs = [SpecState(f"s{i:02d}") for i in range(day.specs)]
    for spec in specs:
        spec.tasks = [spec.new_task(0, n) for n in range(day.window)]
    build(root, specs, args.sandbox, args.concurrency)
    window = max(1, min(args.window_saves, day.saves // 4 or 1))
    warmup = min(args.warmup_saves, max(0, day.saves - 2 * window))
    print(f"parameters: {day.saves} saves, target {day.agents} agents and {day.landings} "
          f"landings; {day.specs} specs of {day.window} tasks landed at start; per save "
          f"{day.lands_per_save:.2f} landing tasks (new or changed) and "
          f"{day.gives_per_save:.2f} give-up agents; concurrency {args.concurrency}; "
          f"latency windows: first {window} saves after {warmup} warm-up saves, last {window}",
          flush=True)
    print(f"repository: {root}", flush=True)
    started = time.monotonic()
    daemon, backend = start_daemon(root, base / "daemon.log")
    reader: StoreReader | None = None
    try:
        db = root / ".factory" / "factory.db"
        deadline = time.monotonic() + 60
        while not db.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        reader = StoreReader(db)
        # Warm-up: every spec planned and its tasks landed.
        while reader.count("plan_accepted") < day.specs:
            if daemon.poll() is not None or time.monotonic() > deadline + 600:
                raise SystemExit(f"the initial plans did not come: {reader.stuck()}")
            time.sleep(0.05)
        wait_quiet(reader, daemon, "the initial plans", args.cycle_timeout * day.specs)
        print(f"sandbox backend: {backend}; warm-up (initial plans and "
              f"{reader.count('branch_landed')} landings) took "
              f"{time.monotonic() - started:.1f} s", flush=True)
        latencies: list[float] = []
        parts: list[tuple[float, float]] = []  # (write -> spec_saved, -> plan_accepted)
        rss_start = 0
        for i in range(day.saves):
            if i == warmup:
                rss_start = rss_kb(daemon.pid)
            spec = specs[i % day.specs]
            edit(spec, i + 1, spread(day.lands_per_save, i), spread(day.gives_per_save, i),
                 day.window)
            after = reader.last_event()
            path = root / "specs" / f"{spec.id}.md"
            text = spec.text()
            wall = time.time()
            t0 = time.perf_counter()
            path.write_text(text)
            deadline = time.monotonic() + args.cycle_timeout
            while (kind := reader.replanned(spec.id, after)) is None:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit(f"save {i + 1} of {spec.id} was not re-planned: "
                                     f"{reader.stuck()}")
                time.sleep(0.005)
            latencies.append(time.perf_counter() - t0)
            if kind != "plan_accepted":
                raise SystemExit(f"save {i + 1}: the plan of {spec.id} was rejected")
            saved, accepted = reader.replan_times(spec.id, after)
            parts.append((saved - wall, accepted - saved))
            wait_quiet(reader, daemon, f"save {i + 1}", args.cycle_timeout)
            if (i + 1) % args.progress == 0 or i + 1 == day.saves:
                agents, _ = reader.agents()
                print(f"  save {i + 1}/{day.saves}: {time.monotonic() - started:.0f} s, "
                      f"{reader.count('branch_landed')} landings, {agents} agents, "
                      f"rss {rss_kb(daemon.pid) / 1024:.0f} MB, re-plan "
                      f"{latencies[-1] * 1000:.0f} ms", flush=True)
        rss_end = rss_kb(daemon.pid)
        elapsed = time.monotonic() - started
        db_size, wal_size = store_bytes(db)
        agents, planners = reader.agents()
        landings = reader.count("branch_landed")
        failed = reader.count("task_failed")
        events = reader.last_event()
        main_moves = reader.count("main_moved")
        tree = git_out(root, "ls-tree", "-r", "--name-only", "main").count("\n")
        refs = git_out(root, "for-each-ref").count("\n")
        commits = git_out(root, "rev-list", "--count", "main").strip()
    finally:
        if reader is not None:
            reader.close()
        stop_daemon(daemon)
    first = [x * 1000 for x in latencies[warmup:warmup + window]]
    last = [x * 1000 for x in latencies[-window:]]
    ratio = statistics.median(last) / statistics.median(first)
    ratio95 = pct(last, 0.95) / pct(first, 0.95)
    growth_mb = (rss_end - rss_start) / 1024
    print(f"ran {day.saves} saves in {elapsed:.0f} s ({elapsed / 60:.1f} min), "
          f"sandbox {backend}")
    print(f"work: {landings} landings (target {day.landings}), {main_moves} advances of "
          f"main; {agents} agents (target {day.agents}: {planners} planners, "
          f"{agents - planners} task agents, {failed} gave up); {events} events in the log")
    print(f"repository at the end: {tree} files on main, {commits} commits, {refs} refs")
    print(f"store: {db_size + wal_size:,} bytes ({db_size:,} .db + {wal_size:,} -wal)")
    print(f"daemon rss: start (after warm-up) {rss_start / 1024:.1f} MB, end "
          f"{rss_end / 1024:.1f} MB, growth {growth_mb:+.1f} MB "
          f"(goal: under {GOAL_GROWTH_MB:.0f} MB) "
          f"{'PASS' if growth_mb < GOAL_GROWTH_MB else 'FAIL'}")
    print(f"re-plan latency, first {len(first)} saves: p50 {statistics.median(first):.0f} ms, "
          f"p95 {pct(first, 0.95):.0f} ms; last {len(last)}: p50 "
          f"{statistics.median(last):.0f} ms, p95 {pct(last, 0.95):.0f} ms")
    for name, chunk in (("first", parts[warmup:warmup + window]), ("last", parts[-window:])):
        print(f"  {name} {len(chunk)}: write -> spec_saved (the watcher) p50 "
              f"{statistics.median(c[0] for c in chunk) * 1000:.0f} ms, spec_saved -> "
              f"plan_accepted (the engine) p50 {statistics.median(c[1] for c in chunk) * 1000:.0f}"
              " ms")
    print(f"end/start: p50 {ratio:.2f}, p95 {ratio95:.2f} (goal: p50 ratio at most "
          f"{GOAL_RATIO}) {'PASS' if ratio <= GOAL_RATIO else 'FAIL'}")
    if args.keep:
        print(f"kept: {base} (daemon log: {base / 'daemon.log'})")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return growth_mb < GOAL_GROWTH_MB and ratio <= GOAL_RATIO


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplies the default saves, agents and landings")
    parser.add_argument("--saves", type=int, help="spec saves (default 500 x scale)")
    parser.add_argument("--agents", type=int, help="agents to run (default 5000 x scale)")
    parser.add_argument("--landings", type=int, help="landings (default 2000 x scale)")
    parser.add_argument("--specs", type=int, help="specs (default 10, fewer for small runs)")
    parser.add_argument("--window", type=int, default=6, help="landing tasks per spec")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sandbox", default="auto", choices=["auto", "bwrap", "none"],
                        help="the engine's default is auto (bwrap where it works)")
    parser.add_argument("--window-saves", type=int, default=50,
                        help="saves in each latency window (first and last)")
    parser.add_argument("--warmup-saves", type=int, default=5,
                        help="saves before the first window (and the start RSS)")
    parser.add_argument("--cycle-timeout", type=float, default=300.0)
    parser.add_argument("--progress", type=int, default=25)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), Path(args.serve[1]))
        return
    args.saves = args.saves or max(1, round(500 * args.scale))
    args.agents = args.agents or round(5000 * args.scale)
    args.landings = args.landings or round(2000 * args.scale)
    args.specs = args.specs or max(1, min(10, args.saves // 10,
                                          args.landings // (5 * args.window) or 1))
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(0 if run(args) else 1)


if __name__ == "__main__":
    main()
