"""The projection rows as types: one TypedDict per table of `agents.store.projections.TABLES`,
its keys that table's columns in order (tests/test_statuses.py holds them to it).

Type hints only: a row is still the plain dict the store and the wire carry, every column
present (State.row creates a row with each column None, then its event's handler fills what
the event says). So every column but the primary key may be None, and a status column holds
the status's plain string, which equals its enum member.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from agents.statuses import (
    AgentStatus,
    Approval,
    BranchStatus,
    QuestionStatus,
    QueueStatus,
    RunStatus,
    SpecStatus,
    TaskStatus,
)

# A forecast's verdict on a pair of branches (agents/conflicts.py); it has no enum yet.
ConflictVerdict = Literal["conflict", "clean", "closed"]


class RunRow(TypedDict):
    id: str
    status: RunStatus | None
    started: float | None
    finished: float | None
    specs: list[str] | None
    concurrency: int | None
    sandbox: str | None
    detail: str | None
    budget_stop: str | None  # what stopped the run: "run usd budget: 2 used of 2"


class SpecRow(TypedDict):
    id: str
    title: str | None
    path: str | None
    priority: int | None
    depends_on: list[str] | None
    digest: str | None
    status: SpecStatus | None
    tasks_total: int | None
    tasks_landed: int | None
    tasks_rejected: int | None
    tasks_failed: int | None
    tokens: int | None
    cost: float | None
    detail: str | None
    updated: float | None
    planned_digest: str | None


class TaskRow(TypedDict):
    key: str  # "<spec>/<task>"
    spec_id: str | None
    task_id: str | None
    title: str | None
    role: str | None
    status: TaskStatus | None
    depends_on: list[str] | None
    paths: list[str] | None
    acceptance: list[str] | None
    instructions: str | None
    attempt: int | None
    agent_id: str | None
    branch: str | None
    worktree: str | None
    base_commit: str | None
    commit_sha: str | None
    landed_commit: str | None
    tokens: int | None
    cost: float | None
    reason: str | None
    updated: float | None
    cancel: str | None  # who asked for it to stop
    ordinal: int | None
    returns: int | None  # times a refused entry went back to its agent
    revising: int | None  # returned, and its revision not started yet
    since: str | None  # the refused commit a revision starts from


class AgentRow(TypedDict):
    id: str
    spec_id: str | None
    task_id: str | None
    role: str | None
    model: str | None
    status: AgentStatus | None
    step: int | None
    tokens_in: int | None
    tokens_out: int | None
    cost: float | None
    started: float | None
    finished: float | None
    summary: str | None
    last_tool: str | None
    messages: int | None
    updated: float | None


class BranchRow(TypedDict):
    name: str
    spec_id: str | None
    task_id: str | None
    head: str | None
    base: str | None
    status: BranchStatus | None
    files: list[str] | None
    insertions: int | None
    deletions: int | None
    gate: str | None
    reason: str | None
    landed_commit: str | None
    updated: float | None


class GateRow(TypedDict):
    key: str  # "<spec>/<task>:<gate>"
    task_key: str | None
    gate: str | None
    passed: int | None  # 1 or 0
    detail: str | None
    duration: float | None
    updated: float | None
    verdict: str | None  # pass, warn, needs_approval, deny (agents/gates/base.py)
    findings: list[dict[str, Any]] | None  # rule, message, verdict, file, line


class BudgetRow(TypedDict):
    key: str  # "<scope>:<owner>"
    scope: str | None  # "run" or "spec"
    owner: str | None
    tokens: int | None
    cost: float | None


class QueueRow(TypedDict):
    key: str  # the task's key
    spec_id: str | None
    task_id: str | None
    branch: str | None
    commit_sha: str | None
    position: int | None
    status: QueueStatus | None
    risk: Literal["low", "medium", "high"] | None
    risk_reasons: list[str] | None
    approval: Approval | None
    reason: str | None
    entered: float | None
    updated: float | None
    cap: int | None  # back from a failed batch: tested in parts of at most this many
    suspect: int | None  # 1 while it is tested alone on top of main
    failed_tests: list[str] | None  # the tests that failed in the batch that sent it back
    suspect_single: int | None  # 1 when that batch was the entry alone


class LinkRow(TypedDict):
    """An entry's latest link in the queue's chain (agents/queue/chain.py)."""

    key: str  # the task's key
    spec_id: str | None
    task_id: str | None
    base: str | None  # the commit it was merged onto: main, or the link below it
    entry_commit: str | None
    merge_commit: str | None
    tree: str | None
    ok: int | None  # 0: the merge or a gate of its own refused it
    gate: str | None
    reason: str | None
    updated: float | None


class QueueRunRow(TypedDict):
    id: str
    commit_sha: str | None  # the tree tested
    keys: list[str] | None  # the entries it holds above main
    position: int | None  # in the chain; 0 for main itself
    size: int | None  # entries above the highest pass (the batch)
    attempt: int | None
    alone: str | None  # the suspect tested alone on top of main
    runner: int | None
    status: Literal["running", "passed", "failed"] | None
    failing: list[str] | None
    reason: str | None
    output: str | None
    duration: float | None
    handled: int | None  # 1 once the queue acted on its failure
    flaky: int | None  # 1 when its failure did not come back
    started: float | None
    updated: float | None


class FlakyTestRow(TypedDict):
    name: str
    flakes: int | None
    last_run: str | None
    updated: float | None
    quarantined: float | None  # since when main itself fails it (None: it counts)
    reason: str | None


class TestHistoryRow(TypedDict):
    """A test over the race gate's repeated runs (agents/gates/races.py)."""

    name: str
    runs: int | None
    failures: int | None
    last_failed: str | None  # the merged commit of the last run it failed in
    updated: float | None


