"""Checks on a store: the hash chain (`factory audit verify`) and projections against the log.

Both read with plain sqlite3 in one pass: they are batch jobs, not part of the live engine.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agents.events import parse_event
from agents.store import projections
from agents.store.store import GENESIS, _load_state, chain_hash


@dataclass
class AuditReport:
    events: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _connect(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no store here")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def verify_chain(path: Path, max_problems: int = 20) -> AuditReport:
    """Recompute every row's hash; an edit, a deletion or a reordering breaks the chain."""
    report = AuditReport()
    conn = _connect(path)
    try:
        prev, expected_id = GENESIS, 1
        cursor = conn.execute(
            "SELECT id, ts, kind, spec_id, task_id, agent_id, data, prev_hash, hash "
            "FROM events ORDER BY id"
        )
        for row in cursor:
            event_id, ts, kind, spec_id, task_id, agent_id, data, prev_hash, digest = row
            report.events += 1
            if event_id != expected_id:
                report.problems.append(
                    f"event {expected_id}..{event_id - 1}: missing (deleted rows)"
                )
            if bytes(prev_hash) != prev:
                report.problems.append(f"event {event_id}: previous hash does not match")
            if chain_hash(prev, event_id, ts, data.encode()) != bytes(digest):
                report.problems.append(f"event {event_id}: content does not match its hash")
            else:
                event = parse_event(data)
                if (kind, spec_id, task_id, agent_id) != (
                    event.kind, event.spec_id, event.task_id, event.agent_id
                ):
                    report.problems.append(f"event {event_id}: indexed columns were edited")
            prev, expected_id = bytes(digest), event_id + 1
            if len(report.problems) >= max_problems:
                report.problems.append("... stopping after too many problems")
                return report
        head = conn.execute("SELECT last_id, last_hash FROM chain_head").fetchone()
        if head is None:
            if report.events:
                report.problems.append("chain head is missing")
        elif head[0] != expected_id - 1 or bytes(head[1]) != prev:
            report.problems.append(
                f"chain head says event {head[0]} is last, the log ends at {expected_id - 1}"
                " (rows deleted from the end, or the head was edited)"
            )
    finally:
        conn.close()
    return report


def _stream(conn: sqlite3.Connection) -> Iterator[tuple[float, object]]:
    for ts, data in conn.execute("SELECT ts, data FROM events ORDER BY id"):
        yield ts, parse_event(data)


def compare_projections(path: Path) -> list[str]:
    """Rebuild every projection from the log and list where the stored tables differ."""
    conn = _connect(path)
    try:
        stored, _, _ = _load_state(conn)
        rebuilt = projections.apply_all(projections.State(), _stream(conn))
    finally:
        conn.close()
    diffs: list[str] = []
    live, fresh = stored.comparable(), rebuilt.comparable()
    for table in projections.TABLES:
        for key in sorted(set(live[table]) | set(fresh[table])):
            a, b = live[table].get(key), fresh[table].get(key)
            if a is None or b is None:
                diffs.append(f"{table}[{key}]: only in {'log' if a is None else 'projection'}")
                continue
            for column in a:
                x, y = a[column], b[column]
                if isinstance(x, float) and isinstance(y, float) and abs(x - y) < 1e-9:
                    continue
                if x != y:
                    diffs.append(f"{table}[{key}].{column}: stored {x!r}, log says {y!r}")
    return diffs
