"""Consoles attached to a daemon over its real unix socket: the state they see is the
store's, commands reach the engine, several consoles come and go while the swarm goes on,
and every kind of bad input or lost daemon gets a clear error."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agents import demo
from agents import events as ev
from agents.config import load_config
from agents.daemon import Daemon, socket_fits
from agents.engine import Factory
from agents.errors import FactoryError
from agents.wire import BatchEnd
from console.app import FactoryApp
from console.attached import AttachedClient, DaemonGone
from console.cli import connect_attached, connect_in_process, connect_own_engine, socket_path
from console.client import InProcessClient
from console.model import Totals, ViewModel
from console.widgets.queue import InboxPane
from tests.console.test_app import SIZE, settle

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def serving(root: Path, **kwargs: int) -> AsyncIterator[Daemon]:
    """A daemon on this test's loop, over the demo's factory (every branch awaits approval)."""
    config = load_config(root / ".factory.toml")
    config.queue.approval = "always"
    factory = await Factory.open(root, config)
    daemon = Daemon(factory, socket_path(root), **kwargs)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.close()
        await factory.close()


async def until(condition: Callable[[], object], timeout: float = 60) -> None:
    """Wait for something another task (the daemon, a reader) makes true."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (many conditions, no one event to wait on)
            await asyncio.sleep(0.02)


