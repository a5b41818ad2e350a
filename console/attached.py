"""A `FactoryClient` over a daemon's unix socket (`factory console` when a daemon serves).

Requests go out as JSON lines and their replies come back by id; from the snapshot on, the
rows each committed batch changed arrive on the same connection (see `agents.wire`), a line
at a time, and are handed to the console's listeners. The daemon may go away: then every
call fails with a clear error and `on_lost` says so.
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


class DaemonGone(FactoryError):
    pass


class AttachedClient:
    def __init__(self, path: Path, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.path = path
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
        self._pump = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, path: Path) -> AttachedClient:
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=wire.LINE_LIMIT)
        except FileNotFoundError:
            raise FactoryError(f"{path}: no daemon listens here (start one with "
                               "`factory daemon`)") from None
        except ConnectionRefusedError:
            raise FactoryError(f"{path}: nothing answers on this socket (a daemon that "
                               "stopped uncleanly left it; start one with `factory daemon`)") \
                from None
        except OSError as exc:
            raise FactoryError(f"{path}: cannot attach: {exc.strerror or exc}") from None
        client = cls(path, reader, writer)
        try:
            hello = await client._call("hello")
        except BaseException:
            await client.close()
            raise
        if hello.get("protocol") != wire.PROTOCOL:
            await client.close()
            raise FactoryError(f"{path}: the daemon speaks protocol {hello.get('protocol')}, "
                               f"this console {wire.PROTOCOL}: run the same version of both")
        client.root = Path(hello["root"])
        return client

    # -- the connection ----------------------------------------------------------------------

    async def _read(self) -> None:
        reason = "the daemon closed the connection"
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                if line.startswith(wire.ROWS_START) or line.startswith(wire.END_START):
                    self._deliver(wire.decode_feed(line))
                    await asyncio.sleep(0)  # lines already read wait their turn behind keys
                elif line.startswith(NOTIFY_START):
                    if self.on_notify is not None:
                        self.on_notify(json.loads(line)["notify"])
                else:
                    self._reply(json.loads(line))
        except (ConnectionError, ValueError) as exc:
            reason = f"the connection to the daemon broke: {exc}"
        except asyncio.CancelledError:
            reason = "this console detached"
            raise
        finally:
            self._lose(reason)

    def _deliver(self, item: Feed) -> None:
        if not self._listeners:
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
                        sandbox=snap["sandbox"], engine=f"attached: daemon {snap['pid']}")

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
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
