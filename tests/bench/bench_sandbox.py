"""Sandbox benchmark: per-command overhead of each backend over a plain subprocess.

For `true` and for `python -c pass`, in one run: the median wall time of a plain
`asyncio` subprocess (the baseline) and of the same command through each working backend,
and the difference (goals: bwrap under 10 ms extra; docker exec under 150 ms extra).
Rounds alternate between baseline and backends so that machine drift hits all of them.
Usage: python tests/bench/bench_sandbox.py [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agents.sandbox.base import Limits, SandboxContext, SandboxError
from agents.sandbox.process import run_process
from agents.sandbox.select import make_backend

COMMANDS = {"true": ["true"], "python -c pass": [sys.executable, "-c", "pass"]}


async def main(runs: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="factory-bench-sandbox-"))
    limits = Limits()
    sandboxes = {}
    for name in ("bwrap", "docker"):
        try:
            backend = make_backend(name, limits=limits)  # type: ignore[arg-type]
        except SandboxError as exc:
            print(f"{name}: not measured ({exc})")
            continue
        sandboxes[name] = await backend.open(SandboxContext(worktree=work, agent_id="bench"))
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(runs):
        for label, argv in COMMANDS.items():
            started = time.perf_counter()
            result = await run_process(argv, work, None, limits)
            assert result.ok, result
            times.setdefault(("plain", label), []).append(time.perf_counter() - started)
            for name, sandbox in sandboxes.items():
                started = time.perf_counter()
                result = await sandbox.run(argv, cwd=work)
                assert result.ok, result
                times.setdefault((name, label), []).append(time.perf_counter() - started)
    for sandbox in sandboxes.values():
        await sandbox.close()
    print(f"per-command wall time, median of {runs} alternating runs (ms)")
    print(f"{'command':<16}{'plain (baseline)':>18}" + "".join(
        f"{name:>12}{'extra':>10}" for name in sandboxes))
    for label in COMMANDS:
        base = statistics.median(times[("plain", label)]) * 1000
        row = f"{label:<16}{base:>18.2f}"
        for name in sandboxes:
            value = statistics.median(times[(name, label)]) * 1000
            row += f"{value:>12.2f}{value - base:>+10.2f}"
        print(row)
    print("goals: bwrap < +10 ms; docker exec < +150 ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    asyncio.run(main(parser.parse_args().runs))
