"""Agents pane: every agent in one virtual table, filterable, and the selected one's
timeline underneath."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label

from agents.statuses import AgentStatus
from console import format as fmt
from console.widgets.rows import Column, RowsView

if TYPE_CHECKING:
    from console.widgets.timeline import Timeline

LIVE = (AgentStatus.RUNNING, AgentStatus.WAITING)

# Narrow terminals keep agent, task, state and USD; the others go, highest `drop` first.
AGENT_COLUMNS = [
    Column("agent", 26, lambda r: r["id"] or "", min=14),
    Column("role", 11, lambda r: r["role"] or "", drop=6),
    Column("task", 22, lambda r: f"{r['spec_id'] or ''}/{r['task_id'] or '-'}", min=14),
    Column("model", 18, lambda r: r["model"] or "", drop=8),
    Column("state", 10, lambda r: r["status"] or "", style=lambda r: fmt.state_style(
        r["status"])),
    Column("step", 5, lambda r: str(r["step"] or 0), "right", drop=5),
    Column("tokens", 7, lambda r: fmt.tokens((r["tokens_in"] or 0) + (r["tokens_out"] or 0)),
           "right", drop=4),
    Column("USD", 9, lambda r: fmt.usd(r["cost"]), "right"),
    Column("elapsed", 8, lambda r: fmt.elapsed(r["started"], r["finished"]), "right",
           live=True, drop=3),
    Column("last tool", 14, lambda r: r["last_tool"] or "", drop=7, grow=True),
]
NO_AGENTS = ("No agents yet. Each task of a running spec gets an agent, listed here with "
             "its state and cost: start a run with ctrl+r on a spec (pane 1), or ctrl+p and "
             "\"Run all specs\".")


def matches(row: dict[str, Any], words: list[str]) -> bool:
    """Filter words: `state:running`, `spec:stats`, or any text in the agent or task."""
    for word in words:
        if word.startswith("state:"):
            if (row["status"] or "") != word[6:]:
                return False
        elif word.startswith("spec:"):
            if (row["spec_id"] or "") != word[5:]:
                return False
        elif word not in f"{row['id']} {row['spec_id']}/{row['task_id']} {row['role']}":
            return False
    return True


class AgentsPane(Vertical):
    DEFAULT_CSS = """
    AgentsPane #agents-table { height: 1fr; }
    AgentsPane #timeline { height: 1fr; }
    AgentsPane #agent-filter-row { height: 3; }
    AgentsPane #agent-filter { width: 1fr; }
    AgentsPane #timeline-state { width: auto; padding: 1 1; color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        with Horizontal(id="agent-filter-row"):
            yield Input(placeholder="filter: state:running spec:stats text…", id="agent-filter")
            yield Label("following", id="timeline-state")
        yield RowsView(AGENT_COLUMNS, id="agents-table", empty=NO_AGENTS)
        # Imported here: RichLog pulls in rich.pretty and attrs (30 ms), and this pane is
        # composed after the console's first frame.
        from console.widgets.timeline import Timeline

        yield Timeline(id="timeline")

    @property
    def table(self) -> RowsView:
        return self.query_one("#agents-table", RowsView)

    @property
    def timeline(self) -> Timeline:
        from console.widgets.timeline import Timeline

        return self.query_one("#timeline", Timeline)

    def filter_words(self) -> list[str]:
        return self.query_one("#agent-filter", Input).value.split()

    def refill(self, rows: dict[str, dict[str, Any]]) -> None:
        words = self.filter_words()
        keys = [k for k, r in rows.items() if not words or matches(r, words)]
        # Live agents (running, or waiting for an answer) first, then the most recent.
        keys.sort(key=lambda k: (rows[k]["status"] not in LIVE,
                                -(rows[k]["started"] or 0)))
        self.table.set_rows(rows, keys)

    def set_paused(self, paused: bool) -> None:
        self.timeline.set_paused(paused)
        self.query_one("#timeline-state", Label).update(
            "PAUSED (p to follow)" if paused else "following")