class QueueStateRow(TypedDict):
    key: str  # "queue"
    main: str | None  # main's head as the engine last recorded it
    batch: int | None  # the batch size now
    paused: int | None
    pause_reason: str | None
    retry_at: float | None
    runs: int | None
    updated: float | None


class ConflictRow(TypedDict):
    key: str  # the two branch names, sorted, space-separated
    a: str | None
    b: str | None
    a_head: str | None
    b_head: str | None
    status: ConflictVerdict | None
    files: list[str] | None
    updated: float | None


class LeaseRow(TypedDict):
    work: str  # "plan:<spec>", "work:<spec>/<task>", "land", "run:<id>"
    holder: str | None  # None once released
    kind: str | None
    since: float | None
    updated: float | None


class QuestionRow(TypedDict):
    id: str
    agent_id: str | None
    spec_id: str | None
    task_id: str | None
    task_key: str | None
    question: str | None
    options: list[str] | None
    status: QuestionStatus | None
    answer: str | None
    answered_by: Literal["person", "engine"] | None
    why: str | None
    asked: float | None
    answered: float | None
    updated: float | None


class Tables(TypedDict):
    """Every projection table: its rows by primary key."""

    runs: dict[str, RunRow]
    specs: dict[str, SpecRow]
    tasks: dict[str, TaskRow]
    agents: dict[str, AgentRow]
    branches: dict[str, BranchRow]
    gates: dict[str, GateRow]
    test_history: dict[str, TestHistoryRow]
    budgets: dict[str, BudgetRow]
    queue: dict[str, QueueRow]
    links: dict[str, LinkRow]
    test_runs: dict[str, QueueRunRow]
    flaky_tests: dict[str, FlakyTestRow]
    queue_state: dict[str, QueueStateRow]
    conflicts: dict[str, ConflictRow]
    leases: dict[str, LeaseRow]
    questions: dict[str, QuestionRow]


# table -> its row's type, in TABLES' order
ROW_TYPES: dict[str, type] = {
    "runs": RunRow, "specs": SpecRow, "tasks": TaskRow, "agents": AgentRow,
    "branches": BranchRow, "gates": GateRow, "test_history": TestHistoryRow,
    "budgets": BudgetRow, "queue": QueueRow,
    "links": LinkRow, "test_runs": QueueRunRow, "flaky_tests": FlakyTestRow,
    "queue_state": QueueStateRow, "conflicts": ConflictRow, "leases": LeaseRow,
    "questions": QuestionRow,
}
