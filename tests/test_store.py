"""The store: append, projections, hash chain, tamper detection, reopen without replay."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from agents import events as ev
from agents.store import Store, StoreError
from agents.store import store as store_module
from agents.store.audit import compare_projections, verify_chain


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
async def test_awkward_ids_are_stored_exactly(tmp_path: Path, bulk: bool) -> None:
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


async def test_one_statement_and_row_by_row_write_the_same_rows(tmp_path: Path) -> None:
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
