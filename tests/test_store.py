"""The store: append, projections, hash chain, tamper detection, reopen without replay."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agents import events as ev
from agents.engine import RunLock
from agents.store import Store, StoreError, audit, projections, upcast
from agents.store import store as store_module
from agents.store.audit import compare_projections, verify_chain
from agents.store.schema import MIGRATIONS
from agents.store.upcast import EventSchemaError


def _plan() -> list[ev.Event]:
    return [
        ev.RunStarted(run_id="r1", specs=["s"], concurrency=2, sandbox="none"),
        ev.SpecRegistered(spec_id="s", title="S", path="specs/s.md", digest="d1"),
        ev.PlanAccepted(spec_id="s", digest="p", tasks=[
            ev.PlannedTask(id="a", title="A", paths=["x/"], acceptance=["true"]),
            ev.PlannedTask(id="b", title="B", paths=["y/"], acceptance=["true"],
                           depends_on=["a"]),
        ]),
        ev.TaskStarted(spec_id="s", task_id="a", agent_id="s.a.1", attempt=1,
                       branch="factory/s/a", worktree="/w/a", base_commit="c0"),
        ev.AgentStarted(spec_id="s", task_id="a", agent_id="s.a.1", role="implementer",
                        model="m", messages=[{"role": "system", "content": "go"}]),
        ev.AgentTurn(spec_id="s", task_id="a", agent_id="s.a.1", step=1, model="m",
                     message={"role": "assistant", "content": "hi"}, tokens_in=100,
                     tokens_out=20, cost_usd=0.5),
        ev.AgentTurn(spec_id="s", task_id="a", agent_id="s.a.1", step=2, model="m",
                     message={"role": "assistant", "content": "again"}, tokens_in=50,
                     tokens_out=10, cost_usd=0.25),
    ]


async def test_append_updates_projections(store: Store) -> None:
    last = await store.append(*_plan())
    assert last == 7
    task = store.get("tasks", "s/a")
    assert task is not None and task["status"] == "running" and task["tokens"] == 180
    assert task["cost"] == pytest.approx(0.75)
    assert store.get("tasks", "s/b")["status"] == "pending"  # type: ignore[index]
    agent = store.get("agents", "s.a.1")
    assert agent is not None and agent["step"] == 2 and agent["tokens_in"] == 150
    assert store.get("budgets", "run:r1")["tokens"] == 180  # type: ignore[index]
    assert store.get("specs", "s")["tokens"] == 180  # type: ignore[index]
    assert store.get("specs", "s")["tasks_total"] == 2  # type: ignore[index]


async def test_reopen_reads_projections_not_the_log(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    store = await Store.open(path)
    await store.append(*_plan())
    await store.close()
    # Wipe the log: a store that replays it would lose its state; ours must not.
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM events")
    conn.commit()
    conn.close()
    again = await Store.open(path)
    try:
        assert again.get("tasks", "s/a")["status"] == "running"  # type: ignore[index]
        assert again.last_id == 7
    finally:
        await again.close()


async def test_events_read_back_in_order_and_by_agent(store: Store) -> None:
    await store.append(*_plan())
    everything = await store.read_events(after=0)
    assert [e.id for e in everything] == list(range(1, 8))
    assert everything[2].event.kind == "plan_accepted"
    mine = await store.read_events(agent_id="s.a.1")
    assert {e.event.kind for e in mine} == {"task_started", "agent_started", "agent_turn"}
    messages = await store.messages("s.a.1")
    assert [m["content"] for m in messages] == ["go", "hi", "again"]


async def test_listeners_get_committed_batches(store: Store) -> None:
    seen: list[int] = []
    unsubscribe = store.subscribe(lambda batch: seen.extend(e.id for e in batch))
    await store.append(*_plan())
    unsubscribe()
    await store.append(ev.Notice(message="after"))
    assert seen == list(range(1, 8))


async def test_concurrent_appends_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    store = await Store.open(path)
    await asyncio.gather(*(store.append(ev.Notice(message=f"n{i}")) for i in range(500)))
    await store.close()
    report = verify_chain(path)
    assert report.ok and report.events == 500


async def _filled(tmp_path: Path) -> Path:
    path = tmp_path / "f.db"
    store = await Store.open(path)
    await store.append(*_plan())
    await store.close()
    return path


async def test_chain_verifies_and_projections_agree(tmp_path: Path) -> None:
    path = await _filled(tmp_path)
    assert verify_chain(path).ok
    assert compare_projections(path) == []


async def test_edited_row_is_detected(tmp_path: Path) -> None:
    path = await _filled(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE events SET data = replace(data, '0.5', '0.0') WHERE id = 6")
    conn.commit()
    conn.close()
    report = verify_chain(path)
    assert not report.ok
    assert "event 6: content does not match its hash" in report.problems


async def test_deleted_row_is_detected(tmp_path: Path) -> None:
    path = await _filled(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM events WHERE id = 3")
    conn.commit()
    conn.close()
    report = verify_chain(path)
    assert any("missing" in p for p in report.problems)
    assert any("event 4: previous hash" in p for p in report.problems)


async def test_truncated_tail_is_detected(tmp_path: Path) -> None:
    path = await _filled(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM events WHERE id = 7")
    conn.commit()
    conn.close()
    report = verify_chain(path)
    assert any("chain head" in p for p in report.problems)


async def test_edited_projection_is_found(tmp_path: Path) -> None:
    path = await _filled(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE tasks SET status = 'landed' WHERE key = 's/a'")
    conn.commit()
    conn.close()
    assert compare_projections(path) == [
        "tasks[s/a].status: stored 'landed', log says 'running'"
    ]


async def test_readonly_store_refuses_writes(tmp_path: Path) -> None:
    path = await _filled(tmp_path)
    reader = await Store.open(path, readonly=True)
    try:
        with pytest.raises(StoreError, match="read-only"):
            reader.append_many([ev.Notice(message="x")])
        assert reader.get("tasks", "s/a")["status"] == "running"  # type: ignore[index]
    finally:
        await reader.close()


async def test_missing_store_for_reading_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store here yet"):
        await Store.open(tmp_path / "nope.db", readonly=True)


async def test_not_a_store_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a Factory store"):
        await Store.open(bad)


# Identifiers that JSON has to escape, or carries as raw UTF-8: the indexed columns are read
# back out of each row's JSON by SQLite, so they must come out exactly as Python wrote them.
AWKWARD = ['quote"d', "back\\slash", "tab\tnew\nline\r", "\x01\x1f\x7f", "é ß 中文",
           "emoji 😀 𝄞", "sep\u2028\u2029", "slash/ and \\u0041 literally", "", " "]


def _awkward_events(names: list[str]) -> list[ev.Event]:
    return [ev.AgentNote(spec_id=name, task_id=f"t{name}", agent_id=f"{name}a", step=1,
                         message={"role": "user", "content": name}) for name in names]


def _columns(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, kind, spec_id, task_id, agent_id, data FROM events "
                            "ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("bulk", [True, False], ids=["one-statement", "row-by-row"])
async def test_awkward_ids_are_stored_exactly(
    tmp_path: Path, bulk: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Through the database thread, which alone uses the one-statement insert.
    monkeypatch.setattr(store_module, "INLINE_MAX_EVENTS", 0)
    path = tmp_path / "f.db"
    store = await Store.open(path)
    store._bulk = bulk
    events = _awkward_events(AWKWARD)
    # A NUL sends its batch row by row even when one statement could take it (SQLite's JSON
    # functions stop a string at \u0000); the batch after it goes in one statement again.
    await store.append(*events[:5])
    await store.append(*_awkward_events(["nul\x00inside"]))
    await store.append(*events[5:])
    for agent in ("nul\x00insidea", "emoji 😀 𝄞a"):
        [mine] = await store.read_events(agent_id=agent)
        assert mine.event.agent_id == agent
    await store.close()
    written = [e for e in events[:5]] + _awkward_events(["nul\x00inside"]) + events[5:]
    assert [row[1:5] for row in _columns(path)] == [
        (e.kind, e.spec_id, e.task_id, e.agent_id) for e in written
    ]
    assert [row[5] for row in _columns(path)] == [e.model_dump_json() for e in written]
    report = verify_chain(path)
    assert report.ok and report.events == len(written)


async def test_one_statement_and_row_by_row_write_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "INLINE_MAX_EVENTS", 0)  # the thread's two ways
    written = []
    for bulk in (True, False):
        path = tmp_path / f"{bulk}.db"
        store = await Store.open(path)
        store._bulk = bulk
        await store.append(*_plan())
        await store.append(*_awkward_events(AWKWARD))
        await store.close()
        assert verify_chain(path).ok and compare_projections(path) == []
        written.append(_columns(path))
    assert written[0] == written[1]


async def _refusing_store(path: Path, when: str) -> Store:
    """A store holding a plan, whose database refuses (as a failing disk would) every event
    row matching `when`."""
    store = await Store.open(path)
    await store.append(*_plan())
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON events WHEN {when} "
                 "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    conn.commit()
    conn.close()
    return await Store.open(path)


async def test_a_failed_batch_fails_its_appends_and_the_store_recovers(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    store = await _refusing_store(path, "NEW.kind = 'notice' AND NEW.data LIKE '%refuse me%'")
    try:
        with pytest.raises(sqlite3.IntegrityError, match="refused"):
            await store.append(ev.RunFinished(run_id="r1", status="done"),
                               ev.Notice(message="refuse me"))
        # Nothing of the failed batch is on disk or in memory; the next batch continues the
        # chain where the last committed one ended.
        await store.flush()
        assert store.get("runs", "r1")["status"] == "running"  # type: ignore[index]
        assert await store.append(ev.Notice(message="fine")) == 8
    finally:
        await store.close()
    report = verify_chain(path)
    assert report.ok and report.events == 8
    assert compare_projections(path) == []


async def test_a_flood_is_prepared_in_slices_and_written_in_few_batches(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    store = await Store.open(path)
    transactions: list[int] = []
    seen: list[int] = []
    store.subscribe(lambda batch: (transactions.append(len(batch)),
                                   seen.extend(e.id for e in batch)))
    notes = [ev.Notice(message=f"n{i}") for i in range(5 * store_module.MAX_SLICE + 7)]
    # Keep the database thread busy while the flood is prepared, one slice per turn of the
    # loop: what is prepared while the writer is busy waits in one open batch.
    release = threading.Event()
    busy = asyncio.ensure_future(store._conn._execute(release.wait))  # type: ignore[attr-defined]
    await asyncio.sleep(0)  # now queued on the database thread, ahead of any write
    try:
        first, rest = store.append_many(_plan()), store.append_many(notes)
        turns = 0
        while store.prepared_id < 7 + len(notes):
            await asyncio.sleep(0)
            turns += 1
        assert turns >= 5  # the loop was never held for the whole flood
    finally:
        release.set()
    await busy
    assert await first == 7 and await rest == 7 + len(notes)
    await store.close()
    assert seen == list(range(1, 8 + len(notes)))
    assert len(transactions) == store_module.MAX_QUEUED + 1
    assert verify_chain(path).ok and compare_projections(path) == []


async def test_batches_behind_a_failed_one_fail_and_the_store_recovers(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    store = await _refusing_store(path, "NEW.data LIKE '%refuse me%'")
    try:
        doomed = store.append_many([ev.RunFinished(run_id="r1", status="done"),
                                    ev.Notice(message="refuse me")])
        await asyncio.sleep(0)  # its batch is on its way to the database thread
        behind = [store.append_many([ev.Notice(message=f"n{i}")] * store_module.MAX_SLICE)
                  for i in range(4)]
        with pytest.raises(sqlite3.IntegrityError, match="refused"):
            await doomed
        # What was prepared on top of the failed batch fails with it; what was still waiting
        # to be prepared goes in after the projections are re-read.
        outcomes = await asyncio.gather(*behind, return_exceptions=True)
        written = [o for o in outcomes if not isinstance(o, BaseException)]
        assert all(isinstance(o, StoreError)
                   for o in outcomes if isinstance(o, BaseException))
        assert written == sorted(written)
        await store.flush()
        assert store.get("runs", "r1")["status"] == "running"  # type: ignore[index]
        last = await store.append(ev.Notice(message="fine"))
        assert last == 8 + len(written) * store_module.MAX_SLICE
    finally:
        await store.close()
    report = verify_chain(path)
    assert report.ok and report.events == last
    assert compare_projections(path) == []


async def test_an_agents_step_commits_while_the_database_thread_is_busy(tmp_path: Path) -> None:
    # A small batch (an agent's step) is written on the loop's thread: it does not wait for
    # the database thread, and the chain and projections are exactly as if it had.
    path = tmp_path / "f.db"
    store = await Store.open(path)
    release = threading.Event()
    busy = asyncio.ensure_future(store._conn._execute(release.wait))  # type: ignore[attr-defined]
    await asyncio.sleep(0)
    try:
        assert await asyncio.wait_for(store.append(*_plan()), 5) == 7
        flood = store.append_many([ev.Notice(message=f"n{i}")
                                   for i in range(store_module.INLINE_MAX_EVENTS + 1)])
        await asyncio.sleep(0.05)
        assert not flood.done()  # a large one goes to the thread, which is still busy
        # ...and what comes behind it waits its turn: batches commit in the order prepared.
        behind = store.append_many([ev.Notice(message="behind")])
        await asyncio.sleep(0.05)
        assert not behind.done()
    finally:
        release.set()
    await busy
    assert await flood == 7 + store_module.INLINE_MAX_EVENTS + 1
    assert await behind == await flood + 1
    await store.close()
    assert verify_chain(path).ok and compare_projections(path) == []


async def test_a_read_between_writes_never_fails_the_next_batch(tmp_path: Path) -> None:
    # An agent resuming reads its conversation on the database thread while others write.
    # The read must be whole in one trip there: a query stepped in one trip and drained in
    # the next holds a read transaction open in between, so a batch the thread runs in
    # between begins on that snapshot, and once the loop's own connection has committed
    # since (a small batch, inline), SQLite refuses the upgrade at once whatever the busy
    # timeout ("database is locked", SQLITE_BUSY_SNAPSHOT): the run died of it after a restart.
    path = tmp_path / "f.db"
    store = await Store.open(path)
    await store.append(*_plan())
    ran, release = threading.Event(), threading.Event()

    def hold() -> None:
        ran.set()
        release.wait(10)

    reading = asyncio.ensure_future(store.messages("s.a.1"))
    await asyncio.sleep(0)  # its query is queued on the database thread...
    busy = asyncio.ensure_future(store._conn._execute(hold))  # type: ignore[attr-defined]
    await asyncio.sleep(0)  # ...and behind it, this hold
    try:
        assert ran.wait(10)  # the thread has run the query, and holds
        # Before the reader is back on the loop: a step commits inline, then a batch goes to
        # the thread, queued ahead of whatever the reader asks the thread next.
        step = store.append_many([ev.Notice(message="inline")])
        store._kick()  # committed here and now (the thread is held)
        flood = store.append_many([ev.Notice(message=f"n{i}")
                                   for i in range(store_module.INLINE_MAX_EVENTS + 1)])
        store._kick()
        await asyncio.sleep(0)
    finally:
        release.set()
    await busy
    assert await step == 8
    assert await asyncio.wait_for(flood, 10) == 8 + store_module.INLINE_MAX_EVENTS + 1
    assert [m["content"] for m in await reading] == ["go", "hi", "again"]
    await store.close()
    assert verify_chain(path).ok and compare_projections(path) == []


async def test_a_write_lock_held_elsewhere_never_holds_the_loop(tmp_path: Path) -> None:
    # Another process writing the store (a command given against it) holds the write lock:
    # the batch waits for it on the database thread, and the loop keeps running meanwhile.
    path = tmp_path / "f.db"
    store = await Store.open(path)
    await store.append(*_plan())
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        step = store.append_many([ev.Notice(message="while locked")])
        started = asyncio.get_running_loop().time()
        await asyncio.sleep(0.2)
        assert asyncio.get_running_loop().time() - started < 1.0
        assert not step.done()
    finally:
        other.execute("COMMIT")
        other.close()
    assert await asyncio.wait_for(step, 10) == 8
    assert await store.append(ev.Notice(message="after")) == 9
    await store.close()
    assert verify_chain(path).ok and compare_projections(path) == []


async def test_small_batches_are_checkpointed_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loop's connection never checkpoints; the database thread copies the WAL into the
    # database every INLINE_CHECKPOINT_COMMITS of its commits, so the WAL does not grow
    # without end in a long run of small steps.
    monkeypatch.setattr(store_module, "INLINE_CHECKPOINT_COMMITS", 10)
    path = tmp_path / "f.db"
    store = await Store.open(path)
    try:
        await store.append(*_plan())
        size = path.stat().st_size
        for i in range(9):
            await store.append(ev.Notice(message="x" * 20000 + str(i)))
        assert path.stat().st_size == size  # everything so far is in the WAL only
        await store.append(ev.Notice(message="the tenth"))
        await asyncio.wait_for(store._checkpoint, 10)  # type: ignore[arg-type]
        assert path.stat().st_size > size + 9 * 20000
    finally:
        await store.close()
    assert verify_chain(path).ok


async def test_the_wal_starts_over_while_steps_keep_committing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Steps commit on the loop while the thread's checkpoint copies the log, so the log is
    # never wholly copied when a step begins; unless writes wait behind the checkpoint, it
    # grows by every commit for as long as the store is open.
    monkeypatch.setattr(store_module, "INLINE_CHECKPOINT_COMMITS", 20)
    monkeypatch.setattr(store_module, "WAL_SIZE_LIMIT", 64 << 10)
    path = tmp_path / "f.db"
    wal = path.with_name("f.db-wal")
    store = await Store.open(path)
    sizes = []
    try:
        await store.append(*_plan())
        for i in range(600):
            await store.append(ev.Notice(message="x" * 6000 + str(i)))
            sizes.append(wal.stat().st_size)
    finally:
        await store.close()
    assert verify_chain(path).ok and compare_projections(path) == []
    # 600 steps wrote over 3.6 MB of notices. A log that never starts over only grows; one
    # that does is cut back to the limit each time, again and again to the end.
    assert min(sizes[-200:]) <= 256 << 10, sizes[::50]


@pytest.mark.parametrize("max_parameters", [999, 32766], ids=["old-sqlite", "sqlite-3.32+"])
async def test_many_projection_rows_in_one_batch(tmp_path: Path, max_parameters: int) -> None:
    path = tmp_path / "f.db"
    store = await Store.open(path)
    store._upsert_rows = store_module._upsert_rows(max_parameters)
    rows = store_module.MAX_UPSERT_ROWS + 7  # more than one statement, the last one padded
    await store.append(*_plan(), *_awkward_events([f"agent {i}" for i in range(rows)]))
    await store.close()
    assert compare_projections(path) == []
    again = await Store.open(path)
    try:
        assert len(again.rows("agents")) == rows + 1
    finally:
        await again.close()


async def test_a_full_open_batch_waits_for_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past MAX_BATCH_BYTES the open batch stops growing: the rest of a flood waits, unprepared,
    # until the writer takes the batch, so memory stays bounded however far the writer lags.
    monkeypatch.setattr(store_module, "MAX_BATCH_BYTES", 1)
    path = tmp_path / "f.db"
    store = await Store.open(path)
    notes = [ev.Notice(message=f"n{i}") for i in range(6 * store_module.MAX_SLICE)]
    release = threading.Event()
    busy = asyncio.ensure_future(store._conn._execute(release.wait))  # type: ignore[attr-defined]
    await asyncio.sleep(0)
    try:
        flood = store.append_many(notes)
        for _ in range(20):
            await asyncio.sleep(0)
        # Two batches handed over, one open and full, the rest not prepared.
        assert store.prepared_id == (store_module.MAX_QUEUED + 1) * store_module.MAX_SLICE
    finally:
        release.set()
    await busy
    assert await flood == len(notes)
    await store.close()
    assert verify_chain(path).ok


# -- event schema versions and upcasters ----------------------------------------------------


def _rechain(path: Path) -> None:
    """Recompute every row's hash and the chain head, as the release that wrote the rows as
    they now are would have (how a test makes rows of an older shape)."""
    conn = sqlite3.connect(path)
    prev = store_module.GENESIS
    rows = conn.execute("SELECT id, ts, schema, data FROM events ORDER BY id").fetchall()
    for event_id, ts, version, data in rows:
        digest = store_module.chain_hash(prev, event_id, ts, data.encode(), version)
        conn.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE id = ?",
                     (prev, digest, event_id))
        prev = digest
    conn.execute("UPDATE chain_head SET last_id = ?, last_hash = ?", (rows[-1][0], prev))
    conn.commit()
    conn.close()


def _versions(path: Path) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [v for (v,) in conn.execute("SELECT schema FROM events ORDER BY id")]
    finally:
        conn.close()


def test_every_version_but_the_current_one_has_an_upcaster() -> None:
    # A release that bumps EVENT_SCHEMA registers the step from the version before.
    assert set(upcast.UPCASTERS) == set(range(1, upcast.EVENT_SCHEMA))
    doc = {"kind": "agent_turn", "reply": {"role": "assistant"}, "step": 1}
    step = upcast.renamed("agent_turn", "reply", "message")
    assert step(doc) == {"kind": "agent_turn", "step": 1, "message": {"role": "assistant"}}
    assert "reply" in doc  # the stored dict is left as it was
    assert step({"kind": "notice", "reply": 1}) == {"kind": "notice", "reply": 1}


async def test_rows_record_the_schema_they_were_written_in(tmp_path: Path) -> None:
    path = await _filled(tmp_path)
    assert _versions(path) == [upcast.EVENT_SCHEMA] * 7
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    finally:
        conn.close()


@pytest.mark.parametrize("bulk", [True, False], ids=["one-statement", "row-by-row"])
async def test_old_rows_are_upcast_when_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bulk: bool
) -> None:
    # Pretend agent_turn's `message` was called `reply` in version 1 and this release writes
    # version 2: the rows a version 1 release wrote are read back through the upcaster.
    path = await _filled(tmp_path)
    conn = sqlite3.connect(path)
    for event_id, data in conn.execute(
            "SELECT id, data FROM events WHERE kind = 'agent_turn'").fetchall():
        doc = json.loads(data)
        doc = {("reply" if k == "message" else k): v for k, v in doc.items()}
        conn.execute("UPDATE events SET data = ? WHERE id = ?", (json.dumps(doc), event_id))
    conn.commit()
    conn.close()
    _rechain(path)
    # This release cannot read that shape: the chain holds, the rows are named.
    assert verify_chain(path).problems == [
        f"event {i}: cannot be read: not a valid event (schema 1): agent_turn.message: Field "
        "required" for i in (6, 7)]
    monkeypatch.setattr(upcast, "EVENT_SCHEMA", 2)
    monkeypatch.setitem(upcast.UPCASTERS, 1, upcast.renamed("agent_turn", "reply", "message"))
    assert verify_chain(path).ok

    store = await Store.open(path)
    store._bulk = bulk
    try:
        await store.append(ev.AgentTurn(spec_id="s", task_id="a", agent_id="s.a.1", step=3,
                                        model="m", message={"role": "assistant", "content": "3"},
                                        tokens_in=1, tokens_out=1, cost_usd=0.125))
        events = await store.read_events()
        assert [e.event.message["content"] for e in events  # type: ignore[union-attr]
                if e.event.kind == "agent_turn"] == ["hi", "again", "3"]
        assert [m["content"] for m in await store.messages("s.a.1")] == ["go", "hi", "again",
                                                                         "3"]
    finally:
        await store.close()
    assert _versions(path) == [1] * 7 + [2]
    # Both forms of hash verify, the replay reads the old rows, and nothing needs rebuilding.
    report = audit.verify(path)
    assert report.ok and report.events == 8 and report.drift == []
    assert audit.rebuild(path).drift == []

    # The version is covered by the chain: edited either way, the row no longer matches.
    for event_id, version in ((1, 2), (8, 1)):
        conn = sqlite3.connect(path)
        conn.execute("UPDATE events SET schema = ? WHERE id = ?", (version, event_id))
        conn.commit()
        conn.close()
        assert f"event {event_id}: content does not match its hash" in \
            verify_chain(path).problems
        conn = sqlite3.connect(path)
        conn.execute("UPDATE events SET schema = ? WHERE id = ?", (3 - version, event_id))
        conn.commit()
        conn.close()

    # Without the step, an old row is a clear error, not a traceback from pydantic.
    monkeypatch.delitem(upcast.UPCASTERS, 1)
    reader = await Store.open(path, readonly=True)
    try:
        with pytest.raises(StoreError, match="event 1: no upcaster from event schema 1 to 2"):
            await reader.read_events()
    finally:
        await reader.close()


async def test_a_store_a_newer_release_wrote_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _project(tmp_path)
    path = root / ".factory" / "factory.db"
    with monkeypatch.context() as newer:
        newer.setattr(upcast, "EVENT_SCHEMA", 2)
        store = await Store.open(path)
        await store.append(*_plan())
        await store.close()
    assert _versions(path) == [2] * 7
    with pytest.raises(StoreError, match=r"written by a newer Factory .*: upgrade Factory"):
        await Store.open(path)
    reader = await Store.open(path, readonly=True)  # its projections are still shown
    try:
        assert reader.get("tasks", "s/a")["status"] == "running"  # type: ignore[index]
        with pytest.raises(StoreError, match=r"event 1: .*written by a newer Factory; upgrade"):
            await reader.read_events()
        with pytest.raises(StoreError, match="newer Factory; upgrade"):
            await reader.messages("s.a.1")
    finally:
        await reader.close()
    with pytest.raises(EventSchemaError, match="newer Factory; upgrade"):
        verify_chain(path)
    for command in (("audit", "verify"), ("store", "rebuild")):
        done = _factory(*command, root=root)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "written by a newer Factory" in done.stderr and "upgrade" in done.stderr
        assert "Traceback" not in done.stderr


# -- projections against a replay: `factory audit verify`, `factory store rebuild` ----------


def _project(tmp_path: Path) -> Path:
    """A folder with a .factory.toml (its store at .factory/factory.db), for the commands."""
    root = tmp_path / "project"
    done = _factory("init", str(root), root=None, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return root


def _factory(*args: str, root: Path | None, cwd: Path | None = None
             ) -> subprocess.CompletedProcess[str]:
    where = ["--root", str(root)] if root is not None else []
    return subprocess.run([sys.executable, "-m", "console.cli", *args, *where],
                          cwd=cwd or root, text=True, capture_output=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


async def _project_store(tmp_path: Path) -> tuple[Path, Path]:
    root = _project(tmp_path)
    path = root / ".factory" / "factory.db"
    store = await Store.open(path)
    await store.append(*_plan())
    await store.close()
    return root, path


def _tamper(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("UPDATE tasks SET status = 'landed' WHERE key = 's/a'")
    conn.execute("DELETE FROM agents WHERE id = 's.a.1'")
    conn.execute("INSERT INTO gates (key, gate, passed) VALUES ('s/zz:tests', 'tests', 1)")
    conn.commit()
    conn.close()


async def test_audit_verify_reports_drift_from_a_replay(tmp_path: Path) -> None:
    root, path = await _project_store(tmp_path)
    clean = _factory("audit", "verify", root=root)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "hash chain intact, projections match a replay" in clean.stdout
    _tamper(path)
    done = _factory("audit", "verify", root=root)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "drift: tasks[s/a].status: stored 'landed', log says 'running'" in lines
    assert "drift: agents[s.a.1]: only in log" in lines
    assert "drift: gates[s/zz:tests]: only in projection" in lines
    assert "TAMPERED" not in done.stdout  # the log itself is intact
    assert "DRIFT: 3 projection value(s) in 3 row(s)" in done.stdout
    report = audit.verify(path)
    assert report.chain_ok and not report.ok
    assert [(d.table, d.key, d.column) for d in report.drift or []] == [
        ("tasks", "s/a", "status"), ("agents", "s.a.1", None), ("gates", "s/zz:tests", None)]
    assert (report.drift or [])[0].stored == "landed"
    assert (report.drift or [])[0].replayed == "running"


async def test_store_rebuild_puts_tampered_rows_back(tmp_path: Path) -> None:
    root, path = await _project_store(tmp_path)
    conn = sqlite3.connect(path)
    before = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
              for t in ("tasks", "agents", "gates")}
    conn.close()
    _tamper(path)
    done = _factory("store", "rebuild", root=root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tasks: 0 added, 1 changed, 0 removed" in done.stdout
    assert "agents: 1 added, 0 changed, 0 removed" in done.stdout
    assert "gates: 0 added, 0 changed, 1 removed" in done.stdout
    conn = sqlite3.connect(path)
    after = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
             for t in ("tasks", "agents", "gates")}
    conn.close()
    assert after == before
    assert compare_projections(path) == [] and verify_chain(path).ok
    again = _factory("store", "rebuild", root=root)
    assert again.returncode == 0 and "every projection already matched the log" in again.stdout
    # The store opens as it did, from its (rebuilt) tables.
    store = await Store.open(path)
    try:
        assert store.get("agents", "s.a.1")["tokens_in"] == 150  # type: ignore[index]
    finally:
        await store.close()


async def test_store_rebuild_is_refused_while_the_factory_runs(tmp_path: Path) -> None:
    root, path = await _project_store(tmp_path)
    _tamper(path)
    lock = RunLock(root / ".factory" / "run.lock")
    lock.acquire()  # as `factory run` holds it
    try:
        done = _factory("store", "rebuild", root=root)
    finally:
        lock.release()
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the factory is already running" in done.stderr
    assert "stop it before `factory store rebuild`" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(compare_projections(path)) == 3  # nothing was written
    # A daemon (or a console's engine) serving the factory holds its projections in memory.
    with socket.socket(socket.AF_UNIX) as daemon:
        daemon.bind(str(root / ".factory" / "daemon.sock"))
        daemon.listen()
        done = _factory("store", "rebuild", root=root)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "open in another process" in done.stderr and "daemon.sock answers" in done.stderr
    (root / ".factory" / "daemon.sock").unlink()
    assert len(compare_projections(path)) == 3
    assert _factory("store", "rebuild", root=root).returncode == 0
    assert compare_projections(path) == []


async def test_store_rebuild_refuses_a_broken_chain(tmp_path: Path) -> None:
    path = await _filled(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE events SET data = replace(data, '0.5', '0.0') WHERE id = 6")
    conn.execute("UPDATE tasks SET status = 'landed' WHERE key = 's/a'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"hash chain is broken .*event 6: content does not "
                       r"match its hash.*not rebuilding"):
        audit.rebuild(path)
    assert "tasks[s/a].status: stored 'landed', log says 'running'" in \
        compare_projections(path)


async def test_replay_spreads_usage_per_transaction_as_the_writer_does(tmp_path: Path) -> None:
    # Costs summed per transaction by the writer and once by a replay would differ in the
    # last bits; the replay spreads them where the writer did, so they are equal exactly.
    path = tmp_path / "f.db"
    store = await Store.open(path)
    await store.append(*_plan()[:5])
    for i in range(50):
        await store.append(ev.AgentTurn(spec_id="s", task_id="a", agent_id="s.a.1", step=i,
                                        model="m", message={"role": "assistant"},
                                        tokens_in=1, tokens_out=1, cost_usd=0.1 + i * 1e-7))
    stored = store.state.comparable()
    await store.close()
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT ts, data FROM events ORDER BY id").fetchall()
    conn.close()
    replayed = projections.replay((ts, ev.EVENT_ADAPTER.validate_json(d)) for ts, d in rows)
    assert replayed.comparable()["tasks"]["s/a"]["cost"] == stored["tasks"]["s/a"]["cost"]
    assert replayed.comparable()["budgets"] == stored["budgets"]


async def test_an_audit_beside_a_live_writer_reads_one_moment(tmp_path: Path) -> None:
    # WAL lets a writer commit while the audit reads: the log, the chain head and the
    # projections must still come from one snapshot, or a batch committed in between would
    # read as a truncated chain or as drift.
    path = tmp_path / "f.db"
    store = await Store.open(path)
    await store.append(*_plan())
    writing = True

    async def writer() -> None:
        step = 3
        while writing:
            await store.append(ev.AgentTurn(spec_id="s", task_id="a", agent_id="s.a.1",
                                            step=step, model="m", message={}, tokens_in=1,
                                            tokens_out=1, cost_usd=0.01))
            step += 1

    task = asyncio.ensure_future(writer())
    try:
        for _ in range(15):
            report = await asyncio.to_thread(audit.verify, path)
            assert report.ok, (report.problems, [str(d) for d in report.drift or []])
            assert (await asyncio.to_thread(verify_chain, path)).ok
    finally:
        writing = False
        await task
        await store.close()
    assert store.last_id > 7 + 15  # the writer really went on meanwhile
