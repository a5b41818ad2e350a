"""The key rules a person relies on at a small terminal: a pane's key never types into an
editor or an input, Escape always leaves one for the pane's table, Tab moves between the
parts of a pane, and the first Enter acts on what is highlighted. Driven with Pilot over a
real store and git repository, at 80x24."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textual import events

from console.app import FactoryApp
from console.client import InProcessClient
from console.screens import HelpScreen, ReasonScreen
from console.widgets.agents import AgentsPane
from console.widgets.conflicts import ConflictsPane
from console.widgets.queue import QUESTION, InboxPane
from console.widgets.rows import RowsView
from console.widgets.specs import SpecsPane
from tests.console.sample import open_sample
from tests.console.test_app import settle

SMALL = (80, 24)


def screen_text(app: FactoryApp) -> str:
    """What the terminal shows for the top screen, line by line."""
    return "\n".join("".join(segment.text for segment in strip)
                     for strip in app.screen._compositor.render_strips())


@pytest.fixture
async def sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 ) -> AsyncIterator[InProcessClient]:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    client = await open_sample(tmp_path / "demo", monkeypatch)
    try:
        yield client
    finally:
        await client.close()


async def opened(pilot, app: FactoryApp) -> SpecsPane:  # type: ignore[no-untyped-def]
    pane = app.query_one(SpecsPane)
    await settle(pilot, app, lambda: pane.current is not None and app.model is not None
                 and bool(app.query(InboxPane)))
    return pane


async def test_pane_keys_never_type_into_the_spec(client: InProcessClient) -> None:
    app = FactoryApp(client)
    async with app.run_test(size=SMALL) as pilot:
        pane = await opened(pilot, app)
        original = pane.editor.text
        # Enter on the highlighted spec opens it in the editor, with the focus there.
        assert app.focused is app.query_one("#spec-list")  # where the console starts
        await pilot.press("enter")
        assert app.focused is pane.editor
        pane.editor.move_cursor((0, 0))
        await pilot.press(*"edit ")
        edited = pane.editor.text
        assert edited == "edit " + original
        # Tab moves on (to the findings), it is not typed; Escape comes back to the list.
        await pilot.press("tab")
        assert app.focused is app.query_one("#lint") and pane.editor.text == edited
        pane.editor.focus()
        await pilot.press("escape")
        assert app.focused is app.query_one("#spec-list")
        # The digits now switch panes; coming back with 1 focuses the list, not the editor,
        # so the next digit and Tab are keys too.
        for key in ("2", "3", "4", "5", "1", "2", "1", "tab", "shift+tab", "3", "1"):
            await pilot.press(key)
        await pilot.pause()
        assert app._tab() == "specs"
        assert app.focused is not pane.editor
        assert pane.editor.text == edited, "a pane key was typed into the spec"
        assert pane.dirty  # the edit itself is kept, unsaved


async def test_escape_leaves_the_agents_filter_for_the_table(client: InProcessClient) -> None:
    app = FactoryApp(client)
    async with app.run_test(size=SMALL) as pilot:
        await opened(pilot, app)
        await pilot.press("2")
        agents = app.query_one(AgentsPane)
        await settle(pilot, app, lambda: app.focused is agents.table)
        await pilot.press("slash")
        filter_input = app.query_one("#agent-filter")
        assert app.focused is filter_input
        await pilot.press(*"slug")
        await pilot.press("escape")
        assert app.focused is agents.table
        assert filter_input.value == "slug"  # type: ignore[attr-defined]
        assert sorted(agents.table.keys) == ["plan:slug.1", "slug.max-length.1",
                                             "slug.separator.1"]
        # ?, digits and q are keys again, not text in the filter.
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("3")
        assert app._tab() == "conflicts"
        await pilot.press("2")
        assert filter_input.value == "slug"  # type: ignore[attr-defined]
        assert app.focused is agents.table


async def test_first_enter_shows_the_highlighted_pairs_hunks(client: InProcessClient) -> None:
    app = FactoryApp(client)
    async with app.run_test(size=SMALL) as pilot:
        await opened(pilot, app)
        await pilot.press("3")
        pairs = app.query_one("#pairs-table", RowsView)
        await settle(pilot, app, lambda: app.focused is pairs and bool(pairs.keys))
        conflicting = [k for k, r in app.rows("conflicts").items() if r["status"] == "conflict"]
        pairs.cursor = pairs.keys.index(conflicting[0])  # highlighted, no move event
        await pilot.press("enter")
        hunks = app.query_one(ConflictsPane).query_one("#hunks")
        await settle(pilot, app, lambda: "<<<<<<<" in hunks.text)  # type: ignore[attr-defined]
        # The pair is named by its tasks (spec/task and title) and its branches.
        text = hunks.text  # type: ignore[attr-defined]
        a, b = app.rows("conflicts")[conflicting[0]]["a"], app.rows("conflicts")[
            conflicting[0]]["b"]
        for branch in (a, b):
            task = branch.removeprefix("factory/")
            title = app.rows("tasks")[task]["title"]
            assert f"{task} · {title}" in text and branch in text


async def test_the_question_is_shown_whole_and_answered_with_the_first_enter(
        sample: InProcessClient) -> None:
    app = FactoryApp(sample)
    async with app.run_test(size=SMALL) as pilot:
        await opened(pilot, app)
        await pilot.press("5")
        inbox = app.query_one(InboxPane)
        await settle(pilot, app, lambda: app.focused is inbox.table
                     and bool(inbox.table.keys))
        question = next(r for r in app.rows("questions").values())
        assert inbox.table.selected_key == QUESTION + question["id"]
        # The selected row's whole text is on screen under the table.
        shown = " ".join(screen_text(app).split())
        assert question["question"] in shown
        await pilot.press("enter")  # the first Enter acts on the highlighted question
        assert isinstance(app.screen, ReasonScreen)
        await pilot.pause()
        dialog = " ".join(screen_text(app).split())
        assert question["question"] in dialog, dialog
        for option in question["options"]:
            assert option in dialog
        await pilot.press("2", "enter")
        await settle(pilot, app, lambda: app.rows("questions")[question["id"]]["status"]
                     == "answered")
        assert app.rows("questions")[question["id"]]["answer"] == "no, print usage"


async def test_marks_show_without_colour(sample: InProcessClient) -> None:
    app = FactoryApp(sample)
    async with app.run_test(size=SMALL) as pilot:
        await opened(pilot, app)
        await pilot.press("5")
        inbox = app.query_one(InboxPane)
        await settle(pilot, app, lambda: app.focused is inbox.table
                     and len(inbox.table.keys) == 3)
        await pilot.press("down", "space")
        marked = next(iter(inbox.table.marked))
        line = next(line for line in screen_text(app).splitlines() if marked in line)
        assert line.lstrip().startswith("✓"), line


async def test_pane_keys_typed_fast_leave_the_focus_on_the_list(
        client: InProcessClient) -> None:
    """"2" then "1" arriving together (a fast typist, a slow terminal): the specs pane's
    list keeps the focus, even though the Hide from leaving the pane reaches it late; it
    went to the spec editor beside it, and the next key was typed into the spec."""
    app = FactoryApp(client)
    async with app.run_test(size=SMALL) as pilot:
        pane = await opened(pilot, app)
        await pilot.press("enter")
        assert app.focused is pane.editor
        await pilot.press("escape")
        listing = app.query_one("#spec-list")
        assert app.focused is listing
        for _ in range(3):
            app.post_message(events.Key("2", "2"))
            app.post_message(events.Key("1", "1"))
            await pilot.pause(0.3)
            assert app.focused is listing, app.focused
