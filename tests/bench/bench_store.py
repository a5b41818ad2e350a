"""Store benchmark: appends through the store against raw sqlite3, and opening a big store.

Prints, from one run on this machine:
- the rate of 200,000 events appended through `Store` (serialisation, hash chain,
  projections, batched commits) and of the very same rows inserted with raw
  `sqlite3.executemany` in one transaction into the same schema, and their ratio
  (goal: at least 0.5);
- the time to open a store of 1,000,000 events and load its current state (goal: < 0.5 s).

Rounds alternate store and raw so that machine noise hits both; medians are reported.
Usage: python tests/bench/bench_store.py [--events N] [--big N] [--rounds N] [--skip-open]

Building the big store takes a minute or two; `--skip-open` leaves that part out while
iterating on the append path. By default everything runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agents import events as ev
from agents.store import Store
from agents.store.schema import MIGRATIONS


def workload(n: int, agents: int = 1000) -> list[ev.Event]:
    """What a busy run appends: per agent a start, then turns and tool results."""
    out: list[ev.Event] = [ev.RunStarted(run_id="bench", specs=["s"], concurrency=64,
                                         sandbox="none")]
    out.append(ev.SpecRegistered(spec_id="s", title="bench", path="specs/s.md", digest="d"))
    out.append(ev.PlanAccepted(spec_id="s", digest="p", tasks=[
        ev.PlannedTask(id=f"t{i}", title=f"task {i}", paths=["src/"], acceptance=["true"])
        for i in range(agents)]))
    for i in range(agents):
        out.append(ev.AgentStarted(spec_id="s", task_id=f"t{i}", agent_id=f"a{i}",
                                   role="implementer", model="replay/bench",
                                   messages=[{"role": "system", "content": "work"}]))
    step = 0
    while len(out) < n:
        step += 1
        for i in range(agents):
            if len(out) >= n:
                break
            ids = {"spec_id": "s", "task_id": f"t{i}", "agent_id": f"a{i}"}
            if step % 2:
                out.append(ev.AgentTurn(**ids, step=step, model="replay/bench", tokens_in=1200,
                                        tokens_out=80, cost_usd=0.0002, latency=0.01,
                                        message={"role": "assistant", "content": None,
                                                 "tool_calls": [{"id": f"c{step}",
                                                                 "type": "function",
                                                                 "function": {
                                                                     "name": "read_file",
                                                                     "arguments": '{"path":'
                                                                     ' "src/a.py"}'}}]}))
            else:
                out.append(ev.ToolExecuted(**ids, step=step, call_id=f"c{step}",
                                           name="read_file", arguments={"path": "src/a.py"},
                                           result="def a():\n    return 1\n", duration=0.0001))
    return out[:n]


async def through_store(path: Path, events: list[ev.Event], chunk: int) -> float:
    """Seconds from the first append until the store is closed: every event committed and
    the WAL checkpointed into the database, as the raw baseline's COMMIT also does, so that
    no checkpoint the store puts off is left out of its time."""
    store = await Store.open(path)
    closed = False
    try:
        started = time.perf_counter()
        futures = [store.append_many(events[i:i + chunk]) for i in range(0, len(events), chunk)]
        await asyncio.gather(*futures)
        await store.close()
        closed = True
        return time.perf_counter() - started
    finally:
        if not closed:
            await store.close()


def raw_rows(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, ts, kind, spec_id, task_id, agent_id, data, prev_hash,"
                            " hash FROM events ORDER BY id").fetchall()
    finally:
        conn.close()


def through_raw(path: Path, rows: list[tuple[object, ...]]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(MIGRATIONS[0])
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO events (id, ts, kind, spec_id, task_id, agent_id, data, "
                     "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


async def open_time(path: Path, rounds: int = 5) -> tuple[float, int, int]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        store = await Store.open(path)
        tasks = len(store.rows("tasks"))
        times.append(time.perf_counter() - started)
        last = store.last_id
        await store.close()
    return statistics.median(times), last, tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=1000,
                        help="events per append call (as many agents appending at once)")
    parser.add_argument("--skip-open", action="store_true",
                        help="skip building the big store and timing its opening")
    args = parser.parse_args()
    events = workload(args.events)
    tmp = Path(tempfile.mkdtemp(prefix="factory-bench-store-"))
    try:
        run(args, events, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the big store is hundreds of MB


def run(args: argparse.Namespace, events: list[ev.Event], tmp: Path) -> None:
    store_times, raw_times = [], []
    for r in range(args.rounds):
        spath, rpath = tmp / f"store{r}.db", tmp / f"raw{r}.db"
        store_times.append(asyncio.run(through_store(spath, events, args.chunk)))
        raw_times.append(through_raw(rpath, raw_rows(spath)))
        for p in (spath, rpath):
            for suffix in ("", "-wal", "-shm"):
                if Path(f"{p}{suffix}").exists():
                    os.remove(f"{p}{suffix}")
    s, r = statistics.median(store_times), statistics.median(raw_times)
    n = args.events
    print(f"append {n:,} events ({args.rounds} rounds, medians)")
    print(f"  through Store           {s:7.3f} s   {n / s:>12,.0f} events/s")
    print(f"  raw sqlite3 executemany {r:7.3f} s   {n / r:>12,.0f} events/s   (baseline)")
    print(f"  ratio store/raw rate    {r / s:7.2f}        (goal >= 0.5)")
    print("  per round               " + "  ".join(
        f"{raw / store:.2f}" for store, raw in zip(store_times, raw_times, strict=True)))
    if args.skip_open:
        return

    big = tmp / "big.db"
    print(f"building a store of {args.big:,} events ...", flush=True)
    started = time.perf_counter()
    asyncio.run(through_store(big, workload(args.big, agents=5000), 5000))
    print(f"  built in {time.perf_counter() - started:.1f} s")
    median, last, tasks = asyncio.run(open_time(big))
    print(f"open a store of {last:,} events and load current state ({tasks:,} tasks)")
    print(f"  median of 5 opens       {median:7.3f} s          (goal < 0.5 s)")


if __name__ == "__main__":
    main()
