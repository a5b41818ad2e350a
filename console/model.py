"""The console's copy of the factory's state, kept current from what its client sends.

What arrives is queued and applied on a timer (batching: 5,000 events a second must not
mean 5,000 redraws). In process that is events, applied with the engine's own projection
handlers; attached, it is the rows those handlers changed in the daemon, copied. Either way
the console's rows are exactly what the store holds. Widgets ask which rows changed since
their last look and redraw only those.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from agents.statuses import TASK_DONE, AgentStatus, QuestionStatus, QueueStatus, TaskStatus
from agents.store import projections
from agents.store.projections import State
from agents.store.store import StoredEvent
from agents.wire import BatchEnd, RowLines
from console.client import Feed, Snapshot

if TYPE_CHECKING:
    from agents.rows import Tables

_NEW = object()  # a row not counted yet


@dataclass
class Totals:
    agents_active: int = 0
    agents_total: int = 0
    tasks_done: int = 0
    tasks_total: int = 0
    tokens: int = 0
    usd: float = 0.0
    landed: int = 0
    rejected: int = 0
    awaiting: int = 0
    questions: int = 0
    run_status: str = "idle"

    @property
    def merge_rate(self) -> float | None:
        decided = self.landed + self.rejected
        return self.landed / decided if decided else None


# Tables whose rows are counted by status for the header, as the rows change (counting all
# of them each time took about a millisecond with 2,000 agents and tasks).
COUNTED = ("agents", "tasks", "queue", "questions")


@dataclass
class ViewModel:
    state: State
    last_id: int
    budget_tokens: int | None = None
    budget_usd: float | None = None
    sandbox: str = ""
    engine: str = ""
    pending: deque[StoredEvent] = field(default_factory=deque)
    changed: dict[str, set[str]] = field(
        default_factory=lambda: {t: set() for t in projections.TABLES})
    # The newest emission time of what was applied: for the lag the console shows.
    newest_ts: float = 0.0
    applied: int = 0
    last_lag: float = 0.0
    followed: str | None = None
    followed_events: list[StoredEvent] = field(default_factory=list)
    statuses: dict[str, Counter[str | None]] = field(
        default_factory=lambda: {t: Counter() for t in COUNTED})
    _seen: dict[str, dict[str, str | None]] = field(
        default_factory=lambda: {t: {} for t in COUNTED})

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> ViewModel:
        model = cls(snap.state(), snap.last_id, snap.budget_tokens, snap.budget_usd,
                    snap.sandbox, engine=snap.engine)
        for table in COUNTED:
            model._count(table, model.state.tables[table].values())
        return model

    def _count(self, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
        seen, counts = self._seen[table], self.statuses[table]
        key = projections.TABLES[table][0]
        for row in rows:
            status, was = row["status"], seen.get(row[key], _NEW)
            if status != was:
                if was is not _NEW:
                    counts[was] -= 1
                counts[status] += 1
                seen[row[key]] = status

    def receive(self, item: Feed) -> None:
        """Called for each committed batch, or part of one (cheap: the work happens in
        `apply`). Batches the snapshot already includes are dropped."""
        if isinstance(item, RowLines | BatchEnd):
            if item.last > self.last_id:
                self.pending.append(item)
            return
        if not item or item[-1].id <= self.last_id:
            return
        if item[0].id > self.last_id:
            self.pending.extend(item)
        else:  # the batch the snapshot was taken in the middle of
            self.pending.extend(e for e in item if e.id > self.last_id)

    def apply(self, budget: float | None = None) -> None:
        """Apply what is queued to the rows.

        With a budget (seconds), stop once it is spent and leave the rest queued, so that a
        burst of events never holds a key press up for longer than that."""
        out: list[StoredEvent] = []
        pending = self.pending
        handlers = projections.HANDLERS
        state = self.state
        deadline = time.perf_counter() + budget if budget is not None else None
        while pending:
            if deadline is not None and len(out) % 16 == 15 and \
                    time.perf_counter() > deadline:
                break
            item = pending.popleft()
            if item.__class__ is RowLines:  # a line of rows: check the time after each
                self._copy_rows(item)
                if deadline is not None and time.perf_counter() > deadline:
                    break
                continue
            if item.__class__ is BatchEnd:
                self.last_id = item.last
                self._caught_up(item.ts, item.count, item.followed)
                continue
            if item.id <= self.last_id:
                continue
            handler = handlers.get(item.event.kind)
            if handler is not None:
                handler(state, item.event, item.ts)
            self.last_id = item.id
            out.append(item)
        if out:
            for table, rows in state.take_dirty().items():
                self.changed[table].update(r[projections.TABLES[table][0]] for r in rows)
                if table in self.statuses:
                    self._count(table, rows)
            self._caught_up(out[-1].ts, len(out), out)

    def _copy_rows(self, lines: RowLines) -> None:
        """Rows the daemon's handlers changed: whole rows, or the columns that changed."""
        tables = self.state.tables
        for table, entries in lines.tables.items():
            rows, changed = tables[table], self.changed[table]
            columns, json_at = projections.TABLES[table][1], projections.JSON_AT[table]
            touched = []
            for entry in entries:
                key = entry[0]
                row = rows.get(key)
                if len(entry) == 2:  # a whole row
                    whole = projections.decode_row(table, entry[1])
                    if row is None:
                        row = rows[key] = whole
                    else:  # the panes may hold this very dict
                        row.update(whole)
                else:
                    if row is None:  # cannot happen: rows patched were in the snapshot
                        row = rows[key] = dict.fromkeys(columns)
                    for i in range(1, len(entry), 2):
                        at, value = entry[i], entry[i + 1]
                        if at in json_at and value is not None:
                            value = json.loads(value)
                        row[columns[at]] = value
                changed.add(key)
                touched.append(row)
            if table in self.statuses:
                self._count(table, touched)

    def _caught_up(self, ts: float, count: int, events: list[StoredEvent]) -> None:
        """Events up to one emitted at ts are applied: for the lag shown, and the timeline."""
        self.newest_ts = ts
        self.last_lag = max(0.0, time.time() - ts)
        self.applied += count
        if self.followed is not None:
            self.followed_events += [e for e in events if e.event.agent_id == self.followed]

    def follow_agent(self, agent_id: str | None) -> None:
        """Keep the events of this agent (the one whose timeline shows) as they are applied,
        so the timeline need not sift every batch."""
        self.followed = agent_id
        self.followed_events = []

    def take_followed(self) -> list[StoredEvent]:
        out, self.followed_events = self.followed_events, []
        return out

    def take_changed(self, table: str) -> set[str]:
        keys = self.changed[table]
        self.changed[table] = set()
        return keys

    @property
    def tables(self) -> Tables:
        """The rows by table, typed (`agents.rows`): the same dicts as `rows`."""
        return cast("Tables", self.state.tables)

    def rows(self, table: str) -> dict[str, dict[str, Any]]:
        return self.state.tables[table]

    def totals(self) -> Totals:
        t = Totals()
        agents, tasks = self.statuses["agents"], self.statuses["tasks"]
        tables = self.tables
        t.agents_total = len(tables["agents"])
        t.agents_active = agents[AgentStatus.RUNNING] + agents[AgentStatus.WAITING]
        t.tasks_total = len(tables["tasks"])
        t.tasks_done = sum(tasks[status] for status in TASK_DONE)
        t.landed, t.rejected = tasks[TaskStatus.LANDED], tasks[TaskStatus.REJECTED]
        t.awaiting = self.statuses["queue"][QueueStatus.AWAITING_APPROVAL]
        t.questions = self.statuses["questions"][QuestionStatus.PENDING]
        runs = sorted(tables["runs"].values(), key=lambda r: r["started"] or 0)
        if runs:
            t.run_status = runs[-1]["status"] or "idle"
            budget = tables["budgets"].get(f"run:{runs[-1]['id']}")
            if budget is not None:
                t.tokens, t.usd = budget["tokens"] or 0, budget["cost"] or 0.0
        return t

    def lag(self) -> float:
        """How late the newest applied event was on screen, at the last flush."""
        return self.last_lag
