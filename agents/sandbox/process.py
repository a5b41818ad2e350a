"""Running a child process with a wall-clock limit and capped output.

Every backend ends up starting a host process (bwrap, `docker exec`, or the command itself),
so the waiting, capping and killing live here once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agents.sandbox.base import Limits, RunResult, StopReason
from agents.sandbox.quota import DiskMeter, Over, poll, set_fsize


async def _drain(stream: asyncio.StreamReader, sink: bytearray, budget: list[int],
                 overflow: asyncio.Event) -> None:
    """Read until EOF; signal overflow as soon as the shared output budget is spent.

    Past the budget the output is read and dropped, never left in the pipe: asyncio reports
    a process's exit only once its pipes are closed, and a pipe paused with a full buffer
    never sees the EOF that follows the kill (the command would never be reported done).
    """
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return
        room = budget[0]
        if room > 0:
            sink += chunk[:room]
        budget[0] = room - len(chunk)
        if budget[0] < 0:
            overflow.set()


async def run_process(
    argv: Sequence[str],
    cwd: Path,
    env: Mapping[str, str] | None,
    limits: Limits,
    timeout: float | None = None,
    pass_fds: Sequence[int] = (),
    preexec: Callable[[], None] | None = None,
    meter: DiskMeter | None = None,
) -> RunResult:
    """Run argv in its own process group; kill the whole group on timeout, output flood or
    (with a meter) once the worktree goes over its quota."""
    wall = min(timeout, limits.wall_seconds) if timeout else limits.wall_seconds
    started = time.perf_counter()
    if meter is not None:
        fsize = meter.quota.disk_bytes
        inner = preexec

        def preexec() -> None:
            set_fsize(fsize)
            if inner is not None:
                inner()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(cwd),
            env=dict(env) if env is not None else None,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            preexec_fn=preexec,
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        return RunResult(
            exit_code=None,
            stdout="",
            stderr=str(exc),
            duration=time.perf_counter() - started,
            stop="denied",
            detail=f"could not start {argv[0]!r}: {exc}",
        )
    assert proc.stdout is not None and proc.stderr is not None
    pid = proc.pid
    return await supervise(proc.stdout, proc.stderr, proc.wait(), limits, wall, started,
                           lambda: _killpg(pid), meter)


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def supervise(
    stdout: asyncio.StreamReader,
    stderr: asyncio.StreamReader,
    exited: Awaitable[int | None],
    limits: Limits,
    wall: float,
    started: float,
    kill: Callable[[], None],
    meter: DiskMeter | None = None,
) -> RunResult:
    """Collect a started command's output under the limits; `kill` it when it must stop.

    `kill` ends the command and everything it started (its process group, or the sandbox's
    cgroup sweep). It is also called once the command itself has exited: what it left
    running in the background would otherwise hold its pipes open (and the command would
    only end at the wall-clock limit) or keep using CPU.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wall
    out, err = bytearray(), bytearray()
    budget = [limits.output_bytes]
    overflow = asyncio.Event()
    exit_code = asyncio.ensure_future(exited)
    readers = asyncio.gather(_drain(stdout, out, budget, overflow),
                             _drain(stderr, err, budget, overflow))
    flooded = asyncio.ensure_future(overflow.wait())
    over_quota = asyncio.Event()
    overs: list[Over] = []
    watch = asyncio.ensure_future(poll(meter, over_quota, overs)) if meter is not None \
        else None
    quota_hit = asyncio.ensure_future(over_quota.wait())
    stop: StopReason = "exit"
    detail = ""
    swept = False  # whether kill() ran after the command's own exit
    try:
        waiting: set[asyncio.Future[Any]] = {readers, flooded, exit_code, quota_hit}
        while not readers.done() and not overflow.is_set() and not over_quota.is_set():
            done, _ = await asyncio.wait(waiting, timeout=max(0.0, deadline - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
            if exit_code in done:
                # The leader is gone: end what it left behind, then read to the end.
                kill()
                swept = True
                waiting.discard(exit_code)
        if overs:
            stop, detail = "quota", overs[0].message
        elif overflow.is_set():
            stop, detail = "output_cap", f"output exceeded {limits.output_bytes} bytes"
        elif not readers.done():
            stop, detail = "timeout", f"killed after {wall:g} s"
    finally:
        flooded.cancel()
        quota_hit.cancel()
        if watch is not None:
            watch.cancel()
        if stop != "exit":
            kill()
        if not readers.done():
            # Everything that held the pipes is dead (or the command finished): they close.
            try:
                await asyncio.wait_for(readers, timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                readers.cancel()
        try:
            code = await asyncio.wait_for(asyncio.shield(exit_code), timeout=10)
        except TimeoutError:
            kill()
            code = await exit_code
        # Descendants that outlived the leader would keep pipes or CPU busy.
        if stop == "exit" and not swept:
            kill()
    return RunResult(
        exit_code=code if stop == "exit" else None,
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace"),
        duration=time.perf_counter() - started,
        stop=stop,
        detail=detail,
        over=overs[0] if overs else None,
    )
