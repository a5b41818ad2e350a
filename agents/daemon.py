"""A factory that outlives its consoles: the engine serves them over a unix socket.

`factory daemon` opens the engine once and keeps it; consoles attach (`factory console`, on
this machine or over SSH), detach and come back without stopping the swarm, and several can
watch at once. The daemon is the store's only writer; a console holds nothing but a copy of
the projections, kept current from the rows the daemon sends as batches commit (see
`agents.wire`).

The engine and the console's screen then live in two processes, so the work of recording
thousands of events a second never stands between a key press and its screen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents import wire
from agents.errors import FactoryError
from agents.store.projections import TABLES

if TYPE_CHECKING:
    from agents.engine import Factory
    from agents.store.store import Committed

log = logging.getLogger(__name__)

# A console that stops reading (a suspended terminal, a dead SSH link) is let go once this
# much is waiting for it, rather than holding the daemon's memory; it re-reads its state
# when it attaches again, so nothing is lost.
MAX_BEHIND = 64 * 1024 * 1024
# Unix socket paths are limited to 107 bytes on Linux.
MAX_SOCKET_PATH = 107


def socket_fits(path: Path) -> bool:
    """Whether a unix socket can live at path (its length is limited)."""
    return len(os.fsencode(path)) <= MAX_SOCKET_PATH


class Daemon:
    def __init__(self, factory: Factory, path: Path, *, max_behind: int = MAX_BEHIND,
                 always_supervised: bool = True) -> None:
        """`always_supervised`: agents' questions wait for a person for the daemon's whole
        life (`factory daemon`), or only while a console is attached (a `factory run` that
        consoles may look in on, where nobody may ever come)."""
        self.factory = factory
        self.path = path
        self.max_behind = max_behind
        self.always_supervised = always_supervised
        self._server: asyncio.Server | None = None
        self._consoles: set[_Console] = set()
        self._watching: set[_Console] = set()
        self._feed = wire.RowFeed()
        self._unfollow: Callable[[], None] | None = None

    @property
    def consoles(self) -> int:
        return len(self._consoles)

    async def start(self) -> None:
        path = self.path
        if not socket_fits(path):
            raise FactoryError(f"{path}: a unix socket path must be at most {MAX_SOCKET_PATH} "
                               "bytes; give a shorter one with --socket")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if await _answers(path):
                raise FactoryError(f"{path}: a daemon already serves this factory "
                                   "(`factory console` attaches to it)")
            path.unlink()  # left by a daemon that did not stop cleanly
        # Agents' questions wait for a person (up to [run] question_timeout_seconds) while
        # the daemon lives, attached or not: a console that comes back finds them waiting.
        if self.always_supervised:
            self.factory.supervise(True)
        old = os.umask(0o177)  # the socket commands the factory: its owner only
        try:
            self._server = await asyncio.start_unix_server(self._accept, path,
                                                           limit=wire.LINE_LIMIT)
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for console in list(self._consoles):
                console.drop()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def watching(self, console: _Console, on: bool) -> None:
        """A console follows the factory (it took a snapshot), or stopped."""
        if on:
            self._watching.add(console)
        else:
            self._watching.discard(console)
        store = self.factory.store
        if self._watching and self._unfollow is None:
            self._feed.restart()  # what the consoles hold is their snapshot: start from it
            self._unfollow = store.subscribe_raw(self._forward)
        elif not self._watching and self._unfollow is not None:
            self._unfollow()
            self._unfollow = None
        if not self.always_supervised:
            self.factory.supervise(bool(self._watching))

    def _forward(self, batch: Committed) -> None:
        """Each committed batch, as the rows it changed (worked out once for every console)
        and, for each console, the events of the agent it follows."""
        lines = b"".join(self._feed.lines(batch))
        for console in list(self._watching):
            console.write(lines + wire.batch_end(batch, console.followed))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        console = _Console(self, reader, writer)
        self._consoles.add(console)
        try:
            await console.serve()
        finally:
            self._consoles.discard(console)
            console.drop()

    # -- what a console may ask ------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Every projection row as of the last prepared event, each table as column names and
        rows of values (half the bytes of a list of objects)."""
        factory = self.factory
        store = factory.store
        tables = {}
        for table, (_, columns) in TABLES.items():
            width = len(columns)
            tables[table] = [list(r.values()) if len(r) == width else [r.get(c) for c in columns]
                             for r in store.state.tables[table].values()]
        budgets = factory.config.budgets.run
        return {"last_id": store.prepared_id, "tables": tables,
                "running": factory.background_running, "budget_tokens": budgets.tokens,
                "budget_usd": budgets.usd, "sandbox": factory.backend.name,
                "root": str(factory.root), "pid": os.getpid()}

    @cached_property
    def commands(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        """What a console may ask beyond hello and snapshot (built once, for every console)."""
        factory = self.factory

        async def events(after: int = 0, limit: int = 1000,
                         agent_id: str | None = None) -> list[list[Any]]:
            return wire.encode_events(await factory.store.read_events(after, limit, agent_id))

        async def spec_files() -> list[dict[str, Any]]:
            return [{"path": str(path), "text": text,
                     "findings": [f.model_dump(mode="json") for f in findings]}
                    for path, text, findings in await factory.spec_files()]

        async def save_spec(path: str, text: str) -> list[dict[str, Any]]:
            findings = await factory.save_spec(Path(path), text)
            return [f.model_dump(mode="json") for f in findings]

        async def run(spec_ids: list[str] | None = None) -> None:
            factory.start(spec_ids)

        async def approve(key: str) -> None:
            await factory.approve(key)

        async def answer(question_id: str, text: str) -> None:
            await factory.answer(question_id, text)

        async def reject(key: str, reason: str) -> None:
            await factory.reject(key, reason)

        async def move(key: str, delta: int) -> None:
            await factory.move(key, int(delta))

        async def retry(key: str) -> None:
            await factory.retry(key)

        async def cancel_task(key: str) -> bool:
            return factory.cancel_task(key)

        async def run_error() -> str | None:
            """Why the last run failed, if a person can act on it (a console asks on quit)."""
            return str(factory.run_error) if factory.run_error is not None else None

        return {"events": events, "spec_files": spec_files, "save_spec": save_spec,
                "run": run, "approve": approve, "answer": answer, "reject": reject,
                "move": move, "retry": retry, "cancel_task": cancel_task, "run_error": run_error,
                "diff": factory.diff, "conflict_hunks": factory.conflict_hunks}


class _Console:
    """One attached console: its requests, and the events forwarded to it."""

    def __init__(self, daemon: Daemon, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.daemon = daemon
        self.reader = reader
        self.writer = writer
        self.commands = daemon.commands
        self.watching = False
        self.followed: str | None = None  # the agent whose events this console is sent
        self._tasks: set[asyncio.Task[None]] = set()
        self._dropped = False

    async def serve(self) -> None:
        while not self._dropped:
            try:
                line = await self.reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                self.send({"id": None, "error": f"a request is longer than {wire.LINE_LIMIT} "
                           "bytes", "type": "protocol"})
                return
            except ConnectionError:
                return
            if not line:
                return
            task = asyncio.create_task(self.handle(line))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def handle(self, line: bytes) -> None:
        request_id = None
        try:
            request = _parse(line)
            request_id = request["id"]
            op, args = request["op"], request.get("args") or {}
            if op == "hello":
                result: Any = {"protocol": wire.PROTOCOL, "root": str(self.daemon.factory.root)}
            elif op == "snapshot":
                # Taken and followed in one step of the loop: the first batch forwarded is
                # the first one the snapshot does not include.
                result = self.daemon.snapshot()
                if not self.watching:
                    self.watching = True
                    self.daemon.watching(self, True)
            elif op == "follow_agent":
                agent_id = args.get("agent_id")
                if agent_id is not None and not isinstance(agent_id, str):
                    raise _Refused("follow_agent: agent_id is a string or null")
                self.followed = agent_id
                result = None
            elif op in self.commands:
                result = await self.commands[op](**args)
            else:
                raise _Refused(f"unknown op {op!r}; known: hello, snapshot, follow_agent, "
                               f"{', '.join(sorted(self.commands))}")
            self.send({"id": request_id, "result": result})
        except _Refused as exc:
            self.send({"id": request_id, "error": str(exc), "type": "protocol"})
        except TypeError as exc:  # arguments that do not fit the op
            self.send({"id": request_id, "error": f"bad arguments: {exc}", "type": "protocol"})
        except FactoryError as exc:
            self.send({"id": request_id, "error": str(exc), "type": "factory"})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("daemon: %s failed", line[:200])
            self.send({"id": request_id, "error": f"the daemon failed: {exc!r}",
                       "type": "internal"})

    def send(self, message: dict[str, Any]) -> None:
        self.write(wire.encode(message))

    def write(self, data: bytes) -> None:
        if self._dropped:
            return
        transport = self.writer.transport
        if transport.is_closing():
            self.drop()
            return
        if transport.get_write_buffer_size() > self.daemon.max_behind:
            log.warning("daemon: a console fell %d bytes behind; letting it go",
                        transport.get_write_buffer_size())
            self.drop()
            return
        self.writer.write(data)

    def drop(self) -> None:
        if self._dropped:
            return
        self._dropped = True
        if self.watching:
            self.watching = False
            self.daemon.watching(self, False)
        for task in self._tasks:
            task.cancel()
        self.writer.transport.abort()


class _Refused(Exception):
    pass


def _parse(line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except ValueError as exc:
        raise _Refused(f"a request is not JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("op"), str) \
            or "id" not in request or not isinstance(request.get("args", {}), dict):
        raise _Refused('a request is {"id": ..., "op": "...", "args": {...}}')
    return request


async def _answers(path: Path) -> bool:
    """Whether something listens on the socket at path (a live daemon, not a stale file)."""
    try:
        _, writer = await asyncio.open_unix_connection(path)
    except OSError:
        return False
    writer.close()
    return True


async def serve(factory: Factory, path: Path, *, run: bool = False,
                ready: Callable[[Daemon], None] | None = None) -> None:
    """Serve until cancelled (SIGTERM, ctrl+c): then stop the run, as a clean stop does, and
    close the store, so the next start resumes where this one was."""
    daemon = Daemon(factory, path)
    await daemon.start()
    try:
        if run:
            factory.start()
        if ready is not None:
            ready(daemon)
        await asyncio.Event().wait()
    finally:
        await daemon.close()
