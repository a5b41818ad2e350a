"""The one writer of Factory's SQLite store.

Appends are queued, prepared on the event loop a slice at a time (serialised, hash-chained,
applied to the in-memory projections) and committed in batches on the connection's thread:
each batch inserts its events, the projection rows it changed and the new chain head, all in
one transaction, and only then are its appends acknowledged. Opening a store reads the
projection tables and the chain head; it never replays the log.

Each row records the event schema version it was written in (`upcast.EVENT_SCHEMA`); reading
back turns older rows into this release's shapes (agents/store/upcast.py) and refuses rows a
newer release wrote, with an error that says so.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import sqlite3
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

import aiosqlite

from agents.errors import FactoryError
from agents.events import Event
from agents.private import private_file
from agents.store import projections, upcast
from agents.store.schema import MIGRATIONS
from agents.store.upcast import EventSchemaError

GENESIS = bytes(32)
# Appends are prepared (serialised, hashed, applied to the projections) on the event loop a
# slice at a time, so that a flood of them never holds the loop for long; the slices
# prepared while the database thread is busy go into one transaction, up to MAX_BATCH
# events or MAX_BATCH_BYTES of their JSON. The busier the writer, the larger its
# transactions: a batch's projection rows are encoded and written once, however many of its
# events touched them.
MAX_SLICE = 2000
MAX_BATCH = 50000
MAX_BATCH_BYTES = 64 << 20
MAX_QUEUED = 2
WRITER_CACHE_KIB = 64 * 1024
WAL_CHECKPOINT_PAGES = 8192
# A batch this small (an agent's step: its turn and its tools' results) is written on the
# event loop's own thread, through a second connection, whenever nothing is queued for the
# database thread. Handing it over cost more than writing it: the trip to the thread and
# back, and a wait for the GIL on every statement while the loop ran something else, left
# the agent that awaited its step waiting about three times as long as the write took.
# Larger batches (a busy swarm's) still go to the thread: written inline, they held a
# console sharing the loop long enough to slow its key presses.
INLINE_MAX_EVENTS = 16
INLINE_MAX_BYTES = 256 << 10
# That connection never checkpoints (copying the WAL into the database fsyncs, which must not
# hold the loop); after this many of its commits the database thread runs a passive one.
INLINE_CHECKPOINT_COMMITS = 1000
# A log that starts over is cut back to this size; it is overwritten, not regrown, below it.
WAL_SIZE_LIMIT = WAL_CHECKPOINT_PAGES * 4096
_PACK = struct.Struct("<qd")
# A batch continues the chain exactly where the last committed one ended; if an earlier
# batch failed (or another writer got there first), this one must not commit on top of it.
_MOVE_HEAD = "UPDATE chain_head SET last_id = ?, last_hash = ? WHERE one = 1 AND last_id = ?"
_FIRST_HEAD = "INSERT OR IGNORE INTO chain_head (one, last_id, last_hash) VALUES (1, ?, ?)"
_SCHEMA_TAG = struct.Struct("<I")

_INSERT_EVENT = (
    "INSERT INTO events (id, ts, kind, spec_id, task_id, agent_id, data, prev_hash, hash, "
    "schema) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# A whole batch of events in one statement, so that SQLite inserts every row in a single
# sqlite3_step with the GIL released. executemany takes the GIL back after every row, and
# while the event loop was busy preparing the next batch each of those waits could last the
# interpreter's switch interval: the two threads took turns instead of overlapping. Every
# value travels exactly, as bytes: ids count up from ?1, ?2 is the batch's time, ?3 holds the
# previous row's hash and then each row's own (32 bytes each), ?4 every row's JSON back to
# back, ?5 a JSON array of their lengths, ?6 the batch's event schema version. SQLite reads the
# indexed columns out of each row's JSON, the very bytes that are hashed, so Python builds
# nothing per row for them.
_INSERT_EVENTS = (
    "INSERT INTO events (id, ts, kind, spec_id, task_id, agent_id, data, prev_hash, hash, "
    "schema) "
    "SELECT ?1 + n, ?2, json_extract(d, '$.kind'), json_extract(d, '$.spec_id'), "
    "json_extract(d, '$.task_id'), json_extract(d, '$.agent_id'), d, "
    "substr(?3, 32 * n + 1, 32), substr(?3, 32 * n + 33, 32), ?6 "
    "FROM (SELECT key AS n, CAST(substr(?4, sum(value) OVER (ORDER BY key) - value + 1, value) "
    "AS TEXT) AS d FROM json_each(?5))"
)
# SQLite's JSON functions end a string at an escaped NUL (seen in 3.40), so a batch whose
# JSON holds one goes row by row. So does one too large for a single value.
_ESCAPED_NUL = b"\\u0000"
_BULK_MAX_BYTES = 256 << 20
# Projection rows go in multi-row statements rather than through executemany. Each statement
# costs the database thread one wait for the GIL (it lets go while SQLite works), and while
# the loop is busy preparing the next batch that wait lasts the interpreter's switch interval:
# executemany paid it for every row. A table's rows go in statements of MAX_UPSERT_ROWS (fewer
# if SQLite allows fewer parameters), the last one rounded up to a power of two, so that few
# distinct statements are ever prepared.
MAX_UPSERT_ROWS = 1024
_UPSERT_HEAD = {
    table: (f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES ",
            f"({', '.join('?' for _ in cols)})")
    for table, (_, cols) in projections.TABLES.items()
}


@functools.cache
def _upsert_sql(table: str, rows: int) -> str:
    head, row = _UPSERT_HEAD[table]
    return head + ", ".join([row] * rows)


def _upsert(conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]], most: int) -> None:
    """Write a table's changed rows, at most `most` per statement."""
    done, total = 0, len(rows)
    while done < total:
        n = min(most, total - done)
        size = 1 << (n - 1).bit_length()
        chunk = rows[done:done + n]
        values = [v for row in chunk for v in row]
        # Fill the statement by repeating the last row: replacing a row with itself changes
        # nothing, and one statement of the next size up costs less than several smaller.
        values.extend(chunk[-1] * (size - n))
        conn.execute(_upsert_sql(table, size), values)
        done += n


