"""What a daemon and its attached consoles say to each other: JSON lines on a unix socket.

A console sends requests, `{"id": 7, "op": "approve", "args": {"key": "..."}}`, and gets one
reply for each, `{"id": 7, "result": ...}` or `{"id": 7, "error": "...", "type": "..."}`,
in whatever order the work finishes.

Once it has asked for a `snapshot`, the daemon also sends it every committed batch, not as
its events but as the projection rows they changed: the daemon has already applied them, so
a console only copies values into its rows: less than half the work of decoding and
applying thousands of events a second (3.5 µs an event against 8), work that competed with
key presses. A batch is

- lines of changed rows, `{"rows": {"agents": [entry, ...], ...}, "last": 812}`, where an
  entry is `[key, [every value]]` for a row the console has not been sent yet, or
  `[key, i, value, j, value, ...]` for the columns (by index in `TABLES`) that changed,
  values as the store keeps them (JSON columns as JSON text);
- then its end, `{"end": 812, "first": 701, "ts": 1764.5, "events": [[id, event], ...]}`,
  carrying the events of the one agent whose timeline that console shows
  (`follow_agent`), if any.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from agents.events import EVENT_ADAPTER
from agents.store.projections import TABLES
from agents.store.store import Committed, StoredEvent

PROTOCOL = 2
# A console tells the feed from replies by a line's start.
ROWS_START = b'{"rows":'
END_START = b'{"end":'
# A line may hold a large reply (a snapshot of thousands of rows).
LINE_LIMIT = 256 * 1024 * 1024
# A batch's rows go out as lines of at most this many: a console copies one line per turn of
# its loop, so a key press never waits for a whole large batch.
LINE_ROWS = 48

_KEY_AT = {table: columns.index(key) for table, (key, columns) in TABLES.items()}


@dataclass(slots=True)
class RowLines:
    """Rows changed by a batch (part of one), as patches: see the module's docstring."""

    tables: dict[str, list[list[Any]]]
    last: int


@dataclass(slots=True)
class BatchEnd:
    first: int
    last: int
    ts: float
    followed: list[StoredEvent]  # the events of the agent the console follows

    @property
    def count(self) -> int:
        return self.last - self.first + 1


class RowFeed:
    """Turns committed batches into row patches, once for every console.

    A patch names only the columns that changed since the value last sent, so it must start
    from what consoles already hold: `restart` when the first console begins to watch (it
    holds a snapshot; every row is sent whole the first time it changes after that). Later
    consoles' snapshots are newer than the values sent, and the batches still in flight
    when they were taken are forwarded to them too, so they converge on the same rows."""

    def __init__(self) -> None:
        self.sent: dict[str, dict[Any, tuple[Any, ...]]] = {t: {} for t in TABLES}

    def restart(self) -> None:
        for rows in self.sent.values():
            rows.clear()

    def lines(self, batch: Committed) -> list[bytes]:
        entries: list[tuple[str, list[Any]]] = []
        for table, rows in batch.rows.items():
            sent, key_at = self.sent[table], _KEY_AT[table]
            for new in rows:
                key = new[key_at]
                old = sent.get(key)
                sent[key] = new
                if old is None:
                    entries.append((table, [key, list(new)]))
                    continue
                entry: list[Any] = [key]
                for i, (was, now) in enumerate(zip(old, new, strict=True)):
                    if was != now:
                        entry += (i, now)
                if len(entry) > 1:
                    entries.append((table, entry))
        out = []
        for at in range(0, len(entries), LINE_ROWS):
            tables: dict[str, list[list[Any]]] = {}
            for table, entry in entries[at:at + LINE_ROWS]:
                tables.setdefault(table, []).append(entry)
            out.append(encode({"rows": tables, "last": batch.last_id}))
        return out


def batch_end(batch: Committed, agent_id: str | None) -> bytes:
    """The end of a batch for a console following agent_id, with that agent's events."""
    events = []
    if agent_id is not None:
        data, first = batch.data, batch.first_id
        for i, (event, end, size) in enumerate(zip(batch.events, accumulate(batch.sizes),
                                                   batch.sizes, strict=True)):
            if event.agent_id == agent_id:
                events.append(b"[%d,%s]" % (first + i, data[end - size:end]))
    return b'{"end":%d,"first":%d,"ts":%s,"events":[%s]}\n' % (
        batch.last_id, batch.first_id, repr(batch.ts).encode(), b",".join(events))


def decode_feed(line: bytes) -> RowLines | BatchEnd:
    message = json.loads(line)
    if "rows" in message:
        return RowLines(message["rows"], message["last"])
    ts = message["ts"]
    return BatchEnd(message["first"], message["end"], ts,
                    [StoredEvent(i, ts, EVENT_ADAPTER.validate_python(data))
                     for i, data in message["events"]])


def encode_events(events: list[StoredEvent]) -> list[list[Any]]:
    """Events read from the log, for a reply (timelines: hundreds, not thousands a second)."""
    return [[e.id, e.ts, e.event.model_dump(mode="json")] for e in events]


def decode_events(rows: list[list[Any]]) -> list[StoredEvent]:
    return [StoredEvent(i, ts, EVENT_ADAPTER.validate_python(data)) for i, ts, data in rows]


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"
