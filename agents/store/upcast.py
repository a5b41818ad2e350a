"""Event schema versions, and the upcasters that read an old event's shape as the current one.

The log is never rewritten: its hash chain covers every row's bytes as they were written, so
a store keeps the shapes of every release that wrote to it. Each row records the version of
the shape it was written in (the events table's `schema` column, migration 4), and every
reader (`Store.read_events`, `Store.messages`, so the daemon's replies to consoles too, and
the audit and `factory store rebuild` replays) goes through `parse_stored` or `load_stored`:
a row of the current version is parsed as it is, an older one is first turned into the
current shape, one version at a time, by the functions registered here.

How a release changes an event's shape (renames or drops a field, changes a type, splits a
kind):

1. bump `EVENT_SCHEMA` to N+1 (the one place that says which shape this release writes);
2. register the step from N, a function of the stored JSON dict that returns it as version
   N+1, touching only the kinds that changed (`renamed` covers the common case):

       UPCASTERS[N] = renamed("agent_turn", "message", "reply")

3. change the model in `agents/events.py`;
4. add a test that writes an N row (its JSON as the old release wrote it) and reads it back.

A released step is never edited, only followed by new ones: a store written by any release
must read the same forever. An upcaster that changes `kind`, `spec_id`, `task_id` or
`agent_id` must be matched by the SQL that filters on the events table's indexed columns
(those hold what the row was written with): `Store.messages` filters by kind.

A row newer than `EVENT_SCHEMA` was written by a later release: it is an error that says so
(`EventSchemaError`), never a guess at its meaning.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from agents.errors import FactoryError
from agents.events import EVENT_ADAPTER, Event, parse_event

# The shape of events this release writes. Version 1 is every shape up to and including
# release 4b8d6a9 (the stores written before events recorded a version).
EVENT_SCHEMA = 1

Doc = dict[str, Any]
Upcaster = Callable[[Doc], Doc]

# from version N -> the function that turns a version N event into version N+1.
UPCASTERS: dict[int, Upcaster] = {}


class EventSchemaError(FactoryError):
    """A stored event this release cannot read: written by a newer Factory, or damaged."""


def renamed(kind: str, old: str, new: str) -> Upcaster:
    """The step for a field of `kind` that was called `old` and is now `new`."""

    def step(doc: Doc) -> Doc:
        if doc.get("kind") != kind or old not in doc:
            return doc
        out = {k: v for k, v in doc.items() if k != old}
        out[new] = doc[old]
        return out

    step.__doc__ = f"{kind}: field {old!r} is now {new!r}"
    return step


def check_version(version: object) -> int:
    """The version of a stored row, or a clear error: one newer than this release is a store
    written by a newer Factory; one that is not a version at all is a damaged row."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise EventSchemaError(f"event schema {version!r} is not a version any Factory writes")
    if version > EVENT_SCHEMA:
        raise EventSchemaError(
            f"event schema {version} is newer than this Factory reads (up to {EVENT_SCHEMA}): "
            "this store was written by a newer Factory; upgrade Factory to read it")
    return version


def upcast(doc: Doc, version: int) -> Doc:
    """A stored event of `version` as the current shape (the dict is not changed in place
    by `renamed` steps; a hand-written step must not change it in place either)."""
    for step_from in range(check_version(version), EVENT_SCHEMA):
        step = UPCASTERS.get(step_from)
        if step is None:
            raise EventSchemaError(f"no upcaster from event schema {step_from} to "
                                   f"{step_from + 1} (agents/store/upcast.py)")
        doc = step(doc)
    return doc


def load_stored(data: str | bytes, version: int) -> Doc:
    """A stored row's JSON as a dict in the current shape (for readers that want dicts)."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise EventSchemaError(f"not JSON: {exc}") from None
    return doc if version == EVENT_SCHEMA else upcast(doc, version)


def parse_stored(data: str | bytes, version: int) -> Event:
    """A stored row as this release's event. The current version, by far the most common,
    goes straight to pydantic from the JSON text, as it did before rows had versions."""
    try:
        if version == EVENT_SCHEMA:
            return parse_event(data)
        return EVENT_ADAPTER.validate_python(upcast(json.loads(data), version))
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        shape = f"schema {version}" + (f", upcast to {EVENT_SCHEMA}"
                                        if version != EVENT_SCHEMA else "")
        raise EventSchemaError(f"not a valid event ({shape}): "
                               f"{where + ': ' if where else ''}{first.get('msg', exc)}"
                               ) from None
    except ValueError as exc:  # json.loads
        raise EventSchemaError(f"not JSON: {exc}") from None
