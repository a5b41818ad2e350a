"""Watch benchmark: how soon a save is re-planned, and how soon a daemon's event reaches an
attached console.

1. Save to re-plan: the demo project run with `Factory.run(watch=True)` on a zero-latency
   replay model (the planner, a new agent for each re-plan, calls list_files then
   submit_plan); each of N saves adds a line to a spec's Goal, and the time from the write to
   the re-plan's `plan_accepted` event in the store is measured (goal: p95 under 300 ms).
   Baseline in the same run: the same planner's plan alone (`Factory.run` of a fresh copy,
   first plan_accepted after run_started), what a re-plan costs without the watch.
2. Daemon to console: a daemon process (`agents.daemon.Daemon`, as `factory daemon` serves)
   appends an agent's event every few milliseconds; an `AttachedClient` (what `factory
   console --attach` uses) following that agent over the unix socket notes when each
   event's batch arrives (goal: p95
   under 50 ms). This is the wire and the client, not the screen's paint (bench_console.py
   measures key to screen).
Usage: python tests/bench/bench_watch.py [--saves N] [--events N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agents import demo
from agents import events as ev
from agents.engine import Factory


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def zero_latency(root: Path) -> None:
    path = root / ".factory" / "replay" / "demo.json"
    doc = json.loads(path.read_text())
    doc["latency_ms"] = 0
    path.write_text(json.dumps(doc))


async def plans(factory: Factory) -> int:
    return sum(1 for s in await factory.store.read_events(limit=1_000_000)
               if s.event.kind == "plan_accepted" and s.event.spec_id == "cli")


async def save_to_replan(root: Path, saves: int) -> list[float]:
    factory = await Factory.open(root)
    run = asyncio.create_task(factory.run(["cli"], watch=True))
    spec = root / "specs" / "cli.md"
    try:
        deadline = time.monotonic() + 120
        while (factory.store.get("specs", "cli") or {}).get("status") != "done":
            if time.monotonic() > deadline or run.done():
                raise SystemExit("the first run of the cli spec did not finish")
            await asyncio.sleep(0.05)
        latencies = []
        text = spec.read_text()
        committed = asyncio.Event()
        factory.store.subscribe(lambda _: committed.set())
        for i in range(saves):
            before = await plans(factory)
            text = text.replace("## Goal\n", f"## Goal\nSave {i}.\n", 1)
            started = time.perf_counter()
            spec.write_text(text)
            while True:
                committed.clear()  # before looking: a batch committed meanwhile wakes us
                if await plans(factory) != before:
                    break
                await committed.wait()
            latencies.append(time.perf_counter() - started)
            # Let the unchanged plan settle (nothing to redo) before the next save.
            await asyncio.sleep(0.1)
        return latencies
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await factory.close()


async def plan_alone(base: Path, n: int) -> list[float]:
    """The planner's own time, without the watch: a fresh demo's first plan of cli."""
    out = []
    for i in range(n):
        root = demo.build(base / f"alone{i}", "none")
        zero_latency(root)
        factory = await Factory.open(root)
        run = asyncio.create_task(factory.run(["cli"]))
        try:
            started = None
            while True:
                events = [s for s in await factory.store.read_events(limit=100_000)]
                begun = [s.ts for s in events if s.event.kind == "run_started"]
                planned = [s.ts for s in events if s.event.kind == "plan_accepted"]
                if begun and started is None:
                    started = begun[0]
                if planned and started is not None:
                    out.append(planned[0] - started)
                    break
                await asyncio.sleep(0.002)
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            await factory.close()
    return out


async def serve(root: Path, sock: Path, count: int) -> None:
    """The daemon's side: serve, then append `count` notices, each naming its wall time."""
    from agents.daemon import Daemon

    factory = await Factory.open(root)
    daemon = Daemon(factory, sock)
    await daemon.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for i in range(count):
        await factory.store.append(ev.Notice(agent_id="bench",
                                             message=f"bench {i} {time.time():.6f}"))
        await asyncio.sleep(0.005)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await daemon.close()
    await factory.close()


async def daemon_to_console(root: Path, count: int) -> list[float]:
    from agents.wire import BatchEnd
    from console.attached import AttachedClient

    sock = root / ".factory" / "bench.sock"
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", str(root), str(sock), str(count),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert daemon.stdin is not None and daemon.stdout is not None
    assert (await daemon.stdout.readline()).strip() == b"ready"
    client = await AttachedClient.connect(sock)
    await client.snapshot()
    latencies: list[float] = []
    done = asyncio.Event()

    def arrived(item: object) -> None:
        now = time.time()
        if isinstance(item, BatchEnd):
            for stored in item.followed:
                message = getattr(stored.event, "message", "")
                if message.startswith("bench "):
                    latencies.append(now - float(message.split()[2]))
                    if len(latencies) == count:
                        done.set()

    client.follow(arrived)
    await client.follow_agent("bench")  # as a console showing that agent's timeline
    daemon.stdin.write(b"go\n")
    await asyncio.wait_for(done.wait(), 120)
    daemon.stdin.write(b"stop\n")
    await client.close()
    await daemon.wait()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--saves", type=int, default=40)
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(Path(args.serve[0]), Path(args.serve[1]), int(args.serve[2])))
        return
    base = Path(tempfile.mkdtemp(prefix="factory-bench-watch-"))
    root = demo.build(base / "demo", "none")
    zero_latency(root)
    watch = asyncio.run(save_to_replan(root, args.saves))
    alone = asyncio.run(plan_alone(base, 5))
    ms = [x * 1000 for x in watch]
    print(f"save -> re-plan ({args.saves} saves, zero-latency replay planner): "
          f"p50 {pct(ms, 0.5):.0f} ms, p95 {pct(ms, 0.95):.0f} ms, max {max(ms):.0f} ms "
          f"(goal: p95 under 300 ms)")
    print(f"baseline: the same plan made without the watch, median "
          f"{statistics.median(alone) * 1000:.0f} ms over {len(alone)} fresh runs; "
          f"p50 save->re-plan / plan alone = "
          f"{pct(ms, 0.5) / (statistics.median(alone) * 1000):.2f}")
    wire = [x * 1000 for x in asyncio.run(daemon_to_console(base / "demo", args.events))]
    print(f"daemon event -> attached client ({args.events} events, unix socket): "
          f"p50 {pct(wire, 0.5):.1f} ms, p95 {pct(wire, 0.95):.1f} ms, max {max(wire):.1f} ms "
          f"(goal: p95 under 50 ms)")


if __name__ == "__main__":
    main()
