"""An engine of the console's own, in a child process: what `factory console` and
`factory demo` run when no daemon serves the repository.

In the console's process, the engine's work (agents' turns, the store's writes, git) would
share the console's event loop, and a key press would wait behind it: under 5,000 events a
second its p95 was 2 to 3 times the idle one, against about 1.1 for a console attached to an
engine in another process (tests/bench/bench_console.py). So the console starts
`factory daemon` for itself and attaches to it. The child lives as long as the console:
quitting stops it as ctrl+c stops a run (the store keeps every committed step). It writes
its messages to `.factory/engine.log`; other consoles may attach meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from agents.errors import FactoryError
from console.attached import AttachedClient
from console.client import Snapshot

LOG_NAME = "engine.log"
READY_SECONDS = 120.0  # opening a large store and resuming a run can take a while
STOP_SECONDS = 30.0
# The engine runs at this much lower CPU priority than the console. Where the machine's
# cores are all busy (the engine's loop, its store's thread, agents' commands), the kernel
# then runs the console first when a key arrives: on 2 cores under 5,000 events a second,
# the loaded/idle ratio of key p95s fell from 1.1-1.45 to 1.05-1.2 (bench_console.py). The
# engine loses little: it is the console that waits for it, not the other way round.
ENGINE_NICE = 10


class EngineProcess:
    """A `factory daemon` child process that serves one repository to this console."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self._copy: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, root: Path, socket: Path, approval: str | None) -> EngineProcess:
        log = root / ".factory" / LOG_NAME
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "console.cli", "daemon", "--root", str(root),
                   "--socket", str(socket), "--nice", str(ENGINE_NICE)]
        if approval is not None:
            command += ["--approval", approval]
        with log.open("ab") as sink:
            process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=sink)
        engine = cls(process, log)
        try:
            await engine._ready()
        except BaseException:
            await engine.stop()
            raise
        return engine

    async def _ready(self) -> None:
        """Wait for the daemon's line saying it serves; a child that ends before that has
        said why in the log."""
        stdout = self.process.stdout
        assert stdout is not None
        try:
            async with asyncio.timeout(READY_SECONDS):
                line = await stdout.readline()
        except TimeoutError:
            raise FactoryError(f"the engine did not start within {READY_SECONDS:.0f} s; see "
                               f"{self.log}") from None
        if not line.startswith(b"serving "):
            await self.process.wait()
            raise FactoryError(f"the engine stopped as it started: {self._last_words()}")
        self._copy = asyncio.create_task(self._copy_output(stdout))

    async def _copy_output(self, stdout: asyncio.StreamReader) -> None:
        """Keep the pipe drained (a full pipe would block the child), into the log."""
        with self.log.open("ab") as sink:
            while line := await stdout.readline():
                sink.write(line)
                sink.flush()

    def _last_words(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        if not lines:
            return f"exit status {self.process.returncode} (log: {self.log})"
        return lines[-1].removeprefix("error: ")

    async def stop(self) -> None:
        """Stop the engine as ctrl+c stops a run, and wait for it to close the store."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_SECONDS):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._copy is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._copy
        elif self.process.stdout is not None:  # read to its end: the pipe closes with it
            await self.process.stdout.read()


class SpawnedClient(AttachedClient):
    """Attached to the console's own engine process, which it stops on close."""

    engine: EngineProcess | None = None

    async def snapshot(self) -> Snapshot:
        snap = await super().snapshot()
        if self.engine is not None:
            snap.engine = f"engine: pid {self.engine.process.pid}"
        return snap

    async def close(self) -> None:
        if self.engine is not None and self.lost is None:
            with contextlib.suppress(FactoryError):
                error = await self._call("run_error")
                if error is not None:
                    self.run_error = FactoryError(error)
        await super().close()
        if self.engine is not None:
            await self.engine.stop()


async def connect_spawned(root: Path, socket: Path,
                          approval: str | None = None) -> SpawnedClient:
    engine = await EngineProcess.start(root, socket, approval)
    try:
        client = await SpawnedClient.connect(socket)
    except BaseException:
        await engine.stop()
        raise
    client.engine = engine
    return client
