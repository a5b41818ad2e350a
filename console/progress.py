"""Headless progress for `factory run` and `factory demo`, drawn from the store's projections.

On a terminal it is a live rich table refreshed a few times a second; otherwise it prints one
line per notable event, which reads well in CI logs.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agents.statuses import TASK_DONE, AgentStatus, TaskStatus
from agents.store import Store, StoredEvent
from agents.textsafe import clean_line

QUIET_KINDS = {"agent_turn", "tool_executed", "agent_note", "gate_result", "spec_registered",
               "worktree_removed", "landing_started", "landing_merged", "lease_taken",
               "lease_released"}
STATUS_STYLE: dict[str, str] = {
    TaskStatus.LANDED: "green", TaskStatus.REJECTED: "red", TaskStatus.FAILED: "red",
    TaskStatus.BLOCKED: "yellow", TaskStatus.RUNNING: "cyan", TaskStatus.COMMITTED: "blue",
    TaskStatus.LANDING: "magenta", TaskStatus.CANCELLED: "yellow", TaskStatus.PENDING: "dim",
}


def describe(item: StoredEvent) -> str | None:
    """One line for an event worth a line in a log; None for the chatter. What it quotes
    (reasons, summaries, commands, names) was written by agents and the code they wrote:
    the line is made inert, and one line."""
    line = _describe(item)
    return None if line is None else clean_line(line)


def _describe(item: StoredEvent) -> str | None:
    e: Any = item.event
    key = f"{e.spec_id}/{e.task_id}" if e.task_id else (e.spec_id or "")
    match e.kind:
        case kind if kind in QUIET_KINDS:
            return None
        case "run_started":
            return f"run {e.run_id}: specs {', '.join(e.specs)}, {e.concurrency} agents at " \
                   f"once, sandbox {e.sandbox}"
        case "spec_finished":
            return f"{e.spec_id}: {e.status} ({e.detail})" if e.detail else \
                f"{e.spec_id}: {e.status}"
        case "run_finished":
            return f"run {e.run_id} {e.status}"
        case "notice":
            return f"{e.level}: {e.message}"
        case "plan_accepted":
            return f"{e.spec_id}: planned {len(e.tasks)} tasks ({', '.join(t.id for t in e.tasks)})"
        case "plan_rejected":
            return f"{e.spec_id}: plan rejected: {e.reason}"
        case "task_started":
            return f"{key}: agent {e.agent_id} started on {e.branch}"
        case "agent_started":
            return None if not e.resumed_at_step else \
                f"{e.agent_id}: resumed at step {e.resumed_at_step}"
        case "branch_committed":
            return f"{key}: committed {e.commit[:10]} ({len(e.files)} files, " \
                   f"+{e.insertions} -{e.deletions})"
        case "branch_landed":
            return f"{key}: LANDED on main as {e.main_after[:10]}"
        case "branch_rejected":
            return f"{key}: REJECTED at {e.gate}: {e.reason}"
        case "agent_finished":
            return f"{e.agent_id}: {e.status} ({e.summary})"
        case "task_failed":
            return f"{key}: failed: {e.reason}" + (" (will retry)" if e.will_retry else "")
        case "budget_stop":
            return f"{e.agent_id}: budget stop ({e.scope} {e.measure} {e.used:g} of {e.limit:g})"
        case "agent_stuck":
            return f"{e.agent_id}: stuck: {e.reason}"
        case "sandbox_limited":
            return f"{e.agent_id}: sandbox {e.stop}: {e.command} ({e.detail})"
        case "model_retry":
            return f"{e.agent_id}: model retry {e.attempt} after {e.status} (wait {e.wait:.1f} s)"
        case _:
            label = e.kind.replace("_", " ")
            return f"{key}: {label}" if key else label


def totals(store: Store, run_id: str | None) -> dict[str, Any]:
    tasks = store.rows("tasks")
    agents = store.rows("agents")
    budget = store.get("budgets", f"run:{run_id}") or {} if run_id else {}
    count = lambda *states: sum(t["status"] in states for t in tasks)  # noqa: E731
    running = AgentStatus.RUNNING
    return {
        "tasks": len(tasks),
        "done": count(*TASK_DONE),
        "landed": count(TaskStatus.LANDED),
        "rejected": count(TaskStatus.REJECTED),
        "active": sum(a["status"] == running for a in agents),
        "peak": 0,
        "tokens": budget.get("tokens") or 0,
        "usd": budget.get("cost") or 0.0,
    }


class Progress:
    def __init__(self, store: Store, console: Console, budget_usd: float | None,
                 budget_tokens: int | None) -> None:
        self.store = store
        self.console = console
        self.live_mode = console.is_terminal
        self.budget_usd = budget_usd
        self.budget_tokens = budget_tokens
        self.run_id: str | None = None
        self.peak_active = 0
        self.started = time.monotonic()
        self._live: Live | None = None
        self._unsubscribe = store.subscribe(self._on_events)

    def _on_events(self, batch: list[StoredEvent]) -> None:
        for item in batch:
            if item.event.kind == "run_started":
                self.run_id = item.event.run_id  # type: ignore[union-attr]
            line = describe(item)
            if line is not None:
                if self._live is not None:
                    self._live.console.print(Text(line))
                else:
                    self.console.print(Text(line), highlight=False)
        running = AgentStatus.RUNNING
        active = sum(a["status"] == running and a["role"] != "planner"
                     for a in self.store.rows("agents"))
        self.peak_active = max(self.peak_active, active)
        if self._live is not None:
            self._live.update(self.render())

    def render(self) -> Group:
        t = totals(self.store, self.run_id)
        usd = f"${t['usd']:.4f}" + (f" of ${self.budget_usd:g}" if self.budget_usd else "")
        tokens = f"{t['tokens']:,}" + (f" of {self.budget_tokens:,}" if self.budget_tokens
                                        else "")
        head = Text.assemble(
            ("Factory ", "bold"), f"tasks {t['done']}/{t['tasks']}  ",
            f"agents {t['active']}  ", f"tokens {tokens}  ", f"USD {usd}  ",
            ("landed ", "green"), f"{t['landed']}  ", ("rejected ", "red"), f"{t['rejected']}  ",
            f"{time.monotonic() - self.started:.0f}s",
        )
        table = Table(box=None, pad_edge=False, expand=False)
        for column in ("task", "status", "agent", "step", "tokens", "USD"):
            table.add_column(column)
        agents = {a["id"]: a for a in self.store.rows("agents")}
        for task in sorted(self.store.rows("tasks"), key=lambda r: r["key"])[-30:]:
            agent = agents.get(task["agent_id"] or "", {})
            status = task["status"] or ""
            # Cells as Text: a str cell is markup to rich; and made inert.
            table.add_row(Text(clean_line(task["key"])),
                          Text(clean_line(status), STATUS_STYLE.get(status, "")),
                          Text(clean_line(task["agent_id"] or "")), str(agent.get("step") or ""),
                          f"{task['tokens'] or 0:,}", f"{task['cost'] or 0.0:.4f}")
        return Group(head, table)

    def __enter__(self) -> Progress:
        if self.live_mode:
            self._live = Live(self.render(), console=self.console, refresh_per_second=4,
                              transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._unsubscribe()
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(None, None, None)
            self._live = None
