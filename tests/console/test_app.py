"""The console's actions, driven with Pilot against a real store and git repository."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from agents import events as ev
from console.app import FactoryApp
from console.client import InProcessClient
from console.screens import DiffScreen, HelpScreen, QuitScreen, ReasonScreen
from console.widgets.agents import AgentsPane
from console.widgets.conflicts import ConflictsPane
from console.widgets.queue import InboxPane, QueuePane
from console.widgets.specs import SpecsPane
from tests.console.conftest import ENTRIES

SIZE = (160, 48)


async def settle(pilot, app: FactoryApp, until=None, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    """Let flushes run until a condition holds (the engine works in the same loop)."""
    async with asyncio.timeout(timeout):
        while True:
            await pilot.pause(0.05)
            if until is None or until():
                return


def queue_status(app: FactoryApp, key: str) -> str:
    return app.rows("queue")[key]["status"]


async def test_header_shows_totals_and_pending_approvals(client: InProcessClient) -> None:
    app = FactoryApp(client)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, lambda: app.model is not None)
        header = str(app.query_one("#status").render())
        assert "approvals 7" in header
        assert "tasks 0/7" in header
        assert "sandbox none" not in header and "UNSANDBOXED" in header


async def test_spec_edit_save_writes_file_records_event_and_lints(
        client: InProcessClient, demo_root: Path) -> None:
    app = FactoryApp(client)
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one(SpecsPane)
        await settle(pilot, app, lambda: pane.current is not None)
        assert pane.current is not None and pane.current.path.name == "cli.md"
        text = pane.editor.text.replace("## Invariants\n- Importing `textkit` has no side "
                                        "effects.\n", "")
        pane.editor.load_text(text + "\nThis should probably work etc.\n")
        assert pane.dirty
        await pilot.press("ctrl+s")
        await settle(pilot, app, lambda: not pane.dirty)
        on_disk = (demo_root / "specs" / "cli.md").read_text()
        assert on_disk.endswith("This should probably work etc.\n")
        codes = {f.code for f in pane.findings}
        assert "vague-word" in codes or any("vague" in f.message for f in pane.findings)
        events = await client.events(0, 100000)
        saved = [e.event for e in events if e.event.kind == "spec_saved"]
        assert saved and saved[-1].path == "specs/cli.md"
        # Selecting a finding moves the editor's cursor to its line.
        first = pane.findings[0]
        pane.jump_to(0)
        assert pane.editor.cursor_location[0] == first.line - 1


async def test_quitting_with_unsaved_changes_asks_first(client: InProcessClient) -> None:
    app = FactoryApp(client)
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one(SpecsPane)
        await settle(pilot, app, lambda: pane.current is not None)
        pane.editor.insert("unsaved ")
        app.action_quit_safely()
        await pilot.pause()
        assert isinstance(app.screen, QuitScreen)
        await pilot.click("#stay")
        await pilot.pause()
        assert not isinstance(app.screen, QuitScreen) and app.is_running
        assert pane.dirty


async def test_run_spec_refuses_unsaved_text(client: InProcessClient) -> None:
    app = FactoryApp(client)
    notes: list[str] = []
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one(SpecsPane)
        await settle(pilot, app, lambda: pane.current is not None)
        app.notify = lambda message, **kw: notes.append(message)  # type: ignore[method-assign]
        pane.editor.insert("x")
        await app.action_run_spec()
        assert any("save the spec first" in n for n in notes)
        assert not client.running


async def test_agents_table_filter_and_timeline(client: InProcessClient) -> None:
    app = FactoryApp(client)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, lambda: app.model is not None)
        await pilot.press("2")
        pane = app.query_one(AgentsPane)
        assert len(pane.table.keys) == 10  # three planners, seven implementers
        # The highlighted agent's story shows with the pane, before any move.
        await settle(pilot, app, lambda: pane.timeline.agent_id == pane.table.selected_key
                     and len(pane.timeline.lines) > 1)
        await pilot.press("slash")
        await pilot.press(*"spec:slug")
        await pilot.press("enter")
        assert sorted(pane.table.keys) == ["plan:slug.1", "slug.max-length.1",
                                           "slug.separator.1"]
        pane.table.select_key("slug.separator.1")
        await settle(pilot, app, lambda: pane.timeline.agent_id == "slug.separator.1")
        lines = "\n".join(str(line.text) for line in pane.timeline.lines)
        assert "edit_file" in lines and "finished: finished" in lines
        # It follows the agent: what the agent does next is written (at most once a second).
        async def note(text: str) -> None:
            await client.factory.store.append(ev.AgentNote(
                spec_id="slug", task_id="separator", agent_id="slug.separator.1", step=99,
                message={"role": "user", "content": text}))

        await note("a note from the follow test")
        await settle(pilot, app, lambda: "a note from the follow test" in "\n".join(
            str(line.text) for line in pane.timeline.lines))
        # Pause holds new events; following again writes them.
        await pilot.press("p")
        assert pane.timeline.paused
        await note("held while paused")
        await settle(pilot, app, lambda: bool(pane.timeline.held))
        assert "held while paused" not in "\n".join(str(x.text) for x in pane.timeline.lines)
        await pilot.press("p")
        assert not pane.timeline.paused
        assert "held while paused" in "\n".join(str(x.text) for x in pane.timeline.lines)


async def test_approve_lands_through_the_live_run(client: InProcessClient) -> None:
    app = FactoryApp(client)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, lambda: app.model is not None)
        await client.run()
        await pilot.press("5")
        inbox = app.query_one(InboxPane)
        # (stats/sentences meets no gate that sends it back: it lands as it is)
        inbox.table.select_key("stats/sentences")
        await pilot.press("a")
        await settle(pilot, app, lambda: queue_status(app, "stats/sentences") == "landed",
                     timeout=60)
        assert "stats/sentences" not in inbox.table.keys
        await settle(pilot, app, lambda: "landed 1" in str(app.query_one("#status").render()))
        assert "approvals 6" in str(app.query_one("#status").render())


async def test_batch_approve_marked_entries(client: InProcessClient) -> None:
    app = FactoryApp(client)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, lambda: app.model is not None)
        await pilot.press("5")
        inbox = app.query_one(InboxPane)
        first, second = inbox.table.keys[:2]
        await pilot.press("space", "space")
        assert inbox.table.marked == {first, second}
        await pilot.press("a")
        await settle(pilot, app, lambda: first not in inbox.table.keys
                     and second not in inbox.table.keys)
        assert app.rows("queue")[first]["approval"] == "approved"
        assert app.rows("queue")[second]["approval"] == "approved"
        assert len(inbox.table.keys) == ENTRIES - 2


async def test_reject_needs_a_reason_and_records_it(client: InProcessClient) -> None:
    app = FactoryApp(client)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, lambda: app.model is not None)
        await pilot.press("4")
        queue = app.query_one(QueuePane)
        key = queue.table.selected_key
        assert key is not None
        await pilot.press("x")
        assert isinstance(app.screen, ReasonScreen)
        await pilot.press("enter")  # empty: refused, the screen stays
        assert isinstance(app.screen, ReasonScreen)
        await pilot.press(*"too risky")
        await pilot.press("enter")
        await settle(pilot, app, lambda: queue_status(app, key) == "rejected")
        assert app.rows("queue")[key]["reason"] == "too risky"


async def test_move_changes_landing_order(client: InProcessClient) -> None:
    app = FactoryApp(client)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, lambda: app.model is not None)
        await pilot.press("4")
        queue = app.query_one(QueuePane)
        second = queue.table.keys[1]
        first = queue.table.keys[0]
        queue.table.select_key(second)
        await pilot.press("left_square_bracket")
        await settle(pilot, app, lambda: queue.table.keys[0] == second)
        assert queue.table.keys[1] == first
        await pilot.press("right_square_bracket")
        await settle(pilot, app, lambda: queue.table.keys[0] == first)


async def test_view_diff_and_retry(client: InProcessClient) -> None:
    app = FactoryApp(client)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, lambda: app.model is not None)
        await pilot.press("4")
        queue = app.query_one(QueuePane)
        queue.table.select_key("stats/sentences")
        await pilot.press("v")
        await settle(pilot, app, lambda: isinstance(app.screen, DiffScreen))
        assert "def sentence_count" in app.screen.diff  # type: ignore[attr-defined]
        await pilot.press("escape")
        # Reject, then retry: the entry goes back in the queue with the same commit.
        await client.reject("stats/sentences", "look again")
        await settle(pilot, app, lambda: queue_status(app, "stats/sentences") == "rejected")
        await client.run()
        await settle(pilot, app, lambda: app.rows("tasks")["stats/sentences"]["status"]
                     == "rejected", timeout=60)
        queue.table.select_key("stats/sentences")
        await pilot.press("r")
        await settle(pilot, app, lambda: queue_status(app, "stats/sentences")
                     not in ("rejected",), timeout=30)


async def test_conflict_pairs_and_hunks(client: InProcessClient) -> None:
    app = FactoryApp(client)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, lambda: app.model is not None)
        await pilot.press("3")
        pairs = app.query_one("#pairs-table")
        conflicting = [k for k, r in app.rows("conflicts").items() if r["status"] == "conflict"]
        assert conflicting, "the demo's separator and max-length branches conflict"
        pair = next(k for k in conflicting if "slug" in k)
        pairs.select_key(pair)  # type: ignore[attr-defined]
        hunks = app.query_one(ConflictsPane).query_one("#hunks")
        await settle(pilot, app, lambda: "<<<<<<<" in hunks.text)  # type: ignore[attr-defined]
        assert "textkit/slug.py" in hunks.text  # type: ignore[attr-defined]


async def test_help_palette_and_theme_remembered(client: InProcessClient,
                                                 tmp_path: Path) -> None:
    app = FactoryApp(client, theme="factory-light")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, lambda: app.model is not None)
        assert app.theme == "factory-light"
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for wanted in ("Approve", "Reject", "Move entry up", "Retry entry", "View diff",
                       "Save spec", "Run or re-plan spec", "Theme: factory-high-contrast"):
            assert wanted in titles
        await pilot.press("ctrl+p")
        await pilot.press(*"high-contrast")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await settle(pilot, app, lambda: app.theme == "factory-high-contrast")
    saved = json.loads((tmp_path / "xdg" / "factory" / "console.json").read_text())
    assert saved["theme"] == "factory-high-contrast"


async def test_arrow_keys_move_whatever_has_focus(client: InProcessClient) -> None:
    """Up and down are taken by the app for tables (the quick path for the keys a person
    holds down), and reach the editor, the filter and dialogs unchanged everywhere else."""
    app = FactoryApp(client)
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one(SpecsPane)
        await settle(pilot, app, lambda: pane.current is not None)
        pane.editor.focus()
        pane.editor.move_cursor((0, 0))
        await pilot.press("down", "down", "up")
        assert pane.editor.cursor_location[0] == 1, "the editor's cursor moved, not a table's"

        app.action_tab("agents")  # (in the editor, "2" is text)
        agents = app.query_one(AgentsPane)
        await settle(pilot, app, lambda: app.focused is agents.table)
        await pilot.press("down", "down")
        assert agents.table.cursor == 2
        await pilot.press("up")
        assert agents.table.cursor == 1

        await pilot.press("question_mark")  # a modal screen: the table stays where it was
        assert app.screen is not app.screen_stack[0]
        await pilot.press("down", "down")
        assert agents.table.cursor == 1
