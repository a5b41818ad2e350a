"""Branch conflict view: open branches and what they change, the forecast for every
overlapping pair, and the conflicting hunks of the selected pair."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, TextArea

from agents.statuses import BranchStatus
from agents.textsafe import clean, clean_line
from console import format as fmt
from console.widgets.rows import Column, RowsView

OPEN = (BranchStatus.OPEN, BranchStatus.LANDING)

BRANCH_COLUMNS = [
    Column("branch", 34, lambda r: r["name"]),
    Column("state", 8, lambda r: r["status"] or "", style=lambda r: fmt.state_style(
        r["status"])),
    Column("changed paths", 60, lambda r: ", ".join(r["files"] or [])),
]

PAIR_COLUMNS = [
    Column("verdict", 9, lambda r: r["status"] or "", style=lambda r: fmt.state_style(
        r["status"])),
    Column("branch a", 30, lambda r: r["a"] or ""),
    Column("branch b", 30, lambda r: r["b"] or ""),
    Column("files", 40, lambda r: ", ".join(r["files"] or [])),
]


class ConflictsPane(Vertical):
    DEFAULT_CSS = """
    ConflictsPane #branches-table { height: 1fr; }
    ConflictsPane #conflicts-lower { height: 2fr; }
    ConflictsPane #pairs-table { width: 1fr; }
    ConflictsPane #hunks { width: 1fr; }
    ConflictsPane Label { color: $text-muted; padding: 0 1; }
    """

    def __init__(self, model: Any, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model = model

    def compose(self) -> ComposeResult:
        yield Label("open branches")
        yield RowsView(BRANCH_COLUMNS, id="branches-table")
        yield Label("pairs with overlapping paths (enter: show the conflicting hunks)")
        with Horizontal(id="conflicts-lower"):
            yield RowsView(PAIR_COLUMNS, id="pairs-table")
            yield TextArea("", read_only=True, id="hunks", show_line_numbers=True)

    def refill(self) -> None:
        branches = self.model.rows("branches")
        self.query_one("#branches-table", RowsView).set_rows(
            branches, sorted(k for k, r in branches.items() if r["status"] in OPEN))
        pairs = self.model.rows("conflicts")
        order = {"conflict": 0, "clean": 1, "closed": 2}
        self.query_one("#pairs-table", RowsView).set_rows(
            pairs, sorted(pairs, key=lambda k: (order.get(pairs[k]["status"], 3), k)))

    def show_hunks(self, pair: str, hunks: dict[str, str]) -> None:
        """The branches' text, made inert: TextArea writes a line's characters as they are."""
        area = self.query_one("#hunks", TextArea)
        if not hunks:
            area.load_text(f"{clean_line(pair)}\n\nmerges cleanly: no conflicting hunks")
            return
        parts = []
        for path, text in hunks.items():
            path = clean_line(path)
            lines = clean(text).splitlines()
            keep: list[str] = []
            inside = False
            for number, line in enumerate(lines, 1):
                if line.startswith("<<<<<<<"):
                    inside = True
                    keep.append(f"@@ {path}:{number}")
                if inside:
                    keep.append(line)
                if line.startswith(">>>>>>>"):
                    inside = False
            parts.append("\n".join(keep))
        area.load_text("\n\n".join(parts))
