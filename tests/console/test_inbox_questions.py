"""An agent's question reaches the inbox of a supervising console, is answered with keys, and
the answer reaches the agent (a real demo run: real store, git repository, replay model)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agents import demo
from console.app import FactoryApp
from console.client import InProcessClient
from console.screens import ReasonScreen
from console.widgets.agents import AgentsPane
from console.widgets.queue import QUESTION, InboxPane
from tests.console.conftest import open_client
from tests.console.test_app import SIZE, settle


@pytest.fixture
async def fresh_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       ) -> AsyncIterator[InProcessClient]:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    async with open_client(demo.build(tmp_path / "demo", "none")) as c:
        yield c


def pending(app: FactoryApp) -> list[dict]:  # type: ignore[type-arg]
    return [q for q in app.rows("questions").values() if q["status"] == "pending"]


async def test_question_waits_in_inbox_and_the_answer_reaches_the_agent(
        fresh_client: InProcessClient) -> None:
    assert fresh_client.factory.supervised, "an open console means a person is watching"
    app = FactoryApp(fresh_client, start_run=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, lambda: bool(pending(app)), timeout=120)
        question = pending(app)[0]
        assert question["task_key"] == "slug/max-length"
        await pilot.press("5")
        inbox = app.query_one(InboxPane)
        await settle(pilot, app, lambda: inbox.table.selected_key == QUESTION + question["id"])
        header = str(app.query_one("#status").render())
        assert "questions 1" in header
        agent = app.rows("agents")[question["agent_id"]]
        assert agent["status"] == "waiting"

        await pilot.press("x")  # a question cannot be rejected: nothing is sent
        assert not isinstance(app.screen, ReasonScreen)
        await pilot.press("a")
        assert isinstance(app.screen, ReasonScreen)
        assert "letters and digits only" in " ".join(
            str(label.render()) for label in app.screen.query("Static"))
        await pilot.press("enter")  # empty: refused, the dialog stays
        assert isinstance(app.screen, ReasonScreen)
        await pilot.press("1", "enter")  # the first option, by its number
        await settle(pilot, app, lambda: app.rows("questions")[question["id"]]["status"]
                     == "answered")
        row = app.rows("questions")[question["id"]]
        assert (row["answer"], row["answered_by"]) == ("the whole slug", "person")
        await settle(pilot, app, lambda: QUESTION + question["id"] not in inbox.table.keys)

        # The agent goes on, and its conversation holds the person's answer.
        await settle(pilot, app, lambda: app.rows("agents")[question["agent_id"]]["status"]
                     != "waiting", timeout=60)
        messages = await fresh_client.factory.store.messages(question["agent_id"])
        results = [m["content"] for m in messages if m["role"] == "tool"]
        assert any("person supervising this run: the whole slug" in r for r in results)

        # Its timeline tells the story too.
        await pilot.press("2")
        agents = app.query_one(AgentsPane)
        agents.table.select_key(question["agent_id"])
        text = lambda: "\n".join("".join(seg.text for seg in line)  # noqa: E731
                                 for line in agents.timeline.lines)
        await settle(pilot, app, lambda: "answered by a person: the whole slug" in text())
        assert "ASKS: Should max_length count the whole slug" in text()