class StoreError(FactoryError):
    pass


# Copying a fresh hash object is cheaper than making one: with OpenSSL 3, hashlib.sha256()
# looks the algorithm up again on every call (Python 3.11), and every event is hashed.
_SHA256 = hashlib.sha256()


def schema_tag(schema: int) -> bytes:
    """What a row's event schema version adds to its hash.

    Nothing for version 1, so that every row written before rows had versions (all of them
    version 1) verifies exactly as it did; the version's four bytes for any other. Either way
    the version is covered by the chain: it picks the form of the hash the row must match,
    so a version edited from 1 to 2 or back breaks the chain as an edited JSON does. Later
    releases keep this form for every version, so any release can verify any store's chain.
    """
    return b"" if schema == 1 else _SCHEMA_TAG.pack(schema)


def chain_hash(prev: bytes, event_id: int, ts: float, data: bytes, schema: int = 1) -> bytes:
    """The hash of one row: what makes an edited or removed row detectable."""
    digest = _SHA256.copy()
    digest.update(prev + _PACK.pack(event_id, ts) + schema_tag(schema) + data)
    return digest.digest()


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    ts: float
    event: Event


Listener = Callable[[list[StoredEvent]], None]


@dataclass(frozen=True, slots=True)
class Committed:
    """A committed batch as it was stored: what a daemon passes on to its consoles without
    encoding any event or row again."""

    first_id: int
    ts: float
    events: list[Event]
    data: bytes  # the events' JSON back to back
    sizes: list[int]  # each event's share of data
    rows: dict[str, list[tuple[Any, ...]]]  # every projection row it changed, as stored

    @property
    def last_id(self) -> int:
        return self.first_id + len(self.sizes) - 1


RawListener = Callable[[Committed], None]


