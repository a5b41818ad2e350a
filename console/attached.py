"""A `FactoryClient` over a daemon's unix socket (`factory console` when a daemon serves).

Requests go out as JSON lines and their replies come back by id; from the snapshot on, the
rows each committed batch changed arrive on the same connection (see `agents.wire`), a line
at a time, and are handed to the console's listeners. The daemon may go away: then every
call fails with a clear error and `on_lost` says so. A console's client (`reconnect`) then
keeps trying the same socket, so a daemon that restarts (`factory down`, `factory up`) is
found again without restarting the console: it takes a fresh snapshot there, and
`on_reconnected` hands it over for the screen to catch up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents import wire
from agents.errors import FactoryError
from agents.notify import WIRE_START as NOTIFY_START
from console.client import Feed, Listener, Snapshot, SpecFile, load_commands

if TYPE_CHECKING:
    from agents.commands import Command
    from agents.specs import LintFinding
    from agents.store.store import StoredEvent


# Retrying a lost daemon's socket: soon at first (a restart takes a second or two), then
# every RETRY_MAX seconds for as long as the console is open.
RETRY_FIRST = 0.2
RETRY_MAX = 2.0


class DaemonGone(FactoryError):
    pass


class AttachedClient:
    def __init__(self, path: Path, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, observe: bool = False,
                 reconnect: bool = False) -> None:
        self.path = path
        self.observe = observe  # the daemon refuses this console's commands
        self.reconnect = reconnect
        self.root = path  # replaced by the daemon's answer to hello
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._listeners: list[Listener] = []
        # What arrives between the snapshot's reply and `follow`.
        self._early: list[Feed] = []
        self.run_error: BaseException | None = None
        self.lost: str | None = None
        self.on_lost: Callable[[str], None] | None = None
        # An event a person is wanted for (agents/notify.py): the console rings.
        self.on_notify: Callable[[dict[str, Any]], None] | None = None
        # Attached again after a loss (reconnect): the snapshot taken on the new connection.
        self.on_reconnected: Callable[[Snapshot], None] | None = None
        self.resyncing = False  # the feed waits in _early until the new snapshot is handed on
        self._resync: asyncio.Task[None] | None = None
        self._pump = asyncio.create_task(self._run())

    @classmethod
    async def connect(cls, path: Path, *, observe: bool = False,
                      reconnect: bool = False) -> AttachedClient:
        """`observe`: a read-only console (the daemon refuses its commands). `reconnect`: if
        the daemon goes away, keep trying its socket for as long as this client is open."""
        reader, writer = await _open(path)
        client = cls(path, reader, writer, observe=observe, reconnect=reconnect)
        try:
            await client._hello()
        except BaseException:
            client.reconnect = False
            await client.close()
            raise
        return client

    async def _hello(self) -> None:
        # Only an observer says so: a plain hello is the one every daemon of this protocol
        # takes.
        hello = await (self._call("hello", observe=True) if self.observe else
                       self._call("hello"))
        if hello.get("protocol") != wire.PROTOCOL:
            self.reconnect = False  # trying again would meet the same daemon
            raise FactoryError(f"{self.path}: the daemon speaks protocol "
                               f"{hello.get('protocol')}, this console {wire.PROTOCOL}: run "
                               "the same version of both")
        if self.observe and not hello.get("observing"):
            self.reconnect = False
            raise FactoryError(f"{self.path}: the daemon did not take this console as an "
                               "observer; not attaching")
        self.root = Path(hello["root"])

    # -- the connection ----------------------------------------------------------------------

    async def _run(self) -> None:
        """Read the connection to its end; then, for a console, find the daemon again."""
        while True:
            self._lose(await self._read())
            if not self.reconnect:
                return
            await self._reattach()

    async def _read(self) -> str:
        """Hand on what arrives until the connection ends; why it ended."""
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    return "the daemon closed the connection"
                if line.startswith(wire.ROWS_START) or line.startswith(wire.END_START):
                    self._deliver(wire.decode_feed(line))
                    await asyncio.sleep(0)  # lines already read wait their turn behind keys
                elif line.startswith(NOTIFY_START):
                    if self.on_notify is not None:
                        self.on_notify(json.loads(line)["notify"])
                else:
                    self._reply(json.loads(line))
        except (ConnectionError, ValueError) as exc:
            return f"the connection to the daemon broke: {exc}"
        except asyncio.CancelledError:
            self._lose("this console detached")
            raise

    async def _reattach(self) -> None:
        """Open the socket again, waiting RETRY_FIRST doubling to RETRY_MAX between tries,
        until a daemon answers; then say hello and catch up there (beside the reading)."""
        wait = RETRY_FIRST
        while True:
            await asyncio.sleep(wait)
            try:
                reader, writer = await _open(self.path)
            except FactoryError:
                wait = min(wait * 2, RETRY_MAX)
                continue
            break
        self._writer.close()
        self._reader, self._writer = reader, writer
        self._early = []  # rows of the old connection: the new snapshot replaces them
        self.resyncing = True
        self.lost = None
        self._resync = asyncio.create_task(self._catch_up())

    async def _catch_up(self) -> None:
        """On a new connection: hello, then a snapshot for the screen. If the daemon goes
        away again meanwhile, the reading finds out and tries again."""
        try:
            await self._hello()
            snap = await self.snapshot()
        except FactoryError as exc:
            if self.lost is None:  # a refusal, not a lost connection: stop here
                self.reconnect = False
                self._writer.close()
                self._lose(str(exc).removeprefix(f"{self.path}: "))
            return
        self.resyncing = False
        if self.on_reconnected is not None:
            self.on_reconnected(snap)  # the console follows its new model here
        early, self._early = self._early, []
        for item in early:
            self._deliver(item)

    def _deliver(self, item: Feed) -> None:
        if not self._listeners or self.resyncing:
            self._early.append(item)
            return
        for listener in list(self._listeners):
            listener(item)

    def _reply(self, message: dict[str, Any]) -> None:
        future = self._waiting.pop(message.get("id"), None)  # type: ignore[arg-type]
        if future is None or future.done():
            return
        if "error" in message:
            kind = message.get("type")
            text = message["error"] if kind == "factory" else f"daemon: {message['error']}"
            future.set_exception(FactoryError(text))
        else:
            future.set_result(message.get("result"))

    def _lose(self, reason: str) -> None:
        if self.lost is not None:
            return
        self.lost = reason
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(DaemonGone(f"{self.path}: {reason}"))
        self._waiting.clear()
        if self.on_lost is not None and reason != "this console detached":
            self.on_lost(reason)

    async def _call(self, op: str, **args: Any) -> Any:
        if self.lost is not None:
            raise DaemonGone(f"{self.path}: {self.lost}")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self._writer.write(wire.encode({"id": request_id, "op": op, "args": args}))
        return await future

    # -- the FactoryClient protocol ----------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        from agents.store.projections import TABLES

        snap = await self._call("snapshot")
        tables = {}
        for table, (key, columns) in TABLES.items():
            at = columns.index(key)
            tables[table] = {values[at]: dict(zip(columns, values, strict=True))
                             for values in snap["tables"].get(table, [])}
        return Snapshot(snap["last_id"], tables, running=bool(snap["running"]),
                        budget_tokens=snap["budget_tokens"], budget_usd=snap["budget_usd"],
                        sandbox=snap["sandbox"],
                        engine=f"{'observing' if self.observe else 'attached'}: daemon "
                               f"{snap['pid']}")

    def follow(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        early, self._early = self._early, []
        for item in early:
            listener(item)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    async def follow_agent(self, agent_id: str | None) -> None:
        """From now on the daemon sends this agent's events along with the rows."""
        await self._call("follow_agent", agent_id=agent_id)

    async def events(self, after: int = 0, limit: int = 1000,
                     agent_id: str | None = None) -> list[StoredEvent]:
        rows = await self._call("events", after=after, limit=limit, agent_id=agent_id)
        return wire.decode_events(rows)

    async def spec_files(self) -> list[SpecFile]:
        from agents.specs import LintFinding

        return [SpecFile(Path(f["path"]), f["text"],
                         [LintFinding.model_validate(x) for x in f["findings"]])
                for f in await self._call("spec_files")]

    async def command(self, command: Command) -> Any:
        """A person's command: its fields go to the daemon, which parses them with the same
        model (agents.commands) and hands it to the engine."""
        return await self._call(command.op, **command.model_dump(mode="json", exclude={"op"}))

    async def save_spec(self, path: Path, text: str) -> list[LintFinding]:
        from agents.specs import LintFinding

        found = await self.command(load_commands().SaveSpec(path=str(path), text=text))
        return [LintFinding.model_validate(x) for x in found]

    async def run(self, spec_ids: list[str] | None = None) -> None:
        await self.command(load_commands().StartRun(spec_ids=spec_ids))

    async def approve(self, key: str) -> None:
        await self.command(load_commands().Approve(key=key))

    async def answer(self, question_id: str, text: str) -> None:
        await self.command(load_commands().AnswerQuestion(question_id=question_id, text=text))

    async def reject(self, key: str, reason: str) -> None:
        await self.command(load_commands().Reject(key=key, reason=reason))

    async def move(self, key: str, delta: int) -> None:
        await self.command(load_commands().Move(key=key, delta=delta))

    async def retry(self, key: str) -> None:
        await self.command(load_commands().Retry(key=key))

    async def cancel_task(self, key: str) -> bool:
        return bool(await self.command(load_commands().CancelTask(key=key)))

    async def diff(self, key: str) -> str:
        return str(await self._call("diff", key=key))

    async def conflict_hunks(self, a: str, b: str) -> dict[str, str]:
        hunks: dict[str, str] = await self._call("conflict_hunks", a=a, b=b)
        return hunks

    async def close(self) -> None:
        """Detach: the daemon and its swarm go on."""
        self.reconnect = False
        if self._resync is not None:
            self._resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resync
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


async def _open(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_unix_connection(path, limit=wire.LINE_LIMIT)
    except FileNotFoundError:
        raise FactoryError(f"{path}: no daemon listens here (start one with "
                           "`factory daemon`)") from None
    except ConnectionRefusedError:
        raise FactoryError(f"{path}: nothing answers on this socket (a daemon that "
                           "stopped uncleanly left it; start one with `factory daemon`)") \
            from None
    except OSError as exc:
        raise FactoryError(f"{path}: cannot attach: {exc.strerror or exc}") from None
