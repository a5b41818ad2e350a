"""Merge queue benchmark: 64 entries through the real engine, serial landing against each mode.

A real repository (64 modules, each with its test; pairs of modules whose tests fail only
when both are changed; one flaky test), 64 committed branches:
- 10% (6) break their module's test;
- 3 pairs pass alone and fail together;
- the rest add a module of their own;
- a flaky test fails 5% of the runs, whatever is tested;
and a test command that takes a fixed time T (the tests, then a sleep up to T).

The branches are handed to the engine as the committed tasks of one planned spec, and
`Factory.run` lands them: the real reconciler, queue, git and sandboxes. For serial landing
(`mode = "serial"`, one runner) and each mode with 4 runners, in the same run, it prints:
merged entries per T, test runs per merged entry, red commits on main (every commit main
pointed to is checked: a breaking module or both halves of a pair in its tree), flaky
evictions (a good entry rejected) and p50/p95 time from entering the queue to landing.
Goals: at least 5x serial throughput, at most 0.7 test runs per merged entry, 0 red, 0 flaky
evictions. Usage: python tests/bench/bench_queue.py [--t SECONDS] [--seed N] [--modes ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agents.engine import Factory
from agents.queue.chain import MODES
from tests.queue_support import (
    BREAK,
    GOOD,
    build,
    configure,
    entry_name,
    git,
    main_trees_green,
    seed,
)

ENTRIES = 64
BREAKERS = 6
PAIRS = 3
FLAKY_RATE = 0.05
RUNNERS = 4


def layout(seed: int) -> tuple[list[str], list[tuple[int, int]]]:
    """Which entries break the tests and which pairs fail together (seeded, printed)."""
    rng = random.Random(seed)
    kinds = [GOOD] * ENTRIES
    for i in rng.sample(range(ENTRIES), BREAKERS):
        kinds[i] = BREAK
    good = [i for i in range(ENTRIES) if kinds[i] == GOOD]
    rng.shuffle(good)
    return kinds, [(good[2 * p], good[2 * p + 1]) for p in range(PAIRS)]


async def one(template: Path, work: Path, mode: str, runners: int, t: float, backend: str,
              kinds: list[str], pairs: list[tuple[int, int]],
              branches: dict[str, str]) -> dict[str, float]:
    root = work / mode
    shutil.copytree(template, root, symlinks=True)
    configure(root, mode=mode, runners=runners, backend=backend)
    start = git(root, "rev-parse", "main").strip()
    factory = await Factory.open(root)
    try:
        await seed(factory, root, branches)
        began = time.monotonic()
        summary = await factory.run(["q"])
        wall = time.monotonic() - began
        stored = await factory.store.read_events(limit=1_000_000)
    finally:
        await factory.close()
    runs = sum(1 for s in stored if s.event.kind == "queue_test_started")
    landed = set(summary.landed)
    bad = {f"q/{entry_name(i)}" for i, kind in enumerate(kinds) if kind == BREAK}
    # A pair's member is rightly evicted when its partner landed; any other good one is not.
    partner = {f"q/{entry_name(a)}": f"q/{entry_name(b)}" for a, b in pairs} | \
        {f"q/{entry_name(b)}": f"q/{entry_name(a)}" for a, b in pairs}
    flaky_evictions = sum(1 for key, _ in summary.rejected
                          if key not in bad and not (key in partner and partner[key] in landed))
    entered = {f"{s.event.spec_id}/{s.event.task_id}": s.ts for s in stored
               if s.event.kind == "queue_entered"}
    waits = sorted(s.ts - entered[f"{s.event.spec_id}/{s.event.task_id}"] for s in stored
                   if s.event.kind == "branch_landed")
    assert len(landed) + len(summary.rejected) == ENTRIES, (summary.failed, summary.waiting)
    return {
        "wall": wall, "merged": len(landed), "per_t": len(landed) / (wall / t), "runs": runs,
        "runs_per": runs / max(1, len(landed)),
        "red": len(main_trees_green(root, start, kinds, pairs)),
        "flaky": flaky_evictions, "rejected": len(summary.rejected),
        "p50": statistics.median(waits) if waits else 0.0,
        "p95": waits[int(0.95 * (len(waits) - 1))] if waits else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--t", type=float, default=2.0, help="the test command's time T (s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backend", default="bwrap", choices=["bwrap", "none"])
    parser.add_argument("--modes", nargs="*", default=list(MODES))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="factory-bench-queue-"))
    template = work / "template"
    kinds, pairs = layout(args.seed)
    branches = build(template, kinds, pairs, t=args.t, flaky_rate=FLAKY_RATE)
    print(f"queue: {ENTRIES} entries ({BREAKERS} break the tests, {PAIRS} pairs fail only "
          f"together, a flaky test fails {FLAKY_RATE:.0%} of runs), T = {args.t:g} s, "
          f"seed {args.seed}, sandbox {args.backend}")
    print(f"  {'mode':18} {'runners':>7} {'merged/T':>9} {'x serial':>9} {'runs/merge':>11} "
          f"{'red':>4} {'flaky ev':>8} {'rejected':>8} {'p50 s':>7} {'p95 s':>7}")
    serial: float | None = None
    for mode in args.modes:
        runners = 1 if mode == "serial" else RUNNERS
        r = asyncio.run(one(template, work, mode, runners, args.t, args.backend, kinds,
                            pairs, branches))
        if mode == "serial":
            serial = r["per_t"]
        ratio = f"{r['per_t'] / serial:8.2f}x" if serial else "        -"
        print(f"  {mode:18} {runners:7d} {r['per_t']:9.2f} {ratio} {r['runs_per']:11.2f} "
              f"{int(r['red']):4d} {int(r['flaky']):8d} {int(r['rejected']):8d} "
              f"{r['p50']:7.1f} {r['p95']:7.1f}", flush=True)
    print("  goals: >= 5x serial throughput, <= 0.7 test runs per merged entry, 0 red commits "
          "on main, 0 flaky evictions (anchors: Zuul-style speculation ~3.4x at 1.47 runs per "
          "merge with 4 runners; no batching tops out near 4.4x)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
