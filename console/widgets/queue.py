"""Merge queue pane: entries in landing order with each gate's verdict, risk, agent and
diffstat, where each stands in the queue's chain and what its last test run said (the batch
it was tested in, running, flaky); a line above says the runs in flight, the batch size and
why the queue is paused. And the inbox, every decision waiting for a person, riskiest and
oldest first."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from agents.queue.merge_queue import latest_runs
from agents.statuses import Approval, QuestionStatus, QueueStatus
from agents.textsafe import clean, clean_line
from console import format as fmt
from console.widgets.rows import Column, RowsView

RISK_ORDER = {"high": 0, "medium": 1, "low": 2}
CLOSED = (QueueStatus.LANDED, QueueStatus.REJECTED)
APPROVAL_MARK: dict[str, str] = {Approval.NOT_REQUIRED: "-", Approval.PENDING: "WAIT",
                                 Approval.APPROVED: "✓", Approval.REJECTED: "✗"}


VERDICT_MARK = {"pass": "✓", "warn": "!", "needs_approval": "?", "deny": "✗"}
VERDICT_ORDER = {"deny": 0, "needs_approval": 1, "warn": 2, "pass": 3}


def gates_of(model: Any, key: str) -> list[dict[str, Any]]:
    """The entry's gate rows (the latest verdict of each gate), in the order they ran."""
    prefix = f"{key}:"
    rows = [r for k, r in model.rows("gates").items() if k.startswith(prefix)]
    return sorted(rows, key=lambda r: r["updated"] or 0)


def verdict_of(row: dict[str, Any]) -> str:
    return row.get("verdict") or ("pass" if row["passed"] else "deny")


def gates_mark(model: Any, key: str) -> str:
    """Every gate at a glance: how many passed, then each that did not, worst first
    ("✓5 ✗overlap !boundaries")."""
    rows = gates_of(model, key)
    if not rows:
        return "·"
    passed = sum(verdict_of(r) == "pass" for r in rows)
    others = sorted((r for r in rows if verdict_of(r) != "pass"),
                    key=lambda r: VERDICT_ORDER.get(verdict_of(r), 4))
    return " ".join([f"✓{passed}"] * bool(passed) + [
        f"{VERDICT_MARK.get(verdict_of(r), '?')}{r['gate']}" for r in others])


def gates_style(model: Any, key: str) -> str:
    worst = min((VERDICT_ORDER.get(verdict_of(r), 4) for r in gates_of(model, key)),
                default=3)
    return {0: "bold red", 1: "bold yellow", 2: "yellow"}.get(worst, "")


def findings_text(model: Any, key: str | None) -> Text:
    """The highlighted entry's gates in full: each verdict and every finding (file, line,
    rule), worst first; what the table's one cell cannot hold."""
    if key is None:
        return Text("")
    text = Text()
    text.append(clean_line(key), style="bold")
    rows = sorted(gates_of(model, key), key=lambda r: VERDICT_ORDER.get(verdict_of(r), 4))
    if not rows:
        text.append(" · no gate has run yet", style="dim")
    for row in rows:
        verdict = verdict_of(row)
        text.append(f"\n{VERDICT_MARK.get(verdict, '?')} {clean_line(row['gate'] or '')}: ",
                    style="bold red" if verdict == "deny" else "bold")
        text.append(clean_line((row["detail"] or "").split("\n", 1)[0])[:200])
        for finding in (row.get("findings") or [])[:50]:
            if verdict == "pass" and finding.get("verdict") == "pass":
                continue
            where = finding.get("file") or ""
            if where and finding.get("line"):
                where += f":{finding['line']}"
            text.append(f"\n    {VERDICT_MARK.get(str(finding.get('verdict')), '·')} "
                        f"{clean_line(where + ': ' if where else '')}"
                        f"{clean_line(str(finding.get('message') or ''))[:300]} "
                        f"[{clean_line(str(finding.get('rule') or ''))}]")
    return text


def chain_mark(model: Any, r: dict[str, Any]) -> str:
    """Where the entry stands: linked onto the chain, tested alone on the side, back from a
    failed batch, or held by a conflict with the entries ahead."""
    if r["status"] in CLOSED:
        return ""
    if r.get("suspect"):
        return "alone"
    link = model.rows("links").get(r["key"])
    if link is not None and link["ok"] == 0:
        return "held"
    mark = "linked" if link is not None and link["merge_commit"] else ""
    if r.get("cap"):
        mark += f" ½{r['cap']}" if mark else f"½{r['cap']}"
    return mark


