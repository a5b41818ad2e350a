"""A table that draws only the rows on screen, straight from the console's model.

DataTable keeps its own copy of every cell and redraws per cell update; with 2,000 agents
changing many times a second that copy is the cost. Here a row is formatted when its line
is painted, so an update is "refresh if visible" and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

Row = dict[str, Any]


@dataclass(frozen=True)
class Column:
    title: str
    width: int
    value: Callable[[Row], str]
    align: str = "left"
    style: Callable[[Row], str] | None = None


def _fit(text: str, width: int, align: str) -> str:
    if len(text) > width:
        return text[: max(0, width - 1)] + "…"
    return text.rjust(width) if align == "right" else text.ljust(width)


class RowsView(ScrollView, can_focus=True):
    """Rows by key, in an order the owner sets; a cursor; one line per row."""

    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "cursor(-20)", "Page up", show=False),
        Binding("pagedown", "cursor(20)", "Page down", show=False),
        Binding("home", "cursor(-1000000)", "First", show=False),
        Binding("end", "cursor(1000000)", "Last", show=False),
    ]
    COMPONENT_CLASSES = {"rows--header", "rows--cursor", "rows--marked"}
    DEFAULT_CSS = """
    RowsView { height: 1fr; }
    RowsView > .rows--header { text-style: bold; background: $panel; }
    RowsView > .rows--cursor { background: $accent 40%; }
    RowsView:focus > .rows--cursor { background: $accent; color: $text; }
    RowsView > .rows--marked { color: $warning; }
    """

    cursor = reactive(0, repaint=False)

    class Selected(Message):
        def __init__(self, view: RowsView, key: str | None) -> None:
            super().__init__()
            self.view = view
            self.key = key

        @property
        def control(self) -> RowsView:
            return self.view

    def __init__(self, columns: Sequence[Column], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.columns = list(columns)
        self.keys: list[str] = []
        self.rows: dict[str, Row] = {}
        self.marked: set[str] = set()
        self._index: dict[str, int] = {}

    # -- data ------------------------------------------------------------------------------

    def set_rows(self, rows: dict[str, Row], keys: list[str]) -> None:
        """Replace the order (after a filter or sort change, or rows added)."""
        selected = self.selected_key
        self.rows = rows
        self.keys = keys
        self._index = {k: i for i, k in enumerate(keys)}
        self.virtual_size = Size(sum(c.width + 1 for c in self.columns), len(keys) + 1)
        if selected in self._index:
            self.cursor = self._index[selected]
        self.cursor = max(0, min(self.cursor, len(keys) - 1))
        self.refresh()

    def rows_changed(self, keys: set[str]) -> None:
        """Repaint only if one of these rows is on screen."""
        top = int(self.scroll_offset.y)
        bottom = top + self.size.height
        for key in keys:
            i = self._index.get(key)
            if i is not None and top <= i + 1 < bottom + 1:
                self.refresh()
                return

    def has(self, key: str) -> bool:
        return key in self._index

    @property
    def selected_key(self) -> str | None:
        return self.keys[self.cursor] if 0 <= self.cursor < len(self.keys) else None

    def select_key(self, key: str) -> None:
        if key in self._index:
            self.cursor = self._index[key]
            self._show_cursor()

    # -- moving ----------------------------------------------------------------------------

    def action_cursor(self, delta: int) -> None:
        if not self.keys:
            return
        self.cursor = max(0, min(len(self.keys) - 1, self.cursor + delta))
        self._show_cursor()

    def _show_cursor(self) -> None:
        top = int(self.scroll_offset.y)
        height = max(1, self.size.height - 1)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False)
        self.refresh()
        self.post_message(self.Selected(self, self.selected_key))

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            return
        index = int(self.scroll_offset.y) + event.y - 1
        if 0 <= index < len(self.keys):
            self.cursor = index
            self._show_cursor()

    # -- painting --------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        scroll_x = int(self.scroll_offset.x)
        if y == 0:
            text = " ".join(_fit(c.title, c.width, c.align) for c in self.columns)
            style = self.get_component_rich_style("rows--header")
            return Strip([Segment(text, style)]).crop(scroll_x, scroll_x + width) \
                .extend_cell_length(width, style)
        index = int(self.scroll_offset.y) + y - 1
        if index >= len(self.keys):
            return Strip.blank(width, self.rich_style)
        key = self.keys[index]
        row = self.rows.get(key)
        base = self.rich_style
        if index == self.cursor:
            base = base + self.get_component_rich_style("rows--cursor")
        elif key in self.marked:
            base = base + self.get_component_rich_style("rows--marked")
        segments = []
        for column in self.columns:
            text = _fit(column.value(row) if row else "", column.width, column.align)
            style = base
            if column.style is not None and row and index != self.cursor:
                style = base + Style.parse(column.style(row))
            segments.append(Segment(text, style))
            segments.append(Segment(" ", base))
        return Strip(segments).crop(scroll_x, scroll_x + width).extend_cell_length(width, base)