def projections(tables: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:  # type: ignore[type-arg]
    """Rows to compare: the store sums a batch's costs before adding them, the console adds
    event by event, so sums of USD may differ in their last bits."""
    return {t: {k: {c: round(v, 9) if isinstance(v, float) else v for c, v in r.items()}
                for k, r in rows.items()} for t, rows in tables.items()}


def recount(tables: dict[str, dict[str, dict[str, Any]]]) -> Totals:
    """The header's totals counted row by row."""
    def count(table: str, *statuses: str) -> int:
        return sum(1 for r in tables[table].values() if r["status"] in statuses)

    run = max(tables["runs"].values(), key=lambda r: r["started"] or 0)
    budget = tables["budgets"][f"run:{run['id']}"]
    return Totals(agents_active=count("agents", "running", "waiting"),
                  agents_total=len(tables["agents"]),
                  tasks_done=count("tasks", "landed", "rejected", "failed", "blocked",
                                   "cancelled"),
                  tasks_total=len(tables["tasks"]), tokens=budget["tokens"],
                  usd=budget["cost"], landed=count("tasks", "landed"),
                  rejected=count("tasks", "rejected"),
                  awaiting=count("queue", "awaiting_approval"),
                  questions=count("questions", "pending"), run_status=run["status"])


async def test_a_console_follows_a_run_and_ends_with_the_stores_state(
        tmp_path: Path) -> None:
    root = demo.build(tmp_path / "demo", "none")
    async with serving(root) as daemon:
        store = daemon.factory.store
        client = await AttachedClient.connect(socket_path(root))
        try:
            assert client.root == root.resolve()
            model = ViewModel.from_snapshot(await client.snapshot())
            client.follow(model.receive)
            await client.run()
            with pytest.raises(FactoryError, match="already going"):
                await client.run()
            await until(lambda: any(q["status"] == "awaiting_approval"
                                    for q in store.rows("queue")), 120)
            await store.flush()

            def caught_up() -> bool:
                while model.pending:  # a few events at a time, as the console's slices do
                    model.apply(0.0)
                return model.last_id == store.last_id

            await until(caught_up)
            # Snapshot plus forwarded events, through the engine's own handlers: the same rows.
            assert projections(model.state.tables) == projections(store.state.tables)
            # The header's counts, kept as rows changed status, are those of the rows.
            shown, counted = model.totals(), recount(store.state.tables)
            assert replace(shown, usd=round(shown.usd, 9)) == replace(counted, usd=round(
                counted.usd, 9))
            assert model.totals().awaiting > 0 and model.totals().tasks_total > 0
            key = next(k for k, q in store.state.tables["queue"].items()
                       if q["status"] == "awaiting_approval")
            await client.approve(key)
            assert store.get("queue", key)["approval"] is not None
            timeline = await client.events(0, 5)
            assert [e.id for e in timeline] == [1, 2, 3, 4, 5]
            # The console's command to run is recorded (with who gave it) before the run.
            first = timeline[0].event
            assert first.kind == "command_given" and first.op == "run"  # type: ignore[union-attr]
            assert first.by.startswith("attached console (pid ")  # type: ignore[union-attr]
            assert "run_started" in [e.event.kind for e in timeline][1:]
        finally:
            await client.close()


async def test_consoles_come_and_go_while_the_swarm_goes_on(tmp_path: Path) -> None:
    root = demo.build(tmp_path / "demo", "none")
    async with serving(root) as daemon:
        first = await AttachedClient.connect(socket_path(root))
        second = await AttachedClient.connect(socket_path(root))
        got: list[int] = []
        await second.snapshot()
        second.follow(lambda item: isinstance(item, BatchEnd) and got.extend(
            range(item.first, item.last + 1)))
        await first.snapshot()
        await first.run()
        await first.close()  # detaching does not stop the run
        await asyncio.sleep(0.3)
        assert daemon.factory.background_running
        assert daemon.factory.supervised, "a daemon waits for a person to attach and answer"
        before = len(got)
        await until(lambda: len(got) >= before + 5)
        assert got == sorted(got) and len(set(got)) == len(got), "in order, none twice"
        third = await AttachedClient.connect(socket_path(root))
        snap = await third.snapshot()
        assert snap.running and snap.last_id >= got[0] - 1
        await third.close()
        await second.close()
        await asyncio.sleep(0.1)
        assert daemon.consoles == 0


def turns(step: int, agents: int = 20) -> list[ev.Event]:
    return [ev.AgentTurn(spec_id="s", task_id=f"t{a}", agent_id=f"a{a}", step=step,
                         model="replay/x", message={"role": "assistant", "content": "…"},
                         tokens_in=10, tokens_out=1, cost_usd=0.001) for a in range(agents)]


async def test_consoles_that_attach_mid_stream_hold_the_stores_rows(tmp_path: Path) -> None:
    """The daemon sends only the columns that changed since it last sent a row; consoles
    that attach while batches are in flight, or after every console had gone (values changed
    meanwhile, then changed back), must still end with exactly the store's rows."""
    root = demo.build(tmp_path / "demo", "none")
    async with serving(root) as daemon:
        store = daemon.factory.store
        await store.append(*[ev.AgentStarted(spec_id="s", task_id=f"t{a}", agent_id=f"a{a}",
                                             role="implementer", model="replay/x")
                             for a in range(20)])

        async def watch() -> tuple[AttachedClient, ViewModel]:
            client = await AttachedClient.connect(socket_path(root))
            model = ViewModel.from_snapshot(await client.snapshot())
            client.follow(model.receive)
            return client, model

        async def feed(step: int, times: int, during: Any = None) -> None:
            pending = []
            for i in range(times):
                pending.append(store.append_many(turns(step)))
                if i == times // 2 and during is not None:
                    await during()  # attach while batches are prepared and not yet committed
                await asyncio.sleep(0)
            await asyncio.gather(*pending)
            await store.flush()

        async def caught_up(model: ViewModel) -> None:
            def done() -> bool:
                while model.pending:
                    model.apply(0.0)
                return model.last_id == store.last_id
            await until(done, 10)
            assert projections(model.state.tables) == projections(store.state.tables)

        async def watch_into(into: list[tuple[AttachedClient, ViewModel]]) -> None:
            into.append(await watch())

        first = await watch()
        second: list[tuple[AttachedClient, ViewModel]] = []
        await feed(1, 20, during=lambda: watch_into(second))
        for _, model in (first, *second):
            await caught_up(model)
        for client, _ in (first, *second):
            await client.close()
        await until(lambda: daemon.consoles == 0)
        await feed(2, 5)  # nobody watches; the step of every agent changes
        third = await watch()
        fourth: list[tuple[AttachedClient, ViewModel]] = []
        await feed(1, 20, during=lambda: watch_into(fourth))  # and changes back
        for client, model in (third, *fourth):
            await caught_up(model)
            assert {a["step"] for a in model.rows("agents").values()} == {1}
            await client.close()


async def test_a_console_is_sent_the_events_of_the_agent_it_follows(tmp_path: Path) -> None:
    root = demo.build(tmp_path / "demo", "none")
    async with serving(root) as daemon:
        store = daemon.factory.store
        client = await AttachedClient.connect(socket_path(root))
        model = ViewModel.from_snapshot(await client.snapshot())
        client.follow(model.receive)
        await store.append(*turns(1))  # nobody followed yet
        model.follow_agent("a3")
        await client.follow_agent("a3")
        await store.append(*turns(2))
        await store.append(*turns(3))
        await client.follow_agent(None)
        await store.append(*turns(4))
        await until(lambda: model.apply() or model.last_id == store.last_id)
        followed = model.take_followed()
        assert [(e.event.agent_id, e.event.step) for e in followed] == [("a3", 2), ("a3", 3)]
        stored = await store.read_events(0, 100, "a3")
        assert [e.id for e in followed] == [e.id for e in stored[1:3]]
        assert followed[0].event == stored[1].event
        await client.close()


async def test_bad_requests_get_clear_errors_and_the_connection_stays(
        tmp_path: Path) -> None:
    root = demo.build(tmp_path / "demo", "none")
    async with serving(root):
        reader, writer = await asyncio.open_unix_connection(socket_path(root))

        async def ask(line: bytes) -> dict:  # type: ignore[type-arg]
            writer.write(line + b"\n")
            return json.loads(await reader.readline())  # type: ignore[no-any-return]

        assert "not JSON" in (await ask(b"{nope"))["error"]
        assert "a request is" in (await ask(b"[1, 2]"))["error"]
        reply = await ask(b'{"id": 1, "op": "launch"}')
        assert reply["id"] == 1 and "unknown op 'launch'" in reply["error"]
        assert "approve" in reply["error"], "the error lists what is known"
        reply = await ask(b'{"id": 2, "op": "approve", "args": {"keyy": "x"}}')
        assert reply["type"] == "protocol" and "bad arguments" in reply["error"]
        reply = await ask(b'{"id": 3, "op": "hello"}')
        assert reply == {"id": 3, "result": {"protocol": 2, "root": str(root.resolve())}}
        reply = await ask(b'{"id": 4, "op": "follow_agent", "args": {"agent_id": 7}}')
        assert reply["type"] == "protocol" and "agent_id is a string" in reply["error"]
        writer.close()

        client = await AttachedClient.connect(socket_path(root))
        with pytest.raises(FactoryError, match="no queue entry nope"):
            await client.approve("nope")
        outside = tmp_path / "elsewhere.md"
        with pytest.raises(FactoryError, match=r"specs are \.md files under"):
            await client.save_spec(outside, "# not a spec\n")
        assert not outside.exists()
        with pytest.raises(FactoryError, match="unknown spec"):
            await client.run(["no-such-spec"])
        await client.close()


async def test_only_its_owner_can_reach_the_socket_and_one_daemon_serves(
        tmp_path: Path) -> None:
    root = demo.build(tmp_path / "demo", "none")
    path = socket_path(root)
    async with serving(root) as daemon:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        second = Daemon(daemon.factory, path)
        with pytest.raises(FactoryError, match="already serves"):
            await second.start()
    assert not path.exists(), "a clean stop removes the socket"
    path.parent.mkdir(exist_ok=True)
    import socket

    with socket.socket(socket.AF_UNIX) as stale:  # a daemon killed hard leaves its socket
        stale.bind(str(path))
    async with serving(root):
        assert path.is_socket()
        client = await AttachedClient.connect(path)
        await client.close()
    with pytest.raises(FactoryError, match="no daemon listens here"):
        await AttachedClient.connect(path)
    long = tmp_path / ("x" * 120) / "daemon.sock"
    with pytest.raises(FactoryError, match="at most 107 bytes"):
        await Daemon(None, long).start()  # type: ignore[arg-type]


async def test_a_console_that_stops_reading_is_let_go(tmp_path: Path) -> None:
    root = demo.build(tmp_path / "demo", "none")
    async with serving(root, max_behind=256 * 1024) as daemon:
        reader, writer = await asyncio.open_unix_connection(socket_path(root))
        writer.write(b'{"id": 1, "op": "snapshot"}\n'
                     b'{"id": 2, "op": "follow_agent", "args": {"agent_id": "a1"}}\n')
        await asyncio.sleep(0.2)
        assert daemon.consoles == 1
        reading = await AttachedClient.connect(socket_path(root))
        model = ViewModel.from_snapshot(await reading.snapshot())
        reading.follow(model.receive)
        for _ in range(40):  # the stalled console never reads; its buffer fills
            await daemon.factory.store.append(*[ev.AgentNote(
                agent_id="a1", step=1, message={"content": "x" * 1000}) for _ in range(50)])
        await until(lambda: daemon.consoles == 1 and sum(
            i.count for i in model.pending if isinstance(i, BatchEnd)) == 2000, 10)
        assert reading.lost is None, "the console that reads stays attached"
        assert await reader.read() != b"", "the stalled one got what fitted, then EOF"
        writer.close()
        await reading.close()


async def test_a_lost_daemon_fails_calls_clearly(tmp_path: Path) -> None:
    root = demo.build(tmp_path / "demo", "none")
    lost: list[str] = []
    async with serving(root):
        client = await AttachedClient.connect(socket_path(root))
        client.on_lost = lost.append
        await client.snapshot()
    await until(lambda: lost, 5)
    assert "closed the connection" in lost[0]
    with pytest.raises(DaemonGone, match="closed the connection"):
        await client.approve("x")
    await client.close()


async def test_the_console_app_attached_approves_from_its_inbox(
        demo_root: Path) -> None:
    async with serving(demo_root) as daemon:
        app = FactoryApp(connect=lambda: connect_attached(socket_path(demo_root)))
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app, lambda: app.model is not None)
            assert app.rows("queue") == daemon.factory.store.state.tables["queue"]
            await pilot.press("5")
            inbox = app.query_one(InboxPane)
            await settle(pilot, app, lambda: inbox.table.selected_key is not None)
            key = inbox.table.selected_key
            await pilot.press("a")
            await settle(pilot, app, lambda: app.rows("queue")[key]["approval"] is not None)
            assert daemon.factory.store.get("queue", key)["approval"] is not None
        await asyncio.sleep(0.1)
        assert daemon.consoles == 0, "quitting the console detaches it"