@dataclass(frozen=True, slots=True)
class _EventRows:
    """One batch's event rows: _INSERT_EVENTS' parameters, and the events for the slow path."""

    first_id: int
    ts: float
    events: list[Event]
    hashes: bytes
    data: bytes
    sizes: list[int]
    schema: int

    def bulk(self) -> bool:
        return _ESCAPED_NUL not in self.data and len(self.data) <= _BULK_MAX_BYTES

    def params(self) -> tuple[Any, ...]:
        return (self.first_id, self.ts, self.hashes, self.data, json.dumps(self.sizes),
                self.schema)

    def rows(self) -> list[tuple[Any, ...]]:
        """The same rows as executemany parameters."""
        hashes, data, ts, out = self.hashes, self.data, self.ts, []
        for i, (e, end, size) in enumerate(zip(self.events, accumulate(self.sizes), self.sizes,
                                               strict=True)):
            out.append((self.first_id + i, ts, e.kind, e.spec_id, e.task_id, e.agent_id,
                        data[end - size:end].decode(), hashes[32 * i:32 * i + 32],
                        hashes[32 * i + 32:32 * i + 64], self.schema))
        return out


@dataclass
class _Batch:
    """One transaction: slices of appends prepared on the loop, then written in one go.

    Its events share one time, the batch's opening: with one time, they go in one statement,
    and every statement costs the database thread a wait for the GIL while the loop is busy.
    """

    first_id: int
    ts: float
    # The event schema its rows are written (and hashed) in: read once, when it opens.
    schema: int = 1
    items: list[tuple[list[Event], asyncio.Future[int]]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # The previous row's hash and then each event's; each event's JSON.
    hashes: list[bytes] = field(default_factory=list)
    datas: list[bytes] = field(default_factory=list)
    size: int = 0
    stored: list[StoredEvent] = field(default_factory=list)
    # Set when the batch is closed and handed to the database thread.
    rows: _EventRows | None = None
    dirty: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    last_id: int = 0
    last_hash: bytes = GENESIS
    write: asyncio.Future[None] | None = None

    @property
    def full(self) -> bool:
        return len(self.events) >= MAX_BATCH or self.size >= MAX_BATCH_BYTES

    @property
    def small(self) -> bool:
        return len(self.events) <= INLINE_MAX_EVENTS and self.size <= INLINE_MAX_BYTES


def _inline_connection(path: Path) -> sqlite3.Connection:
    """The loop thread's own connection to the store, for small batches (INLINE_MAX_EVENTS)."""
    conn = sqlite3.connect(path, isolation_level=None)
    # Never wait on the loop for another process's write lock: the batch goes to the thread.
    conn.execute("PRAGMA busy_timeout = 0")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    return conn


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY


def _fetch_all(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> list[Any]:
    """Every row of a query, its statement reset before the thread runs anything else."""
    cur = conn.execute(sql, args)
    try:
        return cur.fetchall()
    finally:
        cur.close()


def _checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the WAL into the database without waiting for (or holding up) any writer.

    Writes wait behind it on the thread (see `_submit`): SQLite starts the log over only for
    a writer that begins with all of it copied, and steps committing on the loop meanwhile
    kept the log from ever being all copied, so it grew by every commit for the life of the
    store (hundreds of MB in a long run), each commit extending the file.
    """
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(
            f"{path}: store schema version {version} is newer than this Factory understands "
            f"({len(MIGRATIONS)}); upgrade Factory"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")


def _check_event_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse to write after rows a newer release wrote: this release could not read them
    back (an agent resumes from its events), and its own rows would go after a newer shape.

    The last row is enough: every writer refuses a log whose last row is newer than it
    writes, so versions never go down along the log and the last row's is the highest."""
    row = conn.execute("SELECT schema FROM events ORDER BY id DESC LIMIT 1").fetchone()
    if row is not None and isinstance(row[0], int) and row[0] > upcast.EVENT_SCHEMA:
        raise StoreError(
            f"{path}: this store was written by a newer Factory (event schema {row[0]}; this "
            f"one writes {upcast.EVENT_SCHEMA}): upgrade Factory")


def version_column(conn: sqlite3.Connection) -> str:
    """What to select for each row's event schema version: the column, or a constant 1 in a
    store not migrated yet (a reader of a store only ever opened by an older release: its
    rows are all version 1, and a read-only open does not migrate)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    return "schema" if "schema" in columns else "1"


def _load_state(conn: sqlite3.Connection) -> tuple[projections.State, int, bytes]:
    state = projections.State()
    for table, (pk, cols) in projections.TABLES.items():
        rows = state.tables[table]
        for values in conn.execute(f"SELECT {', '.join(cols)} FROM {table}"):
            row = projections.decode_row(table, values)
            rows[row[pk]] = row
    state.reindex()
    running = [r for r in state.tables["runs"].values() if r["status"] == "running"]
    if running:
        state.current_run = max(running, key=lambda r: r["started"] or 0)["id"]
    head = conn.execute("SELECT last_id, last_hash FROM chain_head WHERE one = 1").fetchone()
    last_id, last_hash = (head[0], bytes(head[1])) if head else (0, GENESIS)
    return state, last_id, last_hash


def _upsert_rows(max_parameters: int) -> dict[str, int]:
    """Rows per upsert statement, by table: a power of two within SQLite's parameter limit
    (32766 by default since 3.32, 999 before)."""
    out = {}
    for table, (_, cols) in projections.TABLES.items():
        fits = max(1, min(MAX_UPSERT_ROWS, max_parameters // len(cols)))
        out[table] = 1 << (fits.bit_length() - 1)
    return out


def _can_bulk_insert(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute(f"EXPLAIN {_INSERT_EVENTS}", (None,) * 6).fetchall()
    except sqlite3.OperationalError:
        return False
    return True


def _setup(
    conn: sqlite3.Connection, path: Path, readonly: bool
) -> tuple[projections.State, int, bytes, bool, dict[str, int], str]:
    """Everything opening needs from the database, in one trip to its thread."""
    conn.execute("PRAGMA busy_timeout = 10000")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        # The writer's working set: a batch's new pages plus the index pages it touches.
        # With SQLite's default 2 MiB a batch of a few MiB spills to the WAL mid-transaction
        # and reads pages back, writing about twice the data and reading as much again.
        # Pages are allocated as used, so a small store never takes all of it.
        conn.execute(f"PRAGMA cache_size = {-WRITER_CACHE_KIB}")
        # Checkpoint (copy the WAL into the database, two fsyncs) every ~32 MiB of WAL
        # rather than SQLite's ~4 MiB, which with large batches was after nearly every one.
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        _migrate(conn, path)
        _check_event_schema(conn, path)
    state, last_id, last_hash = _load_state(conn)
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return (state, last_id, last_hash, _can_bulk_insert(conn), _upsert_rows(limit),
            version_column(conn))


class Store:
    """Append events, read them back, and hold the current projections in memory."""

    def __init__(
        self,
        path: Path,
        conn: aiosqlite.Connection,
        state: projections.State,
        last_id: int,
        last_hash: bytes,
        readonly: bool,
    ) -> None:
        self.path = path
        self._conn = conn
        self.state = state
        self.last_id = last_id
        self._last_hash = last_hash
        # Where the next prepared batch continues the chain (ahead of last_id while writing).
        self._prepared_id, self._prepared_hash = last_id, last_hash
        self.readonly = readonly
        self._pending: deque[tuple[list[Event], asyncio.Future[int]]] = deque()
        self._listeners: list[Listener] = []
        self._raw_listeners: list[RawListener] = []
        self._closed = False
        # Batches handed to the database thread and not finished yet, in order. Up to
        # MAX_QUEUED are handed over at once so that the thread goes from one commit to the
        # next without waiting for the event loop; meanwhile the slices prepared gather in
        # the open batch (group commit).
        self._queued: list[_Batch] = []
        self._open: _Batch | None = None
        self._reloading = False
        self._kick_scheduled = False
        self._recovery: asyncio.Future[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        # The loop thread's connection for small batches (None when read-only), its commits
        # since the last checkpoint, and that checkpoint while it runs on the thread.
        self._inline: sqlite3.Connection | None = None
        self._inline_commits = 0
        self._checkpoint: asyncio.Future[Any] | None = None
        # Whether this SQLite can run _INSERT_EVENTS (JSON functions, window functions);
        # without them batches go row by row.
        self._bulk = True
        # Rows per upsert statement, by table: a power of two within SQLite's parameter limit.
        self._upsert_rows = _upsert_rows(999)
        # What reads select as each row's event schema version (version_column).
        self._version_col = "schema"

    @classmethod
    async def open(cls, path: Path | str, *, readonly: bool = False) -> Store:
        path = Path(path)
        if readonly:
            if not path.exists():
                raise StoreError(f"{path}: no store here yet (run `factory run` first)")
            pending = aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            private_file(path)  # 0600 before SQLite writes a byte (its -wal follows it)
            pending = aiosqlite.connect(path, isolation_level=None)
        # A store left open by an error must not keep the process alive at exit; every
        # committed batch is already durable, so nothing is lost by not joining the thread.
        thread = getattr(pending, "_thread", None)
        if thread is not None:
            thread.daemon = True
        conn = await pending
        try:
            state, last_id, last_hash, bulk, upsert_rows, version_col = await conn._execute(  # type: ignore[attr-defined]
                _setup, conn._conn, path, readonly  # type: ignore[attr-defined]
            )
        except sqlite3.DatabaseError as exc:
            await conn.close()
            raise StoreError(f"{path}: not a Factory store or damaged: {exc}") from exc
        except BaseException:
            await conn.close()
            raise
        store = cls(path, conn, state, last_id, last_hash, readonly)
        store._bulk, store._upsert_rows, store._version_col = bulk, upsert_rows, version_col
        if not readonly:
            try:
                store._inline = _inline_connection(path)
            except BaseException:
                await conn.close()
                raise
        return store

    # -- writing ---------------------------------------------------------------------------

    async def append(self, *events: Event) -> int:
        """Queue events and wait until they are committed; returns the last event's id."""
        return await self.append_many(events)

    def append_many(self, events: Iterable[Event]) -> asyncio.Future[int]:
        """Queue events; the future resolves with the last id once they are committed."""
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        if self._closed:
            raise StoreError(f"{self.path}: store is closed")
        loop = asyncio.get_running_loop()
        items = list(events)
        # Large appends go in slice-sized chunks, prepared one turn of the loop at a time.
        futures: list[asyncio.Future[int]] = []
        for start in range(0, max(len(items), 1), MAX_SLICE):
            fut: asyncio.Future[int] = loop.create_future()
            self._pending.append((items[start:start + MAX_SLICE], fut))
            futures.append(fut)
        self._idle.clear()
        # Kick when the caller next yields: appends made until then (a model turn and the
        # results of the tools it called) share one transaction.
        self._schedule_kick()
        if len(futures) == 1:
            return futures[0]
        combined: asyncio.Future[int] = loop.create_future()

        def _done(_: object) -> None:
            if combined.done() or not all(f.done() for f in futures):
                return
            errors = [f.exception() for f in futures if f.exception() is not None]
            if errors:
                combined.set_exception(errors[0])  # type: ignore[arg-type]
            else:
                combined.set_result(futures[-1].result())

        for f in futures:
            f.add_done_callback(_done)
        return combined

    def _schedule_kick(self) -> None:
        if not self._kick_scheduled:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_kick)

    def _scheduled_kick(self) -> None:
        self._kick_scheduled = False
        self._kick()

    def _kick(self) -> None:
        """Move appends along: hand the open batch to the database thread when it has room,
        and prepare one more slice. Called on append and when a write completes, so a write
        starts at once rather than when some writer task is next scheduled; it schedules
        itself again, rather than looping, while there is more to prepare, so that other
        work on the loop runs between slices."""
        if self._reloading:
            return
        if self._open is not None and len(self._queued) < MAX_QUEUED:
            self._submit(self._close_batch(self._open))
            self._open = None
        if self._pending and (self._open is None or not self._open.full):
            if self._open is None:
                self._open = _Batch(self._prepared_id + 1, time.time(), upcast.EVENT_SCHEMA)
            self._prepare_slice(self._open, self._take_slice())
            if len(self._queued) < MAX_QUEUED:
                self._submit(self._close_batch(self._open))
                self._open = None
            if self._pending:
                self._schedule_kick()
        if not self._queued and not self._pending and self._open is None:
            self._idle.set()

    def _take_slice(self) -> list[tuple[list[Event], asyncio.Future[int]]]:
        taken, size = [], 0
        while self._pending and size < MAX_SLICE:
            item = self._pending.popleft()
            taken.append(item)
            size += len(item[0])
        return taken

    def _submit(self, batch: _Batch) -> None:
        write = None
        # Inline only behind nothing: batches commit in the order they were prepared, and
        # none while a checkpoint runs, so that the next commit can start the log over.
        checkpointing = self._checkpoint is not None and not self._checkpoint.done()
        if self._inline is not None and not self._queued and batch.small \
                and not checkpointing:
            write = self._write_inline(batch)
        if write is None:
            write = asyncio.ensure_future(
                self._conn._execute(  # type: ignore[attr-defined]
                    self._write_batch, self._conn._conn,  # type: ignore[attr-defined]
                    batch.rows, batch.dirty, batch.last_id, batch.last_hash
                )
            )
        batch.write = write
        self._queued.append(batch)
        # Also for an inline write, whose future is already done: the callback runs on the
        # next turn of the loop, as a thread's would, never inside this kick.
        write.add_done_callback(self._written)

    def _write_inline(self, batch: _Batch) -> asyncio.Future[None] | None:
        """Write a small batch here and now; None when another process holds the write lock
        (the database thread then waits for it, not the loop)."""
        assert batch.rows is not None and self._inline is not None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            self._write_batch(self._inline, batch.rows, batch.dirty, batch.last_id,
                              batch.last_hash, inline=True)
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):  # rolled back or never begun: the thread writes it whole
                return None
            done.set_exception(exc)
        except Exception as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)
            self._inline_commits += 1
            if self._inline_commits >= INLINE_CHECKPOINT_COMMITS and (
                    self._checkpoint is None or self._checkpoint.done()):
                self._inline_commits = 0
                self._checkpoint = asyncio.ensure_future(
                    self._conn._execute(_checkpoint, self._conn._conn))  # type: ignore[attr-defined]
        return done

    def _written(self, write: asyncio.Future[None]) -> None:
        batch = self._queued.pop(0)
        assert batch.write is write
        error = write.exception() if not write.cancelled() else asyncio.CancelledError()
        if error is None and not self._reloading:
            self._resolve(batch)
            self._kick()
            return
        behind = StoreError(f"{self.path}: an earlier batch failed")
        for _, fut in batch.items:
            if not fut.done():
                fut.set_exception(error or behind)
        # The open batch was prepared on top of the failed one's projections and chain.
        if self._open is not None:
            for _, fut in self._open.items:
                if not fut.done():
                    fut.set_exception(behind)
            self._open = None
        # Batches queued behind a failed one find the chain head unmoved and fail too; once
        # the last of them is back, the projections are re-read from what is on disk.
        self._reloading = True
        if not self._queued:
            self._recovery = asyncio.ensure_future(self._recover())

    async def _recover(self) -> None:
        try:
            await self._reload()
        finally:
            self._reloading = False
            self._kick()

    def _resolve(self, batch: _Batch) -> None:
        self.last_id, self._last_hash = batch.last_id, batch.last_hash
        done = batch.first_id - 1
        for events, fut in batch.items:
            done += len(events)
            if not fut.done():
                fut.set_result(done)
        if batch.stored:
            for listener in list(self._listeners):
                listener(batch.stored)
        rows = batch.rows
        if self._raw_listeners and rows is not None and rows.sizes:
            committed = Committed(rows.first_id, rows.ts, rows.events, rows.data, rows.sizes,
                                  batch.dirty)
            for raw in list(self._raw_listeners):
                raw(committed)

    def _prepare_slice(
        self, batch: _Batch, items: list[tuple[list[Event], asyncio.Future[int]]]
    ) -> None:
        ts, last_id, last_hash = batch.ts, self._prepared_id, self._prepared_hash
        hashes, datas, tag = batch.hashes, batch.datas, schema_tag(batch.schema)
        if not hashes:
            hashes.append(last_hash)
        sha256, pack = _SHA256.copy, _PACK.pack
        # Serialised first, each append on its own: one that JSON cannot hold (a lone
        # surrogate from a file name, say) fails alone, instead of stalling every append.
        kept: list[tuple[list[Event], asyncio.Future[int]]] = []
        encoded: list[bytes] = []
        for events, fut in items:
            try:
                payloads = [e.__pydantic_serializer__.to_json(e) for e in events]
            except Exception as exc:
                if not fut.done():
                    fut.set_exception(StoreError(f"{self.path}: cannot record "
                                                 f"{', '.join(e.kind for e in events)}: {exc}"))
                continue
            kept.append((events, fut))
            encoded += payloads
        items = kept
        flat = [e for events, _ in items for e in events]
        # The one per-event loop: hash the serialised bytes, keep them for the row.
        for data in encoded:
            last_id += 1
            digest = sha256()
            digest.update(last_hash + pack(last_id, ts) + tag + data)
            last_hash = digest.digest()
            hashes.append(last_hash)
            datas.append(data)
            batch.size += len(data)
        projections.apply_batch(self.state, flat, ts)
        if self._listeners:
            first = self._prepared_id + 1
            batch.stored.extend(StoredEvent(first + i, ts, e) for i, e in enumerate(flat))
        self._prepared_id, self._prepared_hash = last_id, last_hash
        batch.events.extend(flat)
        batch.items.extend(items)

    def _close_batch(self, batch: _Batch) -> _Batch:
        batch.rows = _EventRows(batch.first_id, batch.ts, batch.events, b"".join(batch.hashes),
                                b"".join(batch.datas), list(map(len, batch.datas)),
                                batch.schema)
        batch.hashes, batch.datas = [], []
        # Rows are encoded here, on the loop's thread: the live dicts keep changing after.
        batch.dirty = {table: [projections.encode_row(table, r) for r in changed]
                       for table, changed in self.state.take_dirty().items()}
        batch.last_id, batch.last_hash = self._prepared_id, self._prepared_hash
        return batch

    def _write_batch(
        self,
        conn: sqlite3.Connection,
        rows: _EventRows,
        dirty: dict[str, list[tuple[Any, ...]]],
        last_id: int,
        last_hash: bytes,
        inline: bool = False,
    ) -> None:
        """One transaction, on the database thread or (a small batch) inline."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            # The head moves only from where the last batch left it, in one statement: a
            # step's commit is a handful of them, each costing about what its row does.
            moved = conn.execute(_MOVE_HEAD, (last_id, last_hash, rows.first_id - 1)).rowcount
            if moved != 1 and not (rows.first_id == 1 and conn.execute(
                    _FIRST_HEAD, (last_id, last_hash)).rowcount == 1):
                raise StoreError(f"{self.path}: an earlier batch failed; not writing after it")
            if not rows.events:
                pass
            # Inline (a few rows, no GIL to wait for between them) one by one costs half of
            # what the one-statement insert does with its JSON.
            elif self._bulk and rows.bulk() and not inline:
                conn.execute(_INSERT_EVENTS, rows.params())
            else:
                conn.executemany(_INSERT_EVENT, rows.rows())
            for table, encoded in dirty.items():
                _upsert(conn, table, encoded, self._upsert_rows[table])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def _reload(self) -> None:
        """After a failed write the in-memory projections are ahead of the disk: re-read."""
        state, self.last_id, self._last_hash = await self._conn._execute(  # type: ignore[attr-defined]
            _load_state, self._conn._conn  # type: ignore[attr-defined]
        )
        self._prepared_id, self._prepared_hash = self.last_id, self._last_hash
        self.state = state

    async def refresh(self) -> None:
        """Re-read projections; how a read-only observer follows another process's writes
        (which may have migrated the store meanwhile: rows have versions from then on)."""
        await self._reload()
        self._version_col = await self._conn._execute(  # type: ignore[attr-defined]
            version_column, self._conn._conn  # type: ignore[attr-defined]
        )

    async def flush(self) -> None:
        """Wait until everything queued so far is committed (or has failed)."""
        await self._idle.wait()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._idle.wait()
        if self._checkpoint is not None:
            await asyncio.gather(self._checkpoint, return_exceptions=True)
        if self._inline is not None:
            self._inline.close()
        await self._conn.close()

    # -- reading ---------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call listener with each committed batch; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def subscribe_raw(self, listener: RawListener) -> Callable[[], None]:
        """Like `subscribe`, with each batch as it was stored (`Committed`)."""
        self._raw_listeners.append(listener)
        return lambda: (self._raw_listeners.remove(listener)
                        if listener in self._raw_listeners else None)

    async def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        """A query's rows, read whole in one trip to the database thread.

        Never a cursor stepped in one trip and drained in the next (aiosqlite's execute,
        then fetchall): in between, its statement holds a read transaction open on the
        writer's connection, and a batch queued on the thread meanwhile begins inside it.
        If another connection (the inline one, say) committed since that read began, the
        batch's BEGIN IMMEDIATE would have to upgrade a stale snapshot, which SQLite refuses
        at once whatever the busy timeout (SQLITE_BUSY_SNAPSHOT: "database is locked")."""
        return await self._conn._execute(  # type: ignore[attr-defined,no-any-return]
            _fetch_all, self._conn._conn, sql, args  # type: ignore[attr-defined]
        )

    async def read_events(
        self, after: int = 0, limit: int = 1000, agent_id: str | None = None
    ) -> list[StoredEvent]:
        """Events in log order, each read in this release's shape (older rows upcast)."""
        version = self._version_col
        if agent_id is None:
            sql = f"SELECT id, ts, {version}, data FROM events WHERE id > ? ORDER BY id LIMIT ?"
            args: tuple[Any, ...] = (after, limit)
        else:
            sql = (f"SELECT id, ts, {version}, data FROM events WHERE agent_id = ? AND id > ? "
                   "ORDER BY id LIMIT ?")
            args = (agent_id, after, limit)
        rows = await self._fetch(sql, args)
        out = []
        parse = upcast.parse_stored
        for i, ts, v, d in rows:
            try:
                out.append(StoredEvent(i, ts, parse(d, v)))
            except EventSchemaError as exc:
                raise StoreError(f"{self.path}: event {i}: {exc}") from None
        return out

    async def messages(self, agent_id: str) -> list[dict[str, Any]]:
        """An agent's whole conversation, rebuilt from its events (how a resume starts)."""
        if agent_id not in self.state.tables["agents"]:
            # Not even prepared: every conversation opens with agent_started, which makes
            # the row. A new agent (the usual case) starts without a trip to the database.
            return []
        rows = await self._fetch(
            f"SELECT id, {self._version_col}, data FROM events WHERE agent_id = ? AND kind IN "
            "('agent_started', 'agent_turn', 'agent_note', 'tool_executed') ORDER BY id",
            (agent_id,),
        )
        out: list[dict[str, Any]] = []
        for event_id, version, data in rows:
            try:
                doc = upcast.load_stored(data, version)
            except EventSchemaError as exc:
                raise StoreError(f"{self.path}: event {event_id}: {exc}") from None
            kind = doc["kind"]
            if kind == "agent_started":
                out.extend(doc["messages"])
            elif kind in ("agent_turn", "agent_note"):
                out.append(doc["message"])
            else:
                out.append({"role": "tool", "tool_call_id": doc["call_id"],
                            "content": doc["result"]})
        return out

    @property
    def prepared_id(self) -> int:
        """The id of the last event the in-memory projections include (committed or about
        to be): a consistent point to follow the stream from."""
        return self._prepared_id

    def rows(self, table: str) -> list[projections.Row]:
        return list(self.state.tables[table].values())

    def get(self, table: str, key: str) -> projections.Row | None:
        return self.state.tables[table].get(key)
