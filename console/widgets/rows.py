"""A table that draws only the rows on screen, straight from the console's model.

DataTable keeps its own copy of every cell and redraws per cell update; with 2,000 agents
changing many times a second that copy is the cost. Here a row is formatted when its line
is painted, and the formatted line is kept until that row changes: an update repaints the
lines of the changed rows that are on screen and nothing else, and a cursor move repaints
two lines. Columns that depend on the clock (`live`) are repainted once a second.

The columns fit the width the table has: the least important ones (highest `drop`) go first,
those with a `min` shrink before that, and a `grow` column takes what is left over, so that an
80-column terminal keeps what a person decides by and a wide one shows everything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from agents.textsafe import clean_line
from console.widgets.home import KeepsFocusWhenShown

Row = dict[str, Any]


@dataclass(frozen=True)
class Column:
    title: str
    width: int
    value: Callable[[Row], str]
    align: str = "left"
    style: Callable[[Row], str] | None = None
    live: bool = False  # the value changes with the clock (an age, an elapsed time)
    drop: int = 0  # 0: always shown; otherwise dropped when narrow, highest first
    min: int | None = None  # may shrink down to this many cells before others are dropped
    grow: bool = False  # takes the width left over


def fit_columns(columns: Sequence[Column], width: int) -> list[tuple[Column, int]]:
    """The columns shown in `width` cells (one cell between columns), each with its width."""
    shown = list(columns)

    def least(c: Column) -> int:
        return c.min if c.min is not None else c.width

    while sum(least(c) + 1 for c in shown) > width:
        ranks = [c.drop for c in shown if c.drop]
        if not ranks:
            break
        # Columns of one rank go together (a pair's two branches, say), never one of them.
        shown = [c for c in shown if c.drop != max(ranks)]
    widths = [least(c) for c in shown]
    spare = width - sum(w + 1 for w in widths)
    shrunk = [i for i, c in enumerate(shown) if widths[i] < c.width]
    while spare > 0 and shrunk:  # shrunk columns back towards their width first, evenly
        for i in list(shrunk):
            if spare == 0:
                break
            widths[i] += 1
            spare -= 1
            if widths[i] == shown[i].width:
                shrunk.remove(i)
    growing = [i for i, c in enumerate(shown) if c.grow]
    for n, i in enumerate(growing):
        give = spare // (len(growing) - n)
        widths[i] += give
        spare -= give
    return list(zip(shown, widths, strict=True))


def _fit(text: str, width: int, align: str) -> str:
    """Cut with an ellipsis, at a word's end when one is near: never cut silently."""
    if len(text) > width:
        if width <= 1:
            return "…"[:width]
        cut = text[: width - 1]
        space = cut.rfind(" ")
        if space >= width * 2 // 3:
            cut = cut[:space]
        return (cut.rstrip() + "…").ljust(width)
    return text.rjust(width) if align == "right" else text.ljust(width)


