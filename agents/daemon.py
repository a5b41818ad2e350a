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
import inspect
import logging
import os
import socket
import struct
import time
import traceback
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from agents import commands, notify, wire
from agents.commands import MAX_INT
from agents.errors import FactoryError
from agents.store.projections import TABLES
from agents.textsafe import clean, clean_line

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
# The longest request line the daemon reads. A console's requests are small but for
# `save_spec`, which carries a spec file's text (a few KiB; 4 MiB is far more than any spec).
# A longer line is refused and its connection closed once this much has been read, never
# buffered whole. (Replies can be far larger: consoles read them up to `wire.LINE_LIMIT`.)
REQUEST_LIMIT = 4 * 1024 * 1024
# Requests of one connection being worked on at once; one more is refused (a protocol error
# with its id) until a reply has gone out. A console waits for a handful at most.
MAX_IN_FLIGHT = 64
# Integers a console sends are JSON-safe: beyond ±(2**53 - 1) JSON readers lose digits (and
# SQLite, which some become arguments of, stops at 2**63).
MAX_ID_LENGTH = 128
MAX_OP_LENGTH = 64
# The most events one `events` request reads (a console's timeline asks for 5000 at a time).
MAX_EVENTS = 100_000
# What an observing console is told when it asks for a command (`factory console --observe`).
READ_ONLY = "this console observes: read-only"

Count = Annotated[int, Field(ge=0, le=MAX_INT)]
EventCount = Annotated[int, Field(ge=0, le=MAX_EVENTS)]
RequestId = Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)] \
    | Annotated[str, Field(max_length=MAX_ID_LENGTH)] | None




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
        self.notifier: notify.Notifier | None = None
        self._ring: frozenset[str] = frozenset()  # what attached consoles are rung for
        self.since: float | None = None

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
                                                           limit=REQUEST_LIMIT)
        finally:
            os.umask(old)
        self.since = time.time()
        # Notifications go out from the process that serves the factory: the command from
        # here, and a ring to every console attached (with the batches they are sent).
        config = self.factory.config.notify
        self._ring = frozenset(config.events)
        self.notifier = notify.Notifier(self.factory.store, config, self.factory.root)
        self.notifier.start()

    async def close(self) -> None:
        if self.notifier is not None:
            await self.notifier.close()
            self.notifier = None
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
        # After the batch's end, so that a console rings with the rows already in place.
        rings = b"".join(wire.encode({"notify": note.payload(self.factory.root)})
                         for note in notify.notifications(batch, self._ring))
        for console in list(self._watching):
            console.write(lines + wire.batch_end(batch, console.followed) + rings)

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
    def commands(self) -> dict[str, _Op]:
        """What a console may ask (built once, for every console).

        Each op's parameters and their types are declared here once, by its function's
        signature: a request's `args` must fit them exactly (see `_Op`). A parameter named
        `console` is the console that asks, not an argument."""
        factory = self.factory

        async def hello(console: _Console, observe: bool = False) -> dict[str, Any]:
            """`observe`: this connection only looks (`factory console --observe`); every
            command it sends from now on is refused. Once said it holds for the connection's
            life: a later hello cannot take it back."""
            console.observing = console.observing or observe
            said = {"protocol": wire.PROTOCOL, "root": str(factory.root)}
            return {**said, "observing": True} if console.observing else said

        async def info() -> dict[str, Any]:
            """What `factory status` and `factory up` say of the process serving."""
            return {"protocol": wire.PROTOCOL, "root": str(factory.root), "pid": os.getpid(),
                    "since": self.since}

        async def snapshot(console: _Console) -> dict[str, Any]:
            # Taken and followed in one step of the loop: the first batch forwarded is the
            # first one the snapshot does not include.
            result = self.snapshot()
            if not console.watching:
                console.watching = True
                self.watching(console, True)
            return result

        async def follow_agent(console: _Console, agent_id: str | None) -> None:
            console.followed = agent_id

        async def events(after: Count = 0, limit: EventCount = 1000,
                         agent_id: str | None = None) -> list[list[Any]]:
            return wire.encode_events(await factory.store.read_events(after, limit, agent_id))

        async def spec_files() -> list[dict[str, Any]]:
            return [{"path": str(path), "text": text,
                     "findings": [f.model_dump(mode="json") for f in findings]}
                    for path, text, findings in await factory.spec_files()]

        async def run_error() -> str | None:
            """Why the last run failed, if a person can act on it (a console asks on quit)."""
            return str(factory.run_error) if factory.run_error is not None else None

        async def diff(key: str) -> str:
            return await factory.diff(key)

        async def conflict_hunks(a: str, b: str) -> dict[str, str]:
            return await factory.conflict_hunks(a, b)

        ops = (hello, info, snapshot, follow_agent, events, spec_files, run_error, diff,
               conflict_hunks)
        table = {op.__name__: _Op.of(op) for op in ops}
        # A person's commands: parsed with the one model each (agents/commands.py), and
        # recorded with who gave them by the engine that carries them out.
        for op, model in commands.BY_OP.items():
            table[op] = _Op.for_command(op, model, factory)
        return table


