"""The one seam between the console and the engine.

A console holds a `FactoryClient` and nothing else of the engine: a snapshot of the current
state (projection rows and the id of the last event they include), a stream of events after
that id, reads of older events, and commands. The in-process client wraps a `Factory` on the
same event loop; an attached client (a daemon over a unix socket, JSON lines) implements
the same protocol.

The console keeps its own copy of the projection rows. In process, it applies the engine's
own projection handlers to the events it receives, so both sides derive state one way;
attached, the daemon sends the rows its handlers changed, and the console copies them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, cast

from agents.errors import FactoryError

if TYPE_CHECKING:  # the engine's modules load when a client connects, after the first frame
    from agents.commands import Command
    from agents.rows import Tables
    from agents.specs import LintFinding
    from agents.store.projections import Row, State
    from agents.store.store import StoredEvent
    from agents.wire import BatchEnd, RowLines

# What a client hands its listeners: committed batches of events (in process), or the rows
# they changed (attached; see `agents.wire`).
Feed: TypeAlias = "list[StoredEvent] | RowLines | BatchEnd"
Listener = Callable[[Feed], None]


@dataclass
class Snapshot:
    """Every projection row as of event `last_id`; later events arrive through `follow`.
    Rows are plain dicts (as the store and the wire have them), typed by `agents.rows`."""

    last_id: int
    tables: Tables
    running: bool = False
    budget_tokens: int | None = None
    budget_usd: float | None = None
    sandbox: str = ""
    # Where the engine runs, for the header: "" in this process, else "attached: daemon 42".
    engine: str = ""

    def state(self) -> State:
        from agents.store.projections import State

        state = State()
        for table, rows in self.tables.items():
            state.tables[table].update(cast("dict[str, Row]", rows))
        return state


@dataclass
class SpecFile:
    path: Path
    text: str
    findings: list[LintFinding] = field(default_factory=list)


def load_commands() -> Any:
    """agents.commands, imported when a command is first given (not on the console's start
    path, where the engine's modules must not load before the first frame)."""
    from agents import commands

    return commands


class FactoryClient(Protocol):
    root: Path

    async def snapshot(self) -> Snapshot: ...

    def follow(self, listener: Listener) -> Callable[[], None]: ...

    async def follow_agent(self, agent_id: str | None) -> None:
        """The agent whose events the console wants as they come (its timeline shows)."""

    async def events(self, after: int = 0, limit: int = 1000,
                     agent_id: str | None = None) -> list[StoredEvent]: ...

    async def spec_files(self) -> list[SpecFile]: ...

    async def save_spec(self, path: Path, text: str) -> list[LintFinding]: ...

    async def run(self, spec_ids: list[str] | None = None) -> None: ...

    async def approve(self, key: str) -> None: ...

    async def answer(self, question_id: str, text: str) -> None: ...

    async def reject(self, key: str, reason: str) -> None: ...

    async def move(self, key: str, delta: int) -> None: ...

    async def retry(self, key: str) -> None: ...

    async def cancel_task(self, key: str) -> bool: ...

    async def diff(self, key: str) -> str: ...

    async def conflict_hunks(self, a: str, b: str) -> dict[str, str]: ...


class InProcessClient:
    """A client over a `Factory` living on the console's own event loop."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        # A console is a person watching: agents' questions wait for them while it is open.
        factory.supervise(True)
        self.root: Path = factory.root
        self._daemon: Any = None

    async def serve(self, path: Path) -> bool:
        """Let other consoles attach to this engine while it is open (and keep a headless
        `factory run` from opening a second writer beside it). False when it cannot: the
        socket path is too long, or something already serves there."""
        from agents.daemon import Daemon

        daemon = Daemon(self.factory, path)
        try:
            await daemon.start()
        except (FactoryError, OSError):
            return False
        self._daemon = daemon
        return True

    async def snapshot(self) -> Snapshot:
        from agents.store.projections import TABLES

        store = self.factory.store
        # Rows are replaced, never mutated in place for lists, so a shallow copy per row
        # is a consistent picture as of the last prepared event.
        tables = cast("Tables", {t: {k: dict(r) for k, r in store.state.tables[t].items()}
                                 for t in TABLES})
        budgets = self.factory.config.budgets.run
        return Snapshot(store.prepared_id, tables, running=self.running,
                        budget_tokens=budgets.tokens, budget_usd=budgets.usd,
                        sandbox=self.factory.backend.name)

    def follow(self, listener: Listener) -> Callable[[], None]:
        return self.factory.store.subscribe(listener)

    async def follow_agent(self, agent_id: str | None) -> None:
        """Every event reaches this console's listeners anyway."""

    async def events(self, after: int = 0, limit: int = 1000,
                     agent_id: str | None = None) -> list[StoredEvent]:
        return await self.factory.store.read_events(after, limit, agent_id)

    async def spec_files(self) -> list[SpecFile]:
        return [SpecFile(*found) for found in await self.factory.spec_files()]

    async def save_spec(self, path: Path, text: str) -> list[LintFinding]:
        findings: list[LintFinding] = await self.command(load_commands().SaveSpec(path=str(path),
                                                                      text=text))
        return findings

    @property
    def running(self) -> bool:
        return bool(self.factory.background_running)

    @property
    def run_error(self) -> BaseException | None:
        error: BaseException | None = self.factory.run_error
        return error

    async def command(self, command: Command) -> Any:
        """A person's command, carried out by the engine on this loop."""
        return await self.factory.execute(command, by="console")

    async def run(self, spec_ids: list[str] | None = None) -> None:
        """Start a run in the background; its progress arrives as events."""
        await self.command(load_commands().StartRun(spec_ids=spec_ids))

    async def wait_run(self) -> None:
        await self.factory.wait_background()

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
        text: str = await self.factory.diff(key)
        return text

    async def conflict_hunks(self, a: str, b: str) -> dict[str, str]:
        hunks: dict[str, str] = await self.factory.conflict_hunks(a, b)
        return hunks

    async def close(self) -> None:
        if self._daemon is not None:
            await self._daemon.close()
        self.factory.supervise(False)
        await self.factory.close()