class RowsView(KeepsFocusWhenShown, ScrollView, can_focus=True):
    """Rows by key, in an order the owner sets; a cursor; one line per row."""

    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "cursor(-20)", "Page up", show=False),
        Binding("pagedown", "cursor(20)", "Page down", show=False),
        Binding("home", "cursor(-1000000)", "First", show=False),
        Binding("end", "cursor(1000000)", "Last", show=False),
        Binding("enter", "activate", "Open", show=False),
    ]
    COMPONENT_CLASSES = {"rows--header", "rows--cursor", "rows--marked", "rows--empty"}
    # Focus shows twice, not by one colour alone: the header is underlined in the primary
    # colour and the cursor row goes from a tint to the accent itself.
    DEFAULT_CSS = """
    RowsView { height: 1fr; background: $surface; color: $foreground; }
    RowsView > .rows--header { text-style: bold; background: $panel; color: $foreground; }
    RowsView:focus > .rows--header { color: $primary; text-style: bold underline; }
    RowsView > .rows--cursor { background: $accent 30%; color: $foreground; }
    RowsView:focus > .rows--cursor { background: $accent; color: $background;
                                     text-style: bold; }
    RowsView > .rows--marked { color: $warning; text-style: bold; }
    RowsView > .rows--empty { color: $text-muted; text-style: italic; }
    """
    MARK = "✓ "  # a marked row says so in text, not only in colour

    cursor = reactive(0, repaint=False)
    LIVE_SECONDS = 1.0

    class Selected(Message):
        def __init__(self, view: RowsView, key: str | None) -> None:
            super().__init__()
            self.view = view
            self.key = key

        @property
        def control(self) -> RowsView:
            return self.view

    class Activated(Message):
        """Enter on a row: act on what is highlighted, without moving first."""

        def __init__(self, view: RowsView, key: str | None) -> None:
            super().__init__()
            self.view = view
            self.key = key

        @property
        def control(self) -> RowsView:
            return self.view

    def __init__(self, columns: Sequence[Column], *, id: str | None = None, empty: str = "",
                 markable: bool = False) -> None:
        """`empty` says what would appear here and how; `markable` gives each row a gutter
        that shows its mark."""
        super().__init__(id=id)
        self.columns = list(columns)
        self.empty = empty
        self.markable = markable
        self.shown: list[tuple[Column, int]] = [(c, c.width) for c in self.columns]
        self._fitted_to = -1
        self.keys: list[str] = []
        self.rows: dict[str, Row] = {}
        self.marked: set[str] = set()
        self._index: dict[str, int] = {}
        # Formatted lines of rows not under the cursor, full width, by key; and the styles
        # they were made with (computing a widget's style walks its ancestors: once, not
        # once per line).
        self._lines: dict[str, Strip] = {}
        self._styles: tuple[object, ...] | None = None

    def on_mount(self) -> None:
        if any(c.live for c in self.columns):
            self.set_interval(self.LIVE_SECONDS, self._tick)

    def _tick(self) -> None:
        self._lines.clear()
        self.refresh()

    def on_resize(self) -> None:
        self._fit()

    def _fit(self) -> None:
        """Choose the columns for the width there is (less the scrollbar, when rows overflow)."""
        width = self.size.width
        if not width:
            return
        if len(self.keys) + 1 > self.size.height:
            width -= self.styles.scrollbar_size_vertical
        width -= 2 if self.markable else 0
        if width == self._fitted_to:
            return
        self._fitted_to = width
        self.shown = fit_columns(self.columns, width)
        self.virtual_size = Size(self._line_width(), len(self.keys) + 1)
        self._lines.clear()
        self.refresh()

    def _line_width(self) -> int:
        return sum(w + 1 for _, w in self.shown) + (2 if self.markable else 0)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles = None
        self._lines.clear()

    # -- data ------------------------------------------------------------------------------

    def set_rows(self, rows: dict[str, Row], keys: list[str]) -> None:
        """Replace the order (after a filter or sort change, or rows added)."""
        selected = self.selected_key
        self.rows = rows
        self.keys = keys
        self._index = {k: i for i, k in enumerate(keys)}
        self._fit()
        self.virtual_size = Size(self._line_width(), len(keys) + 1)
        self._lines.clear()
        if selected in self._index:
            self.cursor = self._index[selected]
        self.cursor = max(0, min(self.cursor, len(keys) - 1))
        self.refresh()

    def rows_changed(self, keys: set[str]) -> None:
        """Forget these rows' lines and repaint the ones on screen."""
        lines, index = self._lines, self._index
        if len(keys) > len(index):  # a few queue rows among a thousand changed tasks
            keys = index.keys() & keys
        top = int(self.scroll_offset.y)
        bottom = top + self.size.height - 1
        for key in keys:
            lines.pop(key, None)
            i = index.get(key)
            if i is not None and top <= i < bottom:
                self._refresh_row(i + 1)

    def _refresh_row(self, y: int) -> None:
        """Repaint one line, up to the scrollbar: ScrollView.refresh_line's region reaches
        across the scrollbar, which is then painted again with every changed row."""
        self.refresh(Region(0, y - int(self.scroll_offset.y),
                            self.scrollable_content_region.width, 1))

    def has(self, key: str) -> bool:
        return key in self._index

    @property
    def selected_key(self) -> str | None:
        return self.keys[self.cursor] if 0 <= self.cursor < len(self.keys) else None

    def select_key(self, key: str) -> None:
        if key in self._index:
            self._move_to(self._index[key])

    def toggle_mark(self, key: str) -> None:
        self.marked.symmetric_difference_update({key})
        self.rows_changed({key})

    def clear_marks(self) -> None:
        marked, self.marked = self.marked, set()
        self.rows_changed(marked)

    # -- moving ----------------------------------------------------------------------------

    def action_activate(self) -> None:
        self.post_message(self.Activated(self, self.selected_key))

    def action_cursor(self, delta: int) -> None:
        if self.keys:
            self._move_to(max(0, min(len(self.keys) - 1, self.cursor + delta)))

    def _move_to(self, index: int) -> None:
        old, self.cursor = self.cursor, index
        top = int(self.scroll_offset.y)
        height = max(1, self.size.height - 1)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
            self.refresh()
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False)
            self.refresh()
        else:  # only the two lines the cursor left and reached change
            self._refresh_row(old + 1)
            self._refresh_row(self.cursor + 1)
        self.post_message(self.Selected(self, self.selected_key))

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            return
        index = int(self.scroll_offset.y) + event.y - 1
        if 0 <= index < len(self.keys):
            self._move_to(index)

    # -- painting --------------------------------------------------------------------------

    def _get_styles(self) -> tuple[Style, Style, Style, Style, Style]:
        key = (self.has_focus, self.app.theme)
        if self._styles is None or self._styles[0] != key:
            base = self.rich_style
            self._styles = (key, base, base + self.get_component_rich_style("rows--cursor"),
                            base + self.get_component_rich_style("rows--marked"),
                            base + self.get_component_rich_style("rows--header"),
                            base + self.get_component_rich_style("rows--empty"))
            self._lines.clear()
        _, base, cursor, marked, header, empty = self._styles
        return base, cursor, marked, header, empty  # type: ignore[return-value]

    def _format(self, key: str, row: Row | None, base: Style, plain: bool) -> Strip:
        # Cells hold what agents, models and branches wrote (names, reasons, questions):
        # made inert here, as the line is painted, not as rows change.
        segments = []
        if self.markable:
            segments.append(Segment(self.MARK if key in self.marked else "  ", base))
        for column, width in self.shown:
            text = _fit(clean_line(column.value(row)) if row else "", width, column.align)
            style = base
            if column.style is not None and row and not plain:
                style = base + Style.parse(column.style(row))
            segments.append(Segment(text, style))
            segments.append(Segment(" ", base))
        return Strip(segments)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        scroll_x = int(self.scroll_offset.x)
        base, cursor, marked, header, empty = self._get_styles()
        if y == 0:
            text = ("  " if self.markable else "") + " ".join(
                _fit(c.title, w, c.align) for c, w in self.shown)
            return Strip([Segment(text, header)]).crop(scroll_x, scroll_x + width) \
                .extend_cell_length(width, header)
        index = int(self.scroll_offset.y) + y - 1
        if not self.keys:
            return self._empty_line(y - 1, width, base, empty)
        if index >= len(self.keys):
            return Strip.blank(width, base)
        key = self.keys[index]
        if index == self.cursor:
            style, strip = cursor, self._format(key, self.rows.get(key), cursor, plain=True)
        elif key in self.marked:
            style, strip = marked, self._format(key, self.rows.get(key), marked, plain=False)
        else:
            style, strip = base, self._lines.get(key)  # type: ignore[assignment]
            if strip is None:
                strip = self._lines[key] = self._format(key, self.rows.get(key), base,
                                                        plain=False)
        return strip.crop(scroll_x, scroll_x + width).extend_cell_length(width, style)

    def _empty_line(self, y: int, width: int, base: Style, style: Style) -> Strip:
        """An empty table says what would be listed here and how it gets there, wrapped."""
        lines = _wrap(self.empty, max(10, width - 2)) if self.empty else []
        if 0 < y <= len(lines):  # one blank line under the header first
            return Strip([Segment(" " + lines[y - 1], style)]).extend_cell_length(width, base)
        return Strip.blank(width, base)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return [line for paragraph in text.split("\n")
            for line in textwrap.wrap(paragraph, width) or [""]]
