"""What a daemon and its attached consoles say to each other: JSON lines on a unix socket.

A console sends requests, `{"id": 7, "op": "approve", "args": {"key": "..."}}`, and gets one
reply for each, `{"id": 7, "result": ...}` or `{"id": 7, "error": "...", "type": "..."}`,
in whatever order the work finishes. Once it has asked for a `snapshot`, the daemon also
sends it every committed batch of events: `{"first": 12, "ts": 1764.5, "events": [...]}`,
the events being the very JSON the log stores, so the daemon never encodes an event twice
and a console decodes a whole batch in one call.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from agents.events import EVENT_ADAPTER, Event
from agents.store.store import StoredEvent

PROTOCOL = 1
# Events are the bulk of the traffic; a console tells a batch from a reply by its start.
BATCH_START = b'{"first":'
# A line may hold a whole batch of events (a writer that lagged catches up in one).
LINE_LIMIT = 256 * 1024 * 1024


# A committed batch goes out as lines of at most this many events: a console decodes one
# line per turn of its loop, so a key press never waits for a whole large batch's decoding.
LINE_EVENTS = 32


def encode_batch(first: int, ts: float, data: bytes, sizes: list[int]) -> bytes:
    parts, at = [], 0
    for size in sizes:
        parts.append(data[at:at + size])
        at += size
    stamp = repr(ts).encode()
    return b"".join(
        b'{"first":%d,"ts":%s,"events":[%s]}\n' % (first + i, stamp,
                                                   b",".join(parts[i:i + LINE_EVENTS]))
        for i in range(0, len(parts), LINE_EVENTS))


class _Batch(BaseModel):
    first: int
    ts: float
    events: list[Event]


def decode_batch(line: bytes) -> list[StoredEvent]:
    batch = _Batch.model_validate_json(line)
    first, ts = batch.first, batch.ts
    return [StoredEvent(first + i, ts, e) for i, e in enumerate(batch.events)]


def encode_events(events: list[StoredEvent]) -> list[list[Any]]:
    """Events read from the log, for a reply (timelines: hundreds, not thousands a second)."""
    return [[e.id, e.ts, e.event.model_dump(mode="json")] for e in events]


def decode_events(rows: list[list[Any]]) -> list[StoredEvent]:
    return [StoredEvent(i, ts, EVENT_ADAPTER.validate_python(data)) for i, ts, data in rows]


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"
