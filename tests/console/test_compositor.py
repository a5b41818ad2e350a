"""The console's compositor paints exactly what Textual's full render would show.

Every update the app sends is played onto a grid of cells, as a terminal would, and after
each one the grid is compared, cell by cell (text and style), with a full render of the
screen at that moment: while agents work, rows change, the cursor moves, the timeline
follows, a notification comes and goes, a dialog opens and closes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.segment import ControlType, Segment
from rich.style import Style
from textual.app import App, ComposeResult
from textual.screen import Screen
from textual.widgets import Static

from agents import events as ev
from console.app import FactoryApp
from console.client import InProcessClient
from console.compositor import FactoryScreen, LineCompositor, _bands, _cover, _covered
from console.widgets.agents import AgentsPane
from tests.console.test_app import SIZE, settle

Cell = tuple[str, Style | None]


def cells(segments: Any, grid: list[list[Cell]]) -> None:
    """Write segments onto the grid as a terminal would: moves are absolute, 0-based."""
    x = y = 0
    for segment in segments:
        if segment.control:
            for code in segment.control:
                if code[0] == ControlType.CURSOR_MOVE_TO:
                    x, y = code[1], code[2]
            continue
        for ch in segment.text:
            if ch == "\n":
                x, y = 0, y + 1
                continue
            if 0 <= y < len(grid) and 0 <= x < len(grid[y]):
                grid[y][x] = (ch, segment.style)
            x += cell_len(ch)


def full(app: App[Any]) -> list[list[Cell]]:
    width, height = app.screen.size
    grid: list[list[Cell]] = [[(" ", None)] * width for _ in range(height)]
    for y, strip in enumerate(app.screen._compositor.render_strips()):
        x = 0
        for segment in strip:
            for ch in segment.text:
                grid[y][x] = (ch, segment.style)
                x += cell_len(ch)
    return grid


def differences(shown: list[list[Cell]], truth: list[list[Cell]]) -> list[str]:
    out = []
    for y, (a, b) in enumerate(zip(shown, truth, strict=True)):
        if a != b:
            text_a = "".join(c for c, _ in a)
            text_b = "".join(c for c, _ in b)
            first = next(x for x in range(len(a)) if a[x] != b[x])
            out.append(f"line {y} from column {first}:\n  shown {text_a!r}\n  truth {text_b!r}"
                       f"\n  styles {a[first][1]} / {b[first][1]}")
    return out


class Terminal:
    """Plays the main screen's updates onto a grid and checks each against a full render."""

    def __init__(self, app: App[Any], size: tuple[int, int] = SIZE) -> None:
        self.app = app
        width, height = size
        self.grid: list[list[Cell]] = [[(" ", None)] * width for _ in range(height)]
        self.console = Console(width=width, height=height, color_system="truecolor",
                               force_terminal=True, legacy_windows=False)
        self.partial = 0
        self.compared = 0
        self.errors: list[str] = []

    def settled(self) -> bool:
        """Nothing on the main screen waits for a later frame (a widget refreshed while
        this frame was rendered is painted by the next one, not this one)."""
        screen = self.app.screen
        return not self.errors and screen is self.app.screen_stack[0] and not (
            screen._layout_required or screen._scroll_required or screen._repaint_required
            or any(widget._repaint_regions for widget in screen._compositor.visible_widgets))

    def install(self) -> None:
        compositor = self.app.screen._compositor
        assert isinstance(compositor, LineCompositor)
        render_update = compositor.render_update

        def checked(*args: Any, **kwargs: Any) -> Any:
            update = render_update(*args, **kwargs)
            if update is not None:
                if type(update).__name__ == "ChopsUpdate":
                    self.partial += 1
                cells(self.console.render(update), self.grid)
                if self.settled():
                    self.compared += 1
                    self.errors += differences(self.grid, full(self.app))
            return update

        compositor.render_update = checked  # type: ignore[method-assign]
        # Start from what a full render shows (the frames before the hook went out whole).
        self.grid = full(self.app)


