"""Merge queue pane: entries in landing order with each gate's verdict, risk, agent and
diffstat; and the inbox, every decision waiting for a person, riskiest and oldest first."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from agents.statuses import Approval, QuestionStatus, QueueStatus
from console import format as fmt
from console.widgets.rows import Column, RowsView

GATES = ("conflicts", "dependencies", "tests")
RISK_ORDER = {"high": 0, "medium": 1, "low": 2}
CLOSED = (QueueStatus.LANDED, QueueStatus.REJECTED)
APPROVAL_MARK: dict[str, str] = {Approval.NOT_REQUIRED: "-", Approval.PENDING: "WAIT",
                                 Approval.APPROVED: "✓", Approval.REJECTED: "✗"}


def gate_mark(model: Any, key: str, gate: str) -> str:
    row = model.rows("gates").get(f"{key}:{gate}")
    if row is None:
        return "·"
    return "✓" if row["passed"] else "✗"


def gate_column(model: Any, gate: str) -> Column:
    return Column(gate[:5], 5, lambda r: gate_mark(model, r["key"], gate), "right")


def queue_columns(model: Any) -> list[Column]:
    def task(r: dict[str, Any]) -> dict[str, Any]:
        return model.rows("tasks").get(r["key"]) or {}

    def branch(r: dict[str, Any]) -> dict[str, Any]:
        return model.rows("branches").get(r["branch"]) or {}

    def approval(r: dict[str, Any]) -> str:
        return APPROVAL_MARK.get(r["approval"] or "", "")

    return [
        Column("#", 4, lambda r: str(r["position"] or ""), "right"),
        Column("entry", 26, lambda r: r["key"]),
        Column("state", 17, lambda r: r["status"] or "",
               style=lambda r: fmt.state_style(r["status"])),
        Column("risk", 6, lambda r: r["risk"] or "", style=lambda r: fmt.state_style(r["risk"])),
        *(gate_column(model, g) for g in GATES),
        Column("appr", 5, approval, "right"),
        Column("agent", 20, lambda r: task(r).get("agent_id") or ""),
        Column("diff", 16, lambda r: f"{len(branch(r).get('files') or [])}f "
               f"+{branch(r).get('insertions') or 0} -{branch(r).get('deletions') or 0}",
               "right"),
        Column("tokens", 7, lambda r: fmt.tokens(task(r).get("tokens")), "right"),
        Column("USD", 9, lambda r: fmt.usd(task(r).get("cost")), "right"),
        Column("reason", 60, lambda r: (r["reason"] or "; ".join(r["risk_reasons"] or []))
               .split("\n", 1)[0]),
    ]


class QueuePane(Vertical):
    DEFAULT_CSS = """
    QueuePane #queue-help { height: 1; color: $text-muted; padding: 0 1; }
    """

    def __init__(self, model: Any, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model = model

    def compose(self) -> ComposeResult:
        yield Static("a approve · x reject · [ ] move up/down · r retry · v view diff",
                     id="queue-help")
        yield RowsView(queue_columns(self.model), id="queue-table")

    @property
    def table(self) -> RowsView:
        return self.query_one("#queue-table", RowsView)

    def refill(self) -> None:
        rows = self.model.rows("queue")
        open_first = sorted(rows, key=lambda k: (
            rows[k]["status"] in CLOSED, rows[k]["position"] or 0))
        self.table.set_rows(rows, open_first)


QUESTION = "?"  # inbox keys of questions start with it; approvals are keyed by task


def is_question(key: str | None) -> bool:
    return bool(key) and key.startswith(QUESTION)  # type: ignore[union-attr]


def inbox_columns(model: Any) -> list[Column]:
    def task(r: dict[str, Any]) -> dict[str, Any]:
        return model.rows("tasks").get(r.get("task_key") or r["key"]) or {}

    def asked(r: dict[str, Any]) -> bool:
        return "question" in r

    def why(r: dict[str, Any]) -> str:
        if asked(r):
            options = r["options"] or []
            return f"{r['agent_id']} asks" + (f" (options: {' | '.join(options)})"
                                              if options else "")
        return "; ".join(r["risk_reasons"] or []) or "policy: always"

    return [
        Column("risk", 6, lambda r: "ask" if asked(r) else r["risk"] or "",
               style=lambda r: "bold magenta" if asked(r) else fmt.state_style(r["risk"])),
        Column("age", 7, lambda r: fmt.age(r["asked"] if asked(r) else r["entered"]), "right",
               live=True),
        Column("kind", 9, lambda r: "question" if asked(r) else "approval"),
        Column("entry", 26, lambda r: r["task_key"] if asked(r) else r["key"]),
        Column("title", 34, lambda r: r["question"] if asked(r) else task(r).get("title") or ""),
        Column("tokens", 7, lambda r: fmt.tokens(task(r).get("tokens")), "right"),
        Column("USD", 9, lambda r: fmt.usd(task(r).get("cost")), "right"),
        Column("why", 60, why),
    ]


class InboxPane(Vertical):
    DEFAULT_CSS = """
    InboxPane #inbox-help { height: 1; color: $text-muted; padding: 0 1; }
    """

    def __init__(self, model: Any, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model = model

    def compose(self) -> ComposeResult:
        yield Static("space mark · a approve (marked, or the selected) or answer a question · "
                     "x reject · v view diff", id="inbox-help")
        yield RowsView(inbox_columns(self.model), id="inbox-table")

    @property
    def table(self) -> RowsView:
        return self.query_one("#inbox-table", RowsView)

    def refill(self) -> None:
        """Questions first (an agent is stopped until one is answered), oldest first; then
        approvals by risk and age."""
        queue = self.model.rows("queue")
        awaiting, pending = QueueStatus.AWAITING_APPROVAL, QuestionStatus.PENDING
        rows = {k: r for k, r in queue.items() if r["status"] == awaiting}
        questions = {QUESTION + k: r for k, r in self.model.rows("questions").items()
                     if r["status"] == pending}
        waiting = sorted(rows, key=lambda k: (RISK_ORDER.get(rows[k]["risk"] or "", 3),
                                              rows[k]["entered"] or 0))
        asked = sorted(questions, key=lambda k: questions[k]["asked"] or 0)
        rows.update(questions)
        self.table.marked &= set(waiting)
        self.table.set_rows(rows, asked + waiting)
