"""Sandbox benchmark: per-command overhead of each backend over a plain subprocess, and the
file tools' write throughput over a plain Python write loop.

For `true` and for `python -c pass`, in one run: the median wall time of a plain
`asyncio` subprocess (the baseline) and of the same command through each working backend,
the difference and the ratio (goals: bwrap under 10 ms extra; docker exec under 150 ms
extra). The sandboxes are set up as a run sets them up: commands as the unprivileged
command user when this runs as root, and the agent's quota measured during and after each
command. Rounds alternate between baseline and backends so that machine drift hits all of
them. Docker runs each command by exec in one long-lived container, from the image given
(default: the host-toolchain image, built here if it is missing, since nothing is pulled).
`--files N` fills the worktree with N small files first (per-file work after each command,
such as looking for setuid bits and measuring the quota, shows there; the default, 0, is an
empty worktree).

Then `write_file` (the agents' tool, through `call_tool`: arguments validated, the path
opened beneath the worktree's handle, an exclusive temporary file renamed into place, the
quota charged) for 10,000 small files in fresh folders, against a plain loop of
`open(path, "w").write(...)` on the same kind of tree, in alternating rounds (goal: at least
0.6 of the plain loop's files per second).
Usage: python tests/bench/bench_sandbox.py [--runs N] [--image IMAGE] [--files N]
       [--backends bwrap,docker] [--writes N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agents.sandbox.base import Limits, SandboxBackend, SandboxContext, SandboxError
from agents.sandbox.none import NoneBackend
from agents.sandbox.process import run_process
from agents.sandbox.quota import DiskMeter, Quota
from agents.sandbox.select import make_backend
from agents.tools import ToolContext, call_tool

COMMANDS = {"true": ["true"], "python -c pass": [sys.executable, "-c", "pass"]}


def docker_backend(limits: Limits, image: str, root: Path) -> SandboxBackend:
    """The docker backend; the host-toolchain image is built first if it is not there."""
    from agents.sandbox.docker import LOCAL_IMAGE, DockerUnavailable, build_local_image, connect

    try:
        return make_backend("docker", limits=limits, image=image, root=root)
    except DockerUnavailable:
        if image != LOCAL_IMAGE:
            raise
        build_local_image(connect(), image)
        return make_backend("docker", limits=limits, image=image, root=root)


def fill(work: Path, files: int) -> None:
    """A worktree of `files` small files, twenty to a directory, like a source tree."""
    for n in range(files):
        folder = work / f"pkg{n // 20}"
        folder.mkdir(exist_ok=True)
        (folder / f"mod{n % 20}.py").write_text("x = 1\n")


async def main(runs: int, image: str, files: int = 0,
               backends: tuple[str, ...] = ("bwrap", "docker")) -> None:
    work = Path(tempfile.mkdtemp(prefix="factory-bench-sandbox-"))
    fill(work, files)
    limits = Limits()
    sandboxes = {}
    for name in backends:
        try:
            backend = (docker_backend(limits, image, work) if name == "docker"
                       else make_backend("bwrap", limits=limits))
        except (SandboxError, ImportError) as exc:
            print(f"{name}: not measured ({exc})")
            continue
        sandboxes[name] = await backend.open(SandboxContext(
            worktree=work, agent_id="bench", meter=DiskMeter(work, Quota())))
        # One warm-up command each: the first exec into a fresh container pays for caches.
        await sandboxes[name].run(["true"], cwd=work)
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
    print(f"per-command wall time, median of {runs} alternating runs (ms)"
          + (f", worktree of {files} files" if files else ""))
    print(f"{'command':<16}{'plain (baseline)':>18}" + "".join(
        f"{name:>12}{'extra':>10}{'ratio':>8}" for name in sandboxes))
    extra: dict[str, float] = {}
    for label in COMMANDS:
        base = statistics.median(times[("plain", label)]) * 1000
        row = f"{label:<16}{base:>18.2f}"
        for name in sandboxes:
            value = statistics.median(times[(name, label)]) * 1000
            extra[name] = max(extra.get(name, 0.0), value - base)
            row += f"{value:>12.2f}{value - base:>+10.2f}{value / base:>7.1f}x"
        print(row)
    goals = {"bwrap": 10.0, "docker": 150.0}
    print("goals: bwrap < +10 ms; docker exec < +150 ms; worst extra here: " + ", ".join(
        f"{name} +{extra[name]:.1f} ms ({'met' if extra[name] < goals[name] else 'MISSED'})"
        for name in sandboxes))


async def writes(count: int, rounds: int = 5) -> None:
    """write_file against a plain write loop, files per second, alternating rounds."""
    root = Path(tempfile.mkdtemp(prefix="factory-bench-writes-"))
    sandbox = await NoneBackend().open(SandboxContext(worktree=root, agent_id="bench"))
    tool_rates: list[float] = []
    plain_rates: list[float] = []
    for round_no in range(rounds):
        plain = root / f"plain{round_no}"
        plain.mkdir()
        started = time.perf_counter()
        for n in range(count):
            folder = plain / f"pkg{n // 20}"
            if n % 20 == 0:
                folder.mkdir()
            with open(folder / f"mod{n % 20}.py", "w") as handle:
                handle.write(f"X = {n}\n")
        plain_rates.append(count / (time.perf_counter() - started))

        tree = root / f"tool{round_no}"
        tree.mkdir()
        ctx = ToolContext(worktree=tree, sandbox=sandbox, meter=DiskMeter(tree, Quota()))
        started = time.perf_counter()
        for n in range(count):
            out = await call_tool(ctx, "write_file", {"path": f"pkg{n // 20}/mod{n % 20}.py",
                                                     "content": f"X = {n}\n"})
            assert not out.is_error, out.content
        tool_rates.append(count / (time.perf_counter() - started))
    await sandbox.close()
    tool, plain = statistics.median(tool_rates), statistics.median(plain_rates)
    print(f"\nwrite_file, {count:,} small files in folders of 20, median of {rounds} "
          "alternating rounds (files/s)")
    print(f"  plain Python write loop (baseline) {plain:>10,.0f}")
    print(f"  write_file (beneath the handle, temp file + rename, quota) {tool:>10,.0f}")
    verdict = "met" if tool / plain >= 0.6 else "MISSED"
    print(f"  ratio {tool / plain:.2f} (goal >= 0.6: {verdict}); rounds: "
          + ", ".join(f"{t / p:.2f}" for t, p in zip(tool_rates, plain_rates, strict=True)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--image", default="factory-sandbox:local",
                        help="docker image to run commands in (default: the local one)")
    parser.add_argument("--files", type=int, default=0,
                        help="small files to put in the worktree first (default: none)")
    parser.add_argument("--backends", default="bwrap,docker",
                        help="comma-separated backends to measure (default: bwrap,docker)")
    parser.add_argument("--writes", type=int, default=10_000,
                        help="files write_file writes per round (default: 10,000)")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.image, args.files, tuple(args.backends.split(","))))
    asyncio.run(writes(args.writes))