def stop(process: subprocess.Popen[str]) -> None:
    """Wait for a process (killed after 30 s) and close its pipes."""
    with process:
        if process.poll() is None:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def test_factory_daemon_serves_until_sigterm(tmp_path: Path) -> None:
    root = demo.build(tmp_path / "demo", "none")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "console.cli", "daemon", "--root", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"on {socket_path(root)}" in line, line + proc.stderr.read()  # type: ignore[union-attr]

        async def attach() -> int:
            client = await AttachedClient.connect(socket_path(root))
            snap = await client.snapshot()
            await client.close()
            return len(snap.tables["tasks"])

        assert asyncio.run(attach()) == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not socket_path(root).exists()
    finally:
        stop(proc)


async def test_a_run_is_supervised_only_while_a_console_watches(tmp_path: Path) -> None:
    root = demo.build(tmp_path / "demo", "none")
    factory = await Factory.open(root)
    daemon = Daemon(factory, socket_path(root), always_supervised=False)
    await daemon.start()
    try:
        assert not factory.supervised, "nobody attached: questions are answered at once"
        client = await AttachedClient.connect(socket_path(root))
        assert not factory.supervised, "connected but not watching yet"
        await client.snapshot()
        assert factory.supervised
        await client.close()
        await until(lambda: not factory.supervised, 5)
    finally:
        await daemon.close()
        await factory.close()


