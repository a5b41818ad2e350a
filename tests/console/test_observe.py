"""Observing consoles and consoles that find their daemon again, against real daemons on
their real unix sockets.

What a person relies on:

- a console that said it observes (`factory console --observe`) changes nothing: the daemon
  refuses each of its commands with "this console observes: read-only", records none of
  them, and a later hello cannot take that back; a plain console beside it still acts;
- the observer's screen says so when a key that would act is pressed, and its header reads
  `observing: daemon PID`;
- a console whose daemon stops and starts again attaches by itself, is handed a fresh
  snapshot holding what changed meanwhile, and the rows that follow reach it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agents import commands as c
from agents.errors import FactoryError
from agents.wire import BatchEnd
from console.app import READ_ONLY, FactoryApp
from console.attached import AttachedClient
from console.cli import connect_attached, socket_path
from console.client import Snapshot
from console.widgets.queue import InboxPane
from tests.console.conftest import ENTRIES
from tests.console.test_app import SIZE, settle
from tests.console.test_attached import serving, until


def awaiting(tables: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    return sorted(k for k, q in tables["queue"].items() if q["status"] == "awaiting_approval")


async def test_the_daemon_refuses_every_command_of_an_observer(demo_root: Path) -> None:
    async with serving(demo_root) as daemon:
        store = daemon.factory.store
        observer = await AttachedClient.connect(socket_path(demo_root), observe=True)
        plain = await AttachedClient.connect(socket_path(demo_root))
        try:
            snap = await observer.snapshot()  # looking is allowed
            assert snap.engine.startswith("observing: daemon ")
            key = awaiting(snap.tables)[0]
            spec = next(demo_root.glob("specs/*.md"))
            before = store.last_id
            commands = [c.Approve(key=key), c.Reject(key=key, reason="no"),
                        c.Move(key=key, delta=1), c.Retry(key=key), c.CancelTask(key=key),
                        c.AnswerQuestion(question_id="q1", text="yes"),
                        c.SaveSpec(path=str(spec), text="# nothing\n"), c.StartRun()]
            for command in commands:
                with pytest.raises(FactoryError) as refused:
                    await observer.command(command)
                assert str(refused.value) == f"{READ_ONLY}: {command.op} refused"
            # The shortcuts the console calls go the same way.
            with pytest.raises(FactoryError, match=f"^{READ_ONLY}: approve refused$"):
                await observer.approve(key)
            with pytest.raises(FactoryError, match=f"^{READ_ONLY}: run refused$"):
                await observer.run()
            # Saying hello again without observe does not make it a steering console.
            await observer._call("hello")
            with pytest.raises(FactoryError, match=f"^{READ_ONLY}: approve refused$"):
                await observer.approve(key)
            await store.flush()
            assert store.last_id == before, "an observer's command is not even recorded"
            assert store.get("queue", key)["approval"] == "pending"
            assert not daemon.factory.background_running
            assert spec.read_text() != "# nothing\n"
            assert observer.lost is None, "a refusal keeps the connection"
            # A console that does not observe, beside it, still acts.
            await plain.approve(key)
            assert store.get("queue", key)["approval"] == "approved"
        finally:
            await observer.close()
            await plain.close()


async def test_the_observers_screen_refuses_keys_that_act(demo_root: Path) -> None:
    async with serving(demo_root) as daemon:
        app = FactoryApp(connect=lambda: connect_attached(socket_path(demo_root),
                                                          observe=True))
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app, lambda: app.model is not None)
            assert app.model is not None and app.model.engine.startswith("observing: daemon ")
            await pilot.press("5")
            inbox = app.query_one(InboxPane)
            await settle(pilot, app, lambda: inbox.table.selected_key is not None)
            key = inbox.table.selected_key
            for press in ("a", "x"):
                await pilot.press(press)
                await settle(pilot, app, lambda: any(
                    n.message == READ_ONLY for n in app._notifications))
                assert len(app.screen_stack) == 1, f"{press} opened a dialog"
                app.clear_notifications()
            await pilot.pause(0.2)
            assert daemon.factory.store.get("queue", key)["approval"] == "pending"


async def test_a_console_finds_its_restarted_daemon_and_catches_up(demo_root: Path) -> None:
    sock = socket_path(demo_root)
    lost: list[str] = []
    caught: list[Snapshot] = []
    ends: list[BatchEnd] = []
    async with serving(demo_root):
        client = await AttachedClient.connect(sock, reconnect=True)
        observer = await AttachedClient.connect(sock, observe=True, reconnect=True)
        client.on_lost = lost.append
        client.on_reconnected = caught.append
        observer.on_reconnected = caught.append
        first = await client.snapshot()
        await observer.snapshot()
        client.follow(lambda item: isinstance(item, BatchEnd) and ends.append(item))
        observer.follow(lambda item: None)
        keys = awaiting(first.tables)
        assert len(keys) == ENTRIES
    await until(lambda: lost, 5)
    assert "closed the connection" in lost[0]
    with pytest.raises(FactoryError, match="closed the connection"):
        await client.approve(keys[0])
    await asyncio.sleep(1)  # it keeps trying meanwhile
    async with serving(demo_root) as daemon:
        store = daemon.factory.store
        # A change made on the new daemon before the consoles are back.
        await daemon.factory.execute(c.Approve(key=keys[0]), by="test")
        await until(lambda: len(caught) == 2, 10)
        for snap in caught:
            assert snap.tables["queue"][keys[0]]["approval"] == "approved"
            assert awaiting(snap.tables) == keys[1:]
        assert client.lost is None and observer.lost is None
        # Reattached for real: commands go through (the observer's are still refused), and
        # the rows of later batches arrive.
        with pytest.raises(FactoryError, match=f"^{READ_ONLY}: approve refused$"):
            await observer.approve(keys[1])
        await client.approve(keys[1])
        assert store.get("queue", keys[1])["approval"] == "approved"
        await until(lambda: ends and ends[-1].last >= store.last_id, 10)
        await client.close()
        await observer.close()
        await asyncio.sleep(0.1)
        assert daemon.consoles == 0