_STRICT = ConfigDict(strict=True, extra="forbid")


@dataclass(frozen=True, slots=True)
class _Op:
    """One op a console may ask: its function, and the model of its arguments, derived from
    the function's signature. Strict: a string is not an integer (nor is true), and an
    argument the function does not take is an error, as is a missing one it needs."""

    name: str
    run: Callable[..., Awaitable[Any]]
    arguments: type[BaseModel]
    takes_console: bool

    @classmethod
    def of(cls, run: Callable[..., Awaitable[Any]]) -> _Op:
        hints = typing.get_type_hints(run, include_extras=True)
        fields: dict[str, Any] = {}
        takes_console = False
        for name, param in inspect.signature(run).parameters.items():
            if name == "console":
                takes_console = True
                continue
            required = param.default is inspect.Parameter.empty
            fields[name] = (hints.get(name, Any), ... if required else param.default)
        name = run.__name__
        return cls(name, run, create_model(f"{name}_args", __config__=_STRICT, **fields),
                   takes_console)

    @classmethod
    def for_command(cls, name: str, model: type[BaseModel], factory: Factory) -> _Op:
        """A command: its arguments are the command's model, and running it is the engine
        executing the command, given by the console that asked."""
        async def run(console: _Console, **fields: Any) -> Any:
            # Refused here, in the daemon, whatever the console's screen allows: a console
            # that said it observes changes nothing, however its requests are made.
            if console.observing:
                raise FactoryError(f"{READ_ONLY}: {name} refused")
            result = await factory.execute(model(**fields), by=console.who)  # type: ignore[arg-type]
            if isinstance(result, list):  # lint findings of a saved spec
                return [f.model_dump(mode="json") for f in result]
            return result

        return cls(name, run, model, True)

    def parse(self, args: dict[str, Any]) -> dict[str, Any]:
        """args as the op's function takes them, or _Refused saying what does not fit."""
        try:
            return dict(self.arguments.model_validate(args))
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            said = "; ".join(self._explain(e) for e in errors[:3])
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            raise _Refused(f"{self.name}: bad arguments: {said}{more}") from None

    def _explain(self, error: Any) -> str:
        loc, kind = error["loc"], error["type"]
        where = _where(loc)
        if kind == "extra_forbidden":
            takes = ", ".join(f for f in self.arguments.model_fields if f != "op") or \
                "no arguments"
            return f"{where} is unknown ({self.name} takes {takes})"
        if kind == "missing":
            return f"{where} is missing"
        if kind in _EXPECTED:
            expected = _EXPECTED[kind]
            field = self.arguments.model_fields.get(loc[0]) if len(loc) == 1 else None
            if field is not None and type(None) in typing.get_args(field.annotation):
                expected += " or null"
            return f"{where} is {expected}, not {_json_type(error['input'])}"
        ctx = error.get("ctx") or {}
        if kind == "less_than_equal":
            return f"{where} is at most {ctx['le']}"
        if kind == "greater_than_equal":
            return f"{where} is at least {ctx['ge']}"
        msg = str(error["msg"]).removeprefix("Input ").removeprefix("Value error, ")
        return f"{where} {msg[:1].lower()}{msg[1:]}"


