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
HUNKS_HINT = "Select a pair and press enter: the hunks that would conflict show here."

def task_label(model: Any, branch: str | None) -> str:
    """The task a branch carries, `spec/task · title`: what a person knows the work by (the
    branch name alone is a path, and two hashes say nothing)."""
    row = model.rows("branches").get(branch or "") or {}
    key = f"{row.get('spec_id')}/{row.get('task_id')}" if row.get("spec_id") else \
        (branch or "").removeprefix("factory/")
    title = (model.rows("tasks").get(key) or {}).get("title")
    return f"{key} · {title}" if title else key


def branch_columns(model: Any) -> list[Column]:
    return [
        Column("branch", 34, lambda r: r["name"], min=20),
        Column("task", 36, lambda r: task_label(model, r["name"]), min=18),
        Column("state", 8, lambda r: r["status"] or "", style=lambda r: fmt.state_style(
            r["status"])),
        Column("changed paths", 60, lambda r: ", ".join(r["files"] or []), drop=1, min=20,
               grow=True),
    ]


def pair_columns(model: Any) -> list[Column]:
    return [
        Column("verdict", 9, lambda r: r["status"] or "", style=lambda r: fmt.state_style(
            r["status"])),
        Column("task a", 30, lambda r: task_label(model, r["a"]), min=18),
        Column("task b", 30, lambda r: task_label(model, r["b"]), min=18),
        Column("branch a", 30, lambda r: r["a"] or "", drop=3),
        Column("branch b", 30, lambda r: r["b"] or "", drop=3),
        Column("files", 40, lambda r: ", ".join(r["files"] or []), drop=2, min=16, grow=True),
    ]


NO_BRANCHES = ("No open branches. Each agent works on its own branch, factory/<spec>/<task>; "
               "it is listed here with the paths it changes until it lands or is rejected.")
NO_PAIRS = ("No two open branches change the same paths. When they do, the pair is listed "
            "here with the verdict of a trial merge (git merge-tree), before either lands.")


class ConflictsPane(Vertical):
    DEFAULT_CSS = """
    ConflictsPane #branches-table { height: 1fr; }
    ConflictsPane #conflicts-lower { height: 2fr; }
    ConflictsPane #pairs-table { width: 1fr; }
    ConflictsPane #hunks { width: 1fr; }
    ConflictsPane Label { color: $text-muted; padding: 0 1; text-wrap: nowrap;
                          text-overflow: ellipsis; }
    """

    def __init__(self, model: Any, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model = model

    def compose(self) -> ComposeResult:
        yield Label("open branches")
        yield RowsView(branch_columns(self.model), id="branches-table", empty=NO_BRANCHES)
        yield Label("pairs with overlapping paths (enter: show the conflicting hunks)")
        with Horizontal(id="conflicts-lower"):
            yield RowsView(pair_columns(self.model), id="pairs-table", empty=NO_PAIRS)
            yield TextArea(HUNKS_HINT, read_only=True, id="hunks", show_line_numbers=False)

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
        row = self.model.rows("conflicts").get(pair) or {}
        names = "\n".join(clean_line(part) for part in (
            task_label(self.model, row.get("a")), f"  {row.get('a') or ''}",
            f"× {task_label(self.model, row.get('b'))}", f"  {row.get('b') or ''}"))
        if not hunks:
            area.load_text(f"{names}\n\nmerges cleanly: no conflicting hunks")
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
        area.load_text(names + "\n\n" + "\n\n".join(parts))