def run_mark(run: dict[str, Any] | None) -> str:
    """The last test run: ✓ passed, ✗ failed, … running, ~ a failure that was a flake; with
    the batch it was (entries above what was known to pass)."""
    if run is None:
        return ""
    mark = {"passed": "✓", "failed": "✗", "running": "…"}.get(run["status"] or "", "?")
    if run.get("flaky"):
        mark = "~"
    size = run["size"] or 1
    return f"{mark} {'alone' if run.get('alone') else f'x{size}'}"


def queue_columns(model: Any, latest: dict[str, dict[str, Any]] | None = None) -> list[Column]:
    runs = latest if latest is not None else {}

    def task(r: dict[str, Any]) -> dict[str, Any]:
        return model.rows("tasks").get(r["key"]) or {}

    def branch(r: dict[str, Any]) -> dict[str, Any]:
        return model.rows("branches").get(r["branch"]) or {}

    def approval(r: dict[str, Any]) -> str:
        return APPROVAL_MARK.get(r["approval"] or "", "")

    # At 80 columns: position, entry, state, chain, last test, approval and USD.
    return [
        Column("#", 4, lambda r: str(r["position"] or ""), "right", drop=3),
        Column("entry", 26, lambda r: r["key"], min=16),
        Column("state", 17, lambda r: r["status"] or "",
               style=lambda r: fmt.state_style(r["status"])),
        Column("risk", 6, lambda r: r["risk"] or "", drop=5,
               style=lambda r: fmt.state_style(r["risk"])),
        Column("gates", 18, lambda r: gates_mark(model, r["key"]), drop=6,
               style=lambda r: gates_style(model, r["key"])),
        Column("chain", 9, lambda r: chain_mark(model, r)),
        Column("test", 8, lambda r: run_mark(runs.get(r["key"])) if r["status"] not in CLOSED
               else "", style=lambda r: fmt.state_style((runs.get(r["key"]) or {}).get(
                   "status") if r["status"] not in CLOSED else None)),
        Column("appr", 5, approval, "right", drop=4),
        Column("agent", 20, lambda r: task(r).get("agent_id") or "", drop=11),
        Column("diff", 16, lambda r: f"{len(branch(r).get('files') or [])}f "
               f"+{branch(r).get('insertions') or 0} -{branch(r).get('deletions') or 0}",
               "right", drop=10),
        Column("tokens", 7, lambda r: fmt.tokens(task(r).get("tokens")), "right", drop=9),
        Column("USD", 9, lambda r: fmt.usd(task(r).get("cost")), "right"),
        Column("reason", 60, lambda r: (r["reason"] or "; ".join(r["risk_reasons"] or []))
               .split("\n", 1)[0], drop=12, min=20, grow=True),
    ]


NO_ENTRIES = ("The merge queue is empty. When an agent finishes its task, its branch queues "
              "here and goes through the gates (conflicts, the configured gates, tests) to land on "
              "main.")
NOTHING_WAITS = ("Nothing waits for you. Branches that need a person's approval and agents' "
                 "questions appear here; approve with a, answer with a, reject with x.")