_EXPECTED = {"string_type": "a string", "int_type": "an integer", "bool_type": "true or false",
             "float_type": "a number", "list_type": "a list", "dict_type": "an object"}


def _json_type(value: object, *, oversized: bool = False) -> str:
    """What a JSON value is, to say what came instead of what was expected (`oversized`:
    when it is of the right type, it was too large)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a larger integer" if oversized else "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a longer string" if oversized else "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _instead(errors: list[Any]) -> str:
    """What came instead of what a field of the envelope expects (its errors)."""
    too_large = any(e["type"] in ("less_than_equal", "greater_than_equal", "string_too_long")
                    for e in errors)
    return _json_type(errors[0]["input"], oversized=too_large)


def _where(loc: tuple[int | str, ...]) -> str:
    """An argument's name (and index, in a list) as a reply says it: short, even when what
    a console sent as a name is long or odd."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += (("." if out else "") + part if part.isidentifier() and len(part) <= 40
                    else f"[{part[:40]!r}{'…' if len(part) > 40 else ''}]")
    return out or "args"


class _Envelope(BaseModel):
    """What every request is; its `args` are the op's to check (`_Op.parse`)."""

    model_config = _STRICT
    id: RequestId
    op: Annotated[str, Field(max_length=MAX_OP_LENGTH)]
    args: dict[str, Any] = {}