def test_factory_run_serves_consoles_and_refuses_to_run_beside_a_daemon(
        tmp_path: Path) -> None:
    root = demo.build(tmp_path / "demo", "none")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "console.cli"]
    run = subprocess.Popen([*command, "run", "--headless", "--root", str(root)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        async def look_in() -> list[str]:
            await until(lambda: socket_path(root).is_socket(), 60)
            client = await AttachedClient.connect(socket_path(root))
            model = ViewModel.from_snapshot(await client.snapshot())
            client.follow(model.receive)
            def asked() -> list[dict[str, Any]]:
                model.apply()
                return [q for q in model.rows("questions").values() if q["status"] == "pending"]

            # Watching makes the run supervised: the demo agent's question waits for us.
            await until(asked, 120)
            question = asked()[0]
            await client.answer(question["id"], "count the whole slug")
            await until(lambda: client.lost is not None, 120)  # the run ends, then the socket
            await client.close()
            model.apply()
            return [model.rows("questions")[question["id"]]["answer"]]

        answers = asyncio.run(look_in())
        assert answers == ["count the whole slug"]
        # The run went to its end (the demo's gates reject three branches: exit 1).
        assert run.wait(60) == 1, run.stderr.read()  # type: ignore[union-attr]
        assert not socket_path(root).exists()
    finally:
        stop(run)

    daemon = subprocess.Popen([*command, "daemon", "--root", str(root)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert daemon.stdout is not None and "serving" in daemon.stdout.readline()
        beside = subprocess.run([*command, "run", "--headless", "--root", str(root)],
                                capture_output=True, text=True, env=env, timeout=120)
        assert beside.returncode == 2
        assert "this factory is open in another process" in beside.stderr
        assert "factory daemon --run" in beside.stderr
    finally:
        daemon.terminate()
        stop(daemon)


async def test_a_console_with_its_own_engine_lets_others_attach(tmp_path: Path) -> None:
    root = demo.build(tmp_path / "demo", "none")
    own = await connect_in_process(root)
    try:
        other = await AttachedClient.connect(socket_path(root))
        snap = await other.snapshot()
        assert snap.tables["specs"].keys() == (await own.snapshot()).tables["specs"].keys()
        await other.close()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        beside = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "console.cli", "run", "--headless", "--root", str(root),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        _, stderr = await beside.communicate()
        assert beside.returncode == 2, ("a second engine beside the console's would be a "
                                        "second writer of the store")
        assert b"open in another process" in stderr
    finally:
        await own.close()
    assert not socket_path(root).exists()


async def test_factory_console_runs_its_engine_in_a_process_of_its_own(tmp_path: Path) -> None:
    root = demo.build(tmp_path / "demo", "none")
    client = await connect_own_engine(root, approval="always")
    engine = client.engine
    assert engine is not None and engine.process.pid != os.getpid()
    # The engine yields the CPU to the console's screen.
    assert os.getpriority(os.PRIO_PROCESS, engine.process.pid) == min(
        19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
    try:
        snap = await client.snapshot()
        assert snap.engine == f"engine: pid {engine.process.pid}"
        model = ViewModel.from_snapshot(snap)
        client.follow(model.receive)
        other = await AttachedClient.connect(socket_path(root))  # others may attach meanwhile
        await other.snapshot()
        await other.close()
        await client.run()

        def waiting() -> bool:  # approval "always": the run waits for a person
            model.apply()
            return any(q["status"] == "awaiting_approval" for q in model.rows("queue").values())

        await until(waiting, 120)
    finally:
        await client.close()
    # Quitting the console stopped its engine cleanly: the socket is gone, the store closed.
    assert engine.process.returncode == 0
    assert not socket_path(root).exists()
    assert "stopping" in (root / ".factory" / "engine.log").read_text()


async def test_quitting_the_console_stops_its_engine_on_screen(tmp_path: Path) -> None:
    root = demo.build(tmp_path / "demo", "none")
    app = FactoryApp(connect=lambda: connect_own_engine(root, approval="always"),
                     start_run=True)
    shown: list[str] = []
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: app.model is not None and app.model.totals().agents_active > 0, 60)
        engine = app.client.engine
        status = app.query_one("#status")
        await pilot.press("q")
        shown.append(str(status.render()))  # said while the engine stops, before the exit
        await until(lambda: engine.process.returncode is not None, 60)
    assert "STOPPING" in shown[0]
    assert engine.process.returncode == 0 and not socket_path(root).exists()


async def test_a_repository_too_deep_for_a_socket_keeps_its_engine_in_the_console(
        tmp_path: Path) -> None:
    root = demo.build(tmp_path / ("deep" * 20) / "demo", "none")
    assert not socket_fits(socket_path(root))
    client = await connect_own_engine(root)
    try:  # the console works as it did before engines had processes of their own
        assert isinstance(client, InProcessClient)
        assert (await client.snapshot()).last_id >= 0
    finally:
        await client.close()


async def test_an_engine_that_cannot_start_says_why(tmp_path: Path) -> None:
    root = demo.build(tmp_path / "demo", "none")
    (root / ".factory.toml").write_text("[queue]\napproval = 'sometimes'\n")
    with pytest.raises(FactoryError, match="approval") as caught:  # before any process
        await connect_own_engine(root)
    assert ".factory.toml" in str(caught.value)
    assert not (root / ".factory" / "engine.log").exists()
    root = demo.build(tmp_path / "other", "none")
    async with serving(root):  # the store is open here: the child cannot open it as well
        with pytest.raises(FactoryError, match=r"the engine stopped as it started: \S"):
            await connect_own_engine(root)
    assert (root / ".factory" / "engine.log").exists()


async def test_a_console_with_no_daemon_to_attach_to_stops_with_the_reason(
        tmp_path: Path) -> None:
    app = FactoryApp(connect=lambda: connect_attached(tmp_path / "none.sock"))
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: app.connect_error is not None, 10)
        await pilot.pause(0.1)
    assert "no daemon listens here" in str(app.connect_error)
    assert app.return_code == 1