async def test_partial_updates_match_full_renders(client: InProcessClient) -> None:
    app = FactoryApp(client, flush_seconds=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, lambda: app.model is not None)
        await pilot.press("2")
        pane = app.query_one(AgentsPane)
        await settle(pilot, app, lambda: pane.timeline.agent_id is not None)
        terminal = Terminal(app)
        terminal.install()
        agents = list(app.rows("agents"))
        store = client.factory.store
        for step in range(12):  # agents work: rows, header and timeline change together
            await store.append(*[ev.AgentTurn(
                spec_id=app.rows("agents")[a]["spec_id"], task_id=app.rows("agents")[a][
                    "task_id"], agent_id=a, step=100 + step, model="replay/test",
                message={"role": "assistant", "content": f"turn {step}"}, tokens_in=10 * step,
                tokens_out=1, cost_usd=0.001) for a in agents[step % 3::3]])
            await pilot.press("down" if step % 4 < 2 else "up")
            await pilot.pause(0.06)
        app.notify("a toast over the rows", timeout=0.3)
        await pilot.pause(0.2)
        await pilot.press("down", "down", "down")
        await pilot.pause(0.5)  # the toast goes: what it covered is painted again
        await pilot.press("question_mark")
        await pilot.pause(0.2)
        await pilot.press("escape")
        await pilot.pause(0.2)
        await pilot.press("up")
        await asyncio.sleep(1.1)  # the timeline's next write, the clock's columns
        await pilot.pause(0.1)
        assert not terminal.errors, "\n".join(terminal.errors[:3])
        # The check saw the partial updates it is about.
        assert terminal.partial > 20 and terminal.compared > 10, (terminal.partial,
                                                                   terminal.compared)


class Stacked(App[None]):
    """Widgets of one line each, one under the other: a band of changed lines crosses them."""

    def get_default_screen(self) -> Screen[Any]:
        return FactoryScreen(id="_default")

    def compose(self) -> ComposeResult:
        for i in range(4):
            yield Static(f"line {i}", id=f"s{i}")


async def test_a_band_across_widgets_paints_each_line() -> None:
    app = Stacked()
    async with app.run_test(size=(40, 6)) as pilot:
        await pilot.pause()
        terminal = Terminal(app, (40, 6))
        terminal.install()
        for round_ in range(3):
            for i in (1, 2):  # adjacent lines of two widgets change in one frame
                app.query_one(f"#s{i}", Static).update(f"round {round_} line {i}", layout=False)
            await pilot.pause()
        assert not terminal.errors, "\n".join(terminal.errors[:3])
        assert terminal.compared >= 3


def test_bands_join_adjacent_lines_only() -> None:
    bands = _bands([(1, 0, 10), (2, 5, 20), (4, 0, 3), (9, 2, 4), (10, 0, 1)])
    assert [(b.top, b.bottom, b.left, b.right) for b in bands] == [
        (1, 3, 0, 20), (4, 5, 0, 3), (9, 11, 0, 4)]


def test_cover_merges_touching_columns() -> None:
    covered: list[tuple[int, int]] = []
    _cover(covered, 0, 158)
    assert not _covered(covered, 0, 160)
    _cover(covered, 158, 160)
    assert covered == [(0, 160)] and _covered(covered, 0, 160)
    _cover(covered, 170, 180)
    assert covered == [(0, 160), (170, 180)] and not _covered(covered, 150, 175)


def test_segments_played_onto_a_grid() -> None:  # the test's own terminal, checked
    grid: list[list[Cell]] = [[(" ", None)] * 4 for _ in range(2)]
    from rich.control import Control

    cells([Control.move_to(1, 1).segment, Segment("ab"), Segment("\n"), Segment("c")], grid)
    assert "".join(c for c, _ in grid[1]) == " ab " and grid[0][0][0] == " "