_SHAPE = 'a request is {"id": ..., "op": "...", "args": {...}}'


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
        self.observing = False  # said so in its hello: its commands are refused
        self._tasks: set[asyncio.Task[None]] = set()
        self._dropped = False
        self.who = _peer(writer)  # who gives this console's commands, as the log says

    async def serve(self) -> None:
        while not self._dropped:
            try:
                line = await self.reader.readline()
            except ValueError:  # over REQUEST_LIMIT: readline dropped what it had read of it
                log.warning("daemon: a console sent a request longer than %d bytes; closing "
                            "its connection", REQUEST_LIMIT)
                self.send({"id": None, "error": f"a request is longer than {REQUEST_LIMIT} "
                           "bytes; closing the connection", "type": "protocol"})
                self.drop(flush=True)
                return
            except ConnectionError:
                return
            if not line:
                return
            self.receive(line)

    def receive(self, line: bytes) -> None:
        """Check a request and set its op going, or refuse it at once."""
        try:
            request_id, op, args = self._request(line)
        except _Refused as exc:
            self.send({"id": exc.request_id, "error": str(exc), "type": "protocol"})
            return
        except Exception as exc:  # a bug in checking it
            self._failed(None, "reading a request", exc, line)
            return
        if len(self._tasks) >= MAX_IN_FLIGHT:
            self.send({"id": request_id, "error": f"{op.name}: refused: {MAX_IN_FLIGHT} "
                       "requests of this connection are in flight; wait for their replies",
                       "type": "protocol"})
            return
        task = asyncio.create_task(self.handle(request_id, op, args, line[:_EXCERPT]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _request(self, line: bytes) -> tuple[RequestId, _Op, dict[str, Any]]:
        """A request's id, op and arguments; or _Refused, with the id when that much is
        right. Every part is checked before anything reaches the engine."""
        try:  # strict JSON: no invalid UTF-8, lone surrogates or nesting 200 deep
            request = pydantic_core.from_json(line)
        except ValueError as exc:
            raise _Refused(f"a request is not JSON: {exc}") from None
        if not isinstance(request, dict):
            raise _Refused(_SHAPE)
        wrong: dict[Any, list[Any]] = {}  # the errors of each key
        envelope = None
        try:
            envelope = _Envelope.model_validate(request)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                wrong.setdefault(error["loc"][0] if error["loc"] else "", []).append(error)
        if "id" in wrong:
            raise _Refused("a request has an id (an integer, a string or null)"
                           if wrong["id"][0]["type"] == "missing" else
                           f"a request's id is an integer within ±{MAX_INT}, a string of at "
                           f"most {MAX_ID_LENGTH} characters, or null; not "
                           f"{_instead(wrong['id'])}")
        request_id = request["id"]
        if "op" in wrong:
            raise _Refused("a request names its op" if wrong["op"][0]["type"] == "missing" else
                           f"a request's op is a string of at most {MAX_OP_LENGTH} characters, "
                           f"not {_instead(wrong['op'])}", request_id)
        op = self.commands.get(request["op"])
        if op is None:
            raise _Refused(f"unknown op {request['op']!r}; known: "
                           f"{', '.join(sorted(self.commands))}", request_id)
        extra = [key for key in request if key not in _Envelope.model_fields]
        if extra:
            raise _Refused(f"{op.name}: a request has only id, op and args, not "
                           f"{_where((extra[0],))}", request_id)
        if envelope is None:
            if "args" not in wrong:  # no key of it is wrong, yet it did not fit
                raise _Refused(_SHAPE, request_id)
            raise _Refused(f"{op.name}: bad arguments: args is an object, not "
                           f"{_json_type(request['args'])}", request_id)
        try:
            return request_id, op, op.parse(envelope.args)
        except _Refused as exc:
            raise _Refused(str(exc), request_id) from None

    async def handle(self, request_id: RequestId, op: _Op, args: dict[str, Any],
                     excerpt: bytes) -> None:
        try:
            result = await (op.run(console=self, **args) if op.takes_console else
                            op.run(**args))
            self.send({"id": request_id, "result": result})
        except FactoryError as exc:
            self.send({"id": request_id, "error": str(exc), "type": "factory"})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: the request was checked, the engine failed on it
            self._failed(request_id, op.name, exc, excerpt)

    def _failed(self, request_id: RequestId, what: str, exc: Exception, line: bytes) -> None:
        # The request's text and the exception's (which often quotes it) came from a console
        # and may carry terminal escapes: the log shows them cleaned, traceback and all.
        log.error("daemon: %s failed on %s\n%s", what,
                  clean_line(line[:_EXCERPT].decode("utf-8", "replace")),
                  clean("".join(traceback.format_exception(exc))).rstrip())
        self.send({"id": request_id, "error": f"the daemon failed: {clean_line(repr(exc))}",
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

    def drop(self, *, flush: bool = False) -> None:
        """Let the console go: at once, or (flush) once what was written to it has gone."""
        if self._dropped:
            return
        self._dropped = True
        if self.watching:
            self.watching = False
            self.daemon.watching(self, False)
        for task in self._tasks:
            task.cancel()
        if flush:
            self.writer.close()  # reads no more; closes when the reply is out
        else:
            self.writer.transport.abort()


_EXCERPT = 200  # bytes of a request quoted in the log when it fails


def _peer(writer: asyncio.StreamWriter) -> str:
    """The process at the other end of a console's socket (the kernel says: SO_PEERCRED)."""
    sock = writer.get_extra_info("socket")
    try:
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET,
                                                          socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    except (OSError, AttributeError):
        return "attached console"
    return f"attached console (pid {pid}, uid {uid})"


class _Refused(Exception):
    """A request that does not fit the protocol: the console is told why."""

    def __init__(self, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.request_id = request_id


async def _answers(path: Path) -> bool:
    """Whether something listens on the socket at path (a live daemon, not a stale file)."""
    try:
        _, writer = await asyncio.open_unix_connection(path)
    except OSError:
        return False
    writer.close()
    return True


async def serve(factory: Factory, path: Path, *, run: bool = False, watch: bool = False,
                ready: Callable[[Daemon], None] | None = None,
                pid_file: Path | None = None) -> None:
    """Serve until cancelled (SIGTERM, ctrl+c): then stop the run, as a clean stop does, and
    close the store, so the next start resumes where this one was.

    `pid_file` is written once the socket answers and removed at the end (if it still names
    this process): `factory down` and `factory status` find the daemon by it."""
    daemon = Daemon(factory, path)
    await daemon.start()
    try:
        if pid_file is not None:
            _write_pid(pid_file)
        if run or watch:
            factory.start(watch=watch)
        if ready is not None:
            ready(daemon)
        await asyncio.Event().wait()
    finally:
        try:
            await daemon.close()
        finally:
            if pid_file is not None:
                _remove_pid(pid_file)


def _write_pid(path: Path) -> None:
    """The pid, whole or not at all (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def _remove_pid(path: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()