class QueuePane(Vertical):
    DEFAULT_CSS = """
    QueuePane #queue-help { height: 1; color: $text-muted; padding: 0 1;
                            text-overflow: ellipsis; text-wrap: nowrap; }
    QueuePane #queue-state { height: 1; padding: 0 1; }
    QueuePane #queue-table { height: 1fr; }
    QueuePane #queue-findings { height: auto; max-height: 8; padding: 0 1;
                                border-top: solid $primary; background: $surface;
                                color: $foreground; overflow-y: auto; }
    """

    def __init__(self, model: Any, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model = model
        self.latest: dict[str, dict[str, Any]] = {}

    def compose(self) -> ComposeResult:
        yield Static("a approve · x reject · [ ] move up/down · r retry · v diff",
                     id="queue-help")
        yield Static("", id="queue-state")
        yield RowsView(queue_columns(self.model, self.latest), id="queue-table",
                       empty=NO_ENTRIES)
        yield Static("", id="queue-findings")

    def show_findings(self) -> None:
        key = self.table.selected_key
        view = self.query_one("#queue-findings", Static)
        view.update(findings_text(self.model, key))
        view.display = key is not None

    def state_line(self) -> str:
        """Runs in flight, the batch size, tests seen to flake, and a pause with its why."""
        state = self.model.rows("queue_state").get("queue") or {}
        running = sum(1 for r in self.model.rows("test_runs").values()
                      if r["status"] == "running")
        flaky = len(self.model.rows("flaky_tests"))
        line = f"{running} test run{'s' if running != 1 else ''} now · batch " \
            f"{state.get('batch') or '-'} · {flaky} flaky test{'s' if flaky != 1 else ''}"
        if state.get("paused"):
            line += f" · PAUSED: {state.get('pause_reason') or ''}"
        return line

    @property
    def table(self) -> RowsView:
        return self.query_one("#queue-table", RowsView)

    def refill(self) -> None:
        rows = self.model.rows("queue")
        self.latest.clear()
        self.latest.update(latest_runs(self.model.rows("test_runs").values()))
        open_first = sorted(rows, key=lambda k: (
            rows[k]["status"] in CLOSED, rows[k]["position"] or 0))
        # The pause's reason quotes the test command's output: made inert, as every row is.
        self.query_one("#queue-state", Static).update(Text(clean_line(self.state_line())))
        self.table.set_rows(rows, open_first)
        self.show_findings()


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
               live=True, drop=2),
        Column("kind", 9, lambda r: "question" if asked(r) else "approval", drop=3),
        Column("entry", 26, lambda r: r["task_key"] if asked(r) else r["key"], min=16),
        Column("title", 34, lambda r: r["question"] if asked(r) else task(r).get("title") or "",
               min=20, grow=True),
        Column("tokens", 7, lambda r: fmt.tokens(task(r).get("tokens")), "right", drop=4),
        Column("USD", 9, lambda r: fmt.usd(task(r).get("cost")), "right"),
        Column("why", 60, why, drop=5, min=24, grow=True),
    ]


def detail(model: Any, key: str | None, row: dict[str, Any] | None) -> Text:
    """The selected inbox row in full: the whole question and its options, or the entry's
    title and every reason, wrapped (the table's cells are cut to fit the width)."""
    if key is None or row is None:
        return Text("")
    if is_question(key):
        text = Text()
        text.append(f"{clean_line(row['agent_id'] or '')} ({clean_line(row['task_key'] or '')}) "
                    "asks:\n", style="bold")
        text.append(clean(row["question"] or ""))
        for number, option in enumerate(row["options"] or [], start=1):
            text.append(f"\n  {number}. {clean_line(option)}")
        text.append("\na: answer", style="dim")
        return text
    task = model.rows("tasks").get(key) or {}
    text = Text()
    text.append(clean_line(key), style="bold")
    if task.get("title"):
        text.append(f" · {clean_line(task['title'])}")
    text.append(f"\nrisk {row['risk'] or '-'}: "
                f"{clean('; '.join(row['risk_reasons'] or []) or 'policy: always')}")
    text.append("\na: approve · x: reject · v: diff · space: mark", style="dim")
    return text


class InboxPane(Vertical):
    DEFAULT_CSS = """
    InboxPane #inbox-help { height: 1; color: $text-muted; padding: 0 1;
                            text-overflow: ellipsis; text-wrap: nowrap; }
    InboxPane #inbox-table { height: 1fr; }
    InboxPane #inbox-detail { height: auto; max-height: 8; padding: 0 1;
                              border-top: solid $primary; background: $surface;
                              color: $foreground; overflow-y: auto; }
    """

    def __init__(self, model: Any, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model = model

    def compose(self) -> ComposeResult:
        yield Static("space mark · a approve (the marked) or answer · x reject · v diff",
                     id="inbox-help")
        yield RowsView(inbox_columns(self.model), id="inbox-table", empty=NOTHING_WAITS,
                       markable=True)
        yield Static("", id="inbox-detail")

    @property
    def table(self) -> RowsView:
        return self.query_one("#inbox-table", RowsView)

    def show_detail(self) -> None:
        key = self.table.selected_key
        detail_view = self.query_one("#inbox-detail", Static)
        detail_view.update(detail(self.model, key, self.table.rows.get(key) if key else None))
        detail_view.display = key is not None

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
        self.show_detail()
