"""Checks on a store, and the one repair.

`factory audit verify` recomputes the event log's hash chain and replays the log to compare
every projection row with what is stored (`verify`); `factory store rebuild` writes back the
rows that differ (`rebuild`). One pass over the log does both checks, each row parsed once
(in this release's shape: older rows are upcast, agents/store/upcast.py), so that a store of
100k events is audited in seconds.

They read with plain sqlite3: they are batch jobs, not part of the live engine. The audit
never writes: a store an older release wrote and this one has not migrated yet is compared
through a migrated copy in memory, so what it checks is what this release would read.
"""

from __future__ import annotations

import json
import sqlite3
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.events import Event
from agents.store import projections, upcast
from agents.store.schema import MIGRATIONS
from agents.store.store import (
    GENESIS,
    StoreError,
    _check_event_schema,
    _load_state,
    _migrate,
    chain_hash,
    version_column,
)
from agents.store.upcast import EventSchemaError

_MAX_VERSION = 2**32 - 1  # what the chain's four bytes can hold (store.schema_tag)


@dataclass
class AuditReport:
    events: int = 0
    problems: list[str] = field(default_factory=list)  # the chain's
    # Every projection value that differs from a replay of the log; None if not compared.
    drift: list[projections.Drift] | None = None

    @property
    def chain_ok(self) -> bool:
        return not self.problems

    @property
    def ok(self) -> bool:
        return not self.problems and not self.drift


@dataclass
class RebuildReport:
    events: int
    # table -> (rows added, rows changed, rows removed), for the tables that changed
    counts: dict[str, tuple[int, int, int]]
    drift: list[projections.Drift]  # what differed, so what was written


def _connect(path: Path) -> sqlite3.Connection:
    """Read-only, in autocommit mode: a reader opens its own transaction (`_snapshot`)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no store here")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)


def _snapshot(conn: sqlite3.Connection) -> None:
    """Read everything from one snapshot: a writer may commit while the audit reads (WAL
    lets it), and the log, the chain head and the tables must be of the same moment, or a
    batch committed in between reads as a truncated chain or as drift."""
    conn.execute("BEGIN")
    conn.execute("SELECT 1 FROM chain_head LIMIT 1").fetchall()  # the snapshot starts here


def _current(conn: sqlite3.Connection, path: Path) -> sqlite3.Connection:
    """The store as this release reads it: itself, or a migrated copy in memory when an
    older release wrote it and no writer of this one has opened it since (a projection
    table or column this release adds would otherwise be missing, not empty)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version >= len(MIGRATIONS):
        _migrate(conn, path)  # a newer store: the error that says so
        return conn
    copy = sqlite3.connect(":memory:", isolation_level=None)
    conn.backup(copy)
    conn.close()
    _migrate(copy, path)
    return copy


def _walk(conn: sqlite3.Connection, path: Path, report: AuditReport, max_problems: int,
          stop_early: bool) -> Iterator[tuple[float, Event]]:
    """Check the chain row by row, recording what is wrong in `report`, and yield every
    readable event (for the replay). With `stop_early`, stop at `max_problems`; otherwise
    go on reading (and stop recording) so that the replay sees the whole log."""
    capped = False

    def problem(text: str) -> None:
        nonlocal capped
        if capped:
            return
        report.problems.append(text)
        if len(report.problems) >= max_problems:
            report.problems.append("... stopping after too many problems")
            capped = True

    current = upcast.EVENT_SCHEMA
    prev, expected_id = GENESIS, 1
    cursor = conn.execute(
        f"SELECT id, ts, kind, spec_id, task_id, agent_id, {version_column(conn)}, data, "
        "prev_hash, hash FROM events ORDER BY id"
    )
    for row in cursor:
        event_id, ts, kind, spec_id, task_id, agent_id, version, data, prev_hash, digest = row
        report.events += 1
        if event_id != expected_id:
            problem(f"event {expected_id}..{event_id - 1}: missing (deleted rows)")
        if bytes(prev_hash) != prev:
            problem(f"event {event_id}: previous hash does not match")
        chained, prev, expected_id = prev, bytes(digest), event_id + 1
        if (not isinstance(version, int) or isinstance(version, bool)
                or not 1 <= version <= _MAX_VERSION):
            problem(f"event {event_id}: schema version {version!r} is not one Factory writes")
        else:
            raw = data.encode() if isinstance(data, str) else bytes(data)
            try:
                intact = chain_hash(chained, event_id, ts, raw, version) == prev
            except (struct.error, TypeError):  # a time edited into something else
                intact = False
            if not intact:
                problem(f"event {event_id}: content does not match its hash")
            try:
                event: Event | None = upcast.parse_stored(data, version)
            except EventSchemaError as exc:
                if intact and version > current:  # as written, by a newer release
                    raise EventSchemaError(f"{path}: event {event_id}: {exc}") from None
                if intact:
                    problem(f"event {event_id}: cannot be read: {exc}")
                event = None
            if intact and event is not None:
                # The indexed columns were read out of the JSON as written (not upcast).
                if version == current:
                    written = (event.kind, event.spec_id, event.task_id, event.agent_id)
                else:
                    doc = json.loads(data)
                    written = (doc.get("kind"), doc.get("spec_id"), doc.get("task_id"),
                               doc.get("agent_id"))
                if (kind, spec_id, task_id, agent_id) != written:
                    problem(f"event {event_id}: indexed columns were edited")
            if event is not None:
                yield ts, event
        if capped and stop_early:
            return
    head = conn.execute("SELECT last_id, last_hash FROM chain_head").fetchone()
    if head is None:
        if report.events:
            problem("chain head is missing")
    elif head[0] != expected_id - 1 or bytes(head[1]) != prev:
        problem(f"chain head says event {head[0]} is last, the log ends at {expected_id - 1}"
                " (rows deleted from the end, or the head was edited)")


def _check(conn: sqlite3.Connection, path: Path, max_problems: int
           ) -> tuple[AuditReport, projections.State, projections.State]:
    """The chain checked and the log replayed in one pass; the stored projections beside."""
    report = AuditReport()
    stored, _, _ = _load_state(conn)
    replayed = projections.replay(_walk(conn, path, report, max_problems, stop_early=False))
    report.drift = projections.drift(stored, replayed)
    return report, stored, replayed


def verify_chain(path: Path, max_problems: int = 20) -> AuditReport:
    """Recompute every row's hash; an edit, a deletion or a reordering breaks the chain."""
    report = AuditReport()
    conn = _connect(path)
    try:
        _snapshot(conn)
        for _ in _walk(conn, path, report, max_problems, stop_early=True):
            pass
    finally:
        conn.close()
    return report


def verify(path: Path, max_problems: int = 20) -> AuditReport:
    """The chain, and every projection value that differs from a replay of the log (what
    `factory audit verify` reports)."""
    conn = _current(_connect(path), path)
    try:
        _snapshot(conn)
        return _check(conn, path, max_problems)[0]
    finally:
        conn.close()


def compare_projections(path: Path) -> list[str]:
    """Rebuild every projection from the log and list where the stored tables differ."""
    return [str(d) for d in verify(path).drift or []]


def rebuild(path: Path) -> RebuildReport:
    """Recompute every projection from the log and write back the rows that differ, in one
    transaction (the log and the tables are read inside it, so no writer slips between).

    No live store may have it open for writing: its projections are in memory, and its next
    batch would write its rows over these (the command refuses while a run or a daemon holds
    the factory). Refuses a log whose chain is broken: projections rebuilt from an edited log
    would make the edit look consistent."""
    if not path.exists():
        raise StoreError(f"{path}: no store here")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        _migrate(conn, path)
        _check_event_schema(conn, path)
        conn.execute("BEGIN IMMEDIATE")
        try:
            report, _, replayed = _check(conn, path, max_problems=20)
            if report.problems:
                raise StoreError(
                    f"{path}: the event log's hash chain is broken ({report.problems[0]}; "
                    f"{len(report.problems)} problem(s), `factory audit verify` lists them): "
                    "not rebuilding projections from it")
            drift = report.drift or []
            counts = _write_back(conn, drift, replayed)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return RebuildReport(report.events, counts, drift)


def _write_back(conn: sqlite3.Connection, drift: list[projections.Drift],
                replayed: projections.State) -> dict[str, tuple[int, int, int]]:
    """Make the tables what the replay says, row by row where they differ."""
    by_row: dict[tuple[str, str], projections.Drift] = {}
    for d in drift:
        by_row.setdefault((d.table, d.key), d)
    counts: dict[str, list[int]] = {}
    for (table, key), d in by_row.items():
        pk, columns = projections.TABLES[table]
        tally = counts.setdefault(table, [0, 0, 0])
        row: dict[str, Any] | None = replayed.tables[table].get(key)
        if row is None:
            conn.execute(f"DELETE FROM {table} WHERE {pk} = ?", (key,))
            tally[2] += 1
            continue
        conn.execute(f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) "
                     f"VALUES ({', '.join('?' for _ in columns)})",
                     projections.encode_row(table, row))
        tally[0 if d.column is None else 1] += 1
    return {table: (a, c, r) for table, (a, c, r) in counts.items()}
