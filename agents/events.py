"""Every change of state in Factory is one of these events.

Events are the source of truth: the store appends them to a hash-chained log and derives the
projection tables from them in the same transaction. One discriminated union (`kind`) means
one schema for the store, the daemon's wire format and the console.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Event(BaseModel):
    # Schemas are built on first use, not at import: the console's first frame must not
    # wait for forty models to compile.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    spec_id: str | None = None
    task_id: str | None = None
    agent_id: str | None = None


# -- run -------------------------------------------------------------------------------------


class RunStarted(_Event):
    kind: Literal["run_started"] = "run_started"
    run_id: str
    specs: list[str]
    concurrency: int
    sandbox: str
    budget_tokens: int | None = None
    budget_usd: float | None = None


class RunFinished(_Event):
    kind: Literal["run_finished"] = "run_finished"
    run_id: str
    # interrupted: recorded for a run whose process went away without finishing it.
    status: Literal["done", "cancelled", "failed", "budget", "interrupted"]
    detail: str = ""


class Notice(_Event):
    """Something a person should see that changes no state (sandbox warnings, orphans...)."""

    kind: Literal["notice"] = "notice"
    level: Literal["info", "warning", "error"] = "info"
    message: str


# -- specs and plans -------------------------------------------------------------------------


class SpecRegistered(_Event):
    kind: Literal["spec_registered"] = "spec_registered"
    title: str
    path: str
    priority: int = 0
    depends_on: list[str] = []
    digest: str


class SpecSaved(_Event):
    kind: Literal["spec_saved"] = "spec_saved"
    path: str
    digest: str
    lint_score: int | None = None


class PlannedTask(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    title: str
    role: str = "implementer"
    instructions: str = ""
    paths: list[str]
    depends_on: list[str] = []
    acceptance: list[str]


class PlanAccepted(_Event):
    kind: Literal["plan_accepted"] = "plan_accepted"
    tasks: list[PlannedTask]
    digest: str
    # The digest of the spec's text that was planned (kept apart from the text on disk, so
    # that an edit saved later is planned again).
    spec_digest: str = ""


class LeaseTaken(_Event):
    """Work in progress has a holder: the engine process doing it. A restarted engine finds
    every piece of work that was in progress in the leases whose holder is gone."""

    kind: Literal["lease_taken"] = "lease_taken"
    work: str  # "plan:<spec>", "work:<spec>/<task>", "land", "run:<id>"
    holder: str  # host:pid:start of the engine process


class LeaseReleased(_Event):
    kind: Literal["lease_released"] = "lease_released"
    work: str
    holder: str


class CommandGiven(_Event):
    """A person's command (agents/commands.py), recorded before it takes effect."""

    kind: Literal["command_given"] = "command_given"
    op: str
    args: dict[str, Any] = {}
    by: str = "console"


class CommandRefused(_Event):
    """A command the state refused, and why (the one who gave it was told the same)."""

    kind: Literal["command_refused"] = "command_refused"
    op: str
    by: str = "console"
    reason: str


class CancelRequested(_Event):
    """A person asked for a task to stop; the reconciler stops its agent, or cancels the
    task at once when nothing works on it."""

    kind: Literal["cancel_requested"] = "cancel_requested"
    by: str = "console"


class PlanRejected(_Event):
    kind: Literal["plan_rejected"] = "plan_rejected"
    reason: str


class SpecFinished(_Event):
    kind: Literal["spec_finished"] = "spec_finished"
    status: Literal["done", "failed", "blocked", "cancelled"]
    detail: str = ""


# -- tasks -----------------------------------------------------------------------------------


class TaskStarted(_Event):
    kind: Literal["task_started"] = "task_started"
    attempt: int
    branch: str
    worktree: str
    base_commit: str


class TaskFailed(_Event):
    kind: Literal["task_failed"] = "task_failed"
    reason: str
    will_retry: bool = False


class TaskBlocked(_Event):
    kind: Literal["task_blocked"] = "task_blocked"
    reason: str


class TaskCancelled(_Event):
    kind: Literal["task_cancelled"] = "task_cancelled"
    reason: str = ""


class BranchCommitted(_Event):
    kind: Literal["branch_committed"] = "branch_committed"
    branch: str
    commit: str
    base_commit: str
    files: list[str]
    insertions: int = 0
    deletions: int = 0


class LandingStarted(_Event):
    kind: Literal["landing_started"] = "landing_started"
    branch: str
    commit: str


class LandingMerged(_Event):
    """The merge commit a landing made, recorded before any test runs: it is what lands if
    the gates pass (whatever the tests do to their copy of the tree)."""

    kind: Literal["landing_merged"] = "landing_merged"
    branch: str
    commit: str  # the branch's commit
    merge_commit: str
    tree: str
    main_before: str


class GateResult(_Event):
    kind: Literal["gate_result"] = "gate_result"
    gate: str
    passed: bool
    detail: str = ""
    duration: float = 0.0
    # The gate's verdict (agents/gates/base.py Verdict) and the findings behind it; empty in
    # events written before gates had them (a pass or a deny, as `passed` says).
    verdict: str = ""
    findings: list[dict[str, Any]] = []


class BranchLanded(_Event):
    kind: Literal["branch_landed"] = "branch_landed"
    branch: str
    commit: str
    main_before: str
    main_after: str


class BranchRejected(_Event):
    kind: Literal["branch_rejected"] = "branch_rejected"
    branch: str
    gate: str
    reason: str
    output: str = ""


class BranchReturned(_Event):
    """The queue refused the entry, and it goes back to its agent instead of being rejected
    for good: the task is worked again, by the same agent, whose conversation continues
    with the findings (`round` counts the returns, up to `[queue] resubmits`)."""

    kind: Literal["branch_returned"] = "branch_returned"
    branch: str
    commit: str  # the refused commit: the branch's head, where the revision starts
    gate: str
    reason: str
    output: str = ""
    round: int = 1


class RevisionStarted(_Event):
    """The returned branch is checked out again and its agent told the findings (in an
    agent_note of the same batch). `base_commit` is what the branch's changes are counted
    from from now on: main as it was merged in, when the engine merged it, else the task's
    old base; `since` is the refused commit (a commit after it is the revision's)."""

    kind: Literal["revision_started"] = "revision_started"
    round: int
    worktree: str
    base_commit: str
    since: str
    merged_main: str = ""
    conflicts: list[str] = Field(default_factory=list)


class WorktreeRemoved(_Event):
    kind: Literal["worktree_removed"] = "worktree_removed"
    path: str


# -- agents ----------------------------------------------------------------------------------


class AgentStarted(_Event):
    kind: Literal["agent_started"] = "agent_started"
    role: str
    model: str
    resumed_at_step: int = 0
    # The opening messages (system prompt, task) of a fresh agent; empty on resume.
    messages: list[dict[str, Any]] = []


class AgentTurn(_Event):
    """One model call: the assistant message is kept whole so the agent can resume."""

    kind: Literal["agent_turn"] = "agent_turn"
    step: int
    model: str
    message: dict[str, Any]
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    latency: float = 0.0


class AgentNote(_Event):
    """A message the engine adds to an agent's conversation (a nudge, a correction)."""

    kind: Literal["agent_note"] = "agent_note"
    step: int
    message: dict[str, Any]


class ToolExecuted(_Event):
    kind: Literal["tool_executed"] = "tool_executed"
    step: int
    call_id: str
    name: str
    arguments: dict[str, Any] | str
    result: str
    is_error: bool = False
    changed: bool = False
    duration: float = 0.0


class SandboxLimited(_Event):
    """A command the sandbox denied or cut short (timeout, memory, output, denied)."""

    kind: Literal["sandbox_limited"] = "sandbox_limited"
    step: int
    command: str
    stop: str
    detail: str = ""


class LimitReached(_Event):
    """An agent went over its quota: a write was refused, or a command stopped. The agent is
    told in the tool's result; this is the timeline's record of it."""

    kind: Literal["limit"] = "limit"
    step: int
    tool: str
    command: str = ""
    limit: Literal["disk", "files", "write"]
    used: int
    allowed: int
    detail: str = ""


class ModelRetry(_Event):
    kind: Literal["model_retry"] = "model_retry"
    step: int
    model: str
    attempt: int
    status: int | None = None
    wait: float
    error: str


class BudgetStop(_Event):
    kind: Literal["budget_stop"] = "budget_stop"
    scope: Literal["run", "spec", "agent"]
    measure: Literal["tokens", "usd"]
    limit: float
    used: float


class AgentStuck(_Event):
    kind: Literal["agent_stuck"] = "agent_stuck"
    reason: str


class AgentFinished(_Event):
    kind: Literal["agent_finished"] = "agent_finished"
    status: Literal["finished", "failed", "stuck", "budget", "step_limit", "cancelled"]
    summary: str = ""


# -- questions to the supervisor ------------------------------------------------------------


class QuestionAsked(_Event):
    """An agent asks the person supervising the run; its loop waits for the answer.

    The id is derived from the tool call (agent, step, call id), so an agent resumed after a
    crash finds its own question again: asked once, one row in the inbox.
    """

    kind: Literal["question_asked"] = "question_asked"
    question_id: str
    # The agent's key: "<spec>/<task>" for a task's agent, "plan:<spec>" for a planner.
    task_key: str
    question: str
    options: list[str] = []
    step: int = 0
    call_id: str = ""


class QuestionAnswered(_Event):
    kind: Literal["question_answered"] = "question_answered"
    question_id: str
    answer: str
    by: Literal["person", "engine"]
    # Engine answers only: why no person answered (nobody supervises, the wait timed out...).
    why: str = ""


# -- merge queue -----------------------------------------------------------------------------


class QueueEntered(_Event):
    """A committed branch waits its turn to land; approval is asked here when the risk or the
    configuration wants a person to look."""

    kind: Literal["queue_entered"] = "queue_entered"
    branch: str
    commit: str
    risk: Literal["low", "medium", "high"]
    risk_reasons: list[str] = []
    needs_approval: bool = False


class ApprovalRequested(_Event):
    """A gate wants a person to look at this commit before it lands (a new dependency, a
    risk the policies name): the entry waits for approval from here."""

    kind: Literal["approval_requested"] = "approval_requested"
    commit: str
    gate: str
    reasons: list[str] = []


class ApprovalDecided(_Event):
    kind: Literal["approval_decided"] = "approval_decided"
    approved: bool
    by: str = "console"
    reason: str = ""


class QueueReordered(_Event):
    """The waiting entries' new order (task keys, first lands first)."""

    kind: Literal["queue_reordered"] = "queue_reordered"
    order: list[str]


class QueueRetried(_Event):
    """A rejected entry goes back into the queue with the same commit."""

    kind: Literal["queue_retried"] = "queue_retried"
    branch: str


class QueueLinked(_Event):
    """An entry merged onto the queue's chain (main, or the chain's commit below it), with the
    gates it meets on its own; ok=False when the merge or a gate refused it."""

    kind: Literal["queue_linked"] = "queue_linked"
    commit: str  # the entry's commit
    base: str
    merge_commit: str = ""
    tree: str = ""
    ok: bool = True
    gate: str = ""
    reason: str = ""


class QueueTestStarted(_Event):
    """A runner tests one tree: a point of the chain (the entries up to it), main itself
    (position 0, the pre-flight), or one suspect alone on top of main (`alone`)."""

    kind: Literal["queue_test_started"] = "queue_test_started"
    run_id: str
    commit: str
    keys: list[str] = []
    position: int = 0
    size: int = 0
    attempt: int = 1
    alone: str = ""
    runner: int = 0


class QueueTestFinished(_Event):
    kind: Literal["queue_test_finished"] = "queue_test_finished"
    run_id: str
    commit: str  # the tree tested (for a suspect alone, the merge made for the run)
    passed: bool
    failing: list[str] = []
    reason: str = ""
    output: str = ""
    duration: float = 0.0


class QueueSuspected(_Event):
    """A batch failed and its failing tests name these entries: they leave the chain and
    are tested alone on top of main."""

    kind: Literal["queue_suspected"] = "queue_suspected"
    keys: list[str]
    run_ids: list[str]
    failing: list[str] = []
    single: bool = False


class QueueRequeued(_Event):
    """A failed batch's entries (or a suspect cleared alone) go to the back of the queue,
    tested there in parts of at most `cap`."""

    kind: Literal["queue_requeued"] = "queue_requeued"
    keys: list[str]
    cap: int
    run_ids: list[str]
    failing: list[str] = []
    window: int = 1
    flaky: bool = False


class FlakeRecorded(_Event):
    """A failed run that did not come back on a tree holding the same changes."""

    kind: Literal["flake_recorded"] = "flake_recorded"
    run_id: str
    tests: list[str] = []


class TestHistoryRecorded(_Event):
    """The race gate's repeated runs of one entry's tests (agents/gates/races.py): how many
    runs each test ran in and failed in, for the per-test history (`test_history`)."""

    kind: Literal["test_history_recorded"] = "test_history_recorded"
    gate: str = "races"
    commit: str = ""  # the merged tree the runs tested
    ran: dict[str, int] = {}
    failed: dict[str, int] = {}


class QueuePaused(_Event):
    """Main's own tests fail (or cannot run): nothing is tested on top of it."""

    kind: Literal["queue_paused"] = "queue_paused"
    main: str
    reason: str
    retry_in: float = 60.0  # then main is tested again (a fix need not be a new commit)
    run_ids: list[str] = []  # main's failed runs this settles


class TestsQuarantined(_Event):
    """Main's own tests fail by name, twice: those tests are set aside (reported, never
    blamed on an entry) until a tree the queue lands passes them."""

    kind: Literal["tests_quarantined"] = "tests_quarantined"
    main: str
    tests: list[str]
    reason: str = ""
    run_ids: list[str] = Field(default_factory=list)


class TestsReleased(_Event):
    kind: Literal["tests_released"] = "tests_released"
    tests: list[str]
    run_id: str = ""


class MainMoved(_Event):
    """Main moved: by the queue to a tested point of its chain (keys landed, the window
    after it), or by someone else (`by` says who; keys empty)."""

    kind: Literal["main_moved"] = "main_moved"
    main_before: str
    main_after: str
    keys: list[str] = []
    window: int | None = None
    by: str = "queue"


class WorkLost(_Event):
    """An alarm: after main moved, an entry's commit is not contained in it."""

    kind: Literal["work_lost"] = "work_lost"
    branch: str
    commit: str
    main: str


# -- conflict forecasting --------------------------------------------------------------------


class ConflictChecked(_Event):
    """Whether two open branches would conflict if both landed, as of these two heads."""

    kind: Literal["conflict_checked"] = "conflict_checked"
    a: str
    b: str
    a_head: str
    b_head: str
    conflicts: bool
    files: list[str] = []
    # git merges the pair cleanly, but both change the same lines (a merge driver such as
    # `merge=union` combined them): a conflict for the factory all the same.
    same_lines: bool = False


class ConflictClosed(_Event):
    """The pair is no longer open (one side landed, was rejected or removed)."""

    kind: Literal["conflict_closed"] = "conflict_closed"
    a: str
    b: str
    reason: str = ""


Event = Annotated[
    RunStarted
    | RunFinished
    | Notice
    | SpecRegistered
    | SpecSaved
    | PlanAccepted
    | PlanRejected
    | LeaseTaken
    | LeaseReleased
    | CommandGiven
    | CommandRefused
    | CancelRequested
    | SpecFinished
    | TaskStarted
    | TaskFailed
    | TaskBlocked
    | TaskCancelled
    | BranchCommitted
    | LandingStarted
    | LandingMerged
    | GateResult
    | BranchLanded
    | BranchRejected
    | BranchReturned
    | RevisionStarted
    | WorktreeRemoved
    | AgentStarted
    | AgentTurn
    | AgentNote
    | ToolExecuted
    | SandboxLimited
    | LimitReached
    | ModelRetry
    | BudgetStop
    | AgentStuck
    | AgentFinished
    | QuestionAsked
    | QuestionAnswered
    | QueueEntered
    | ApprovalRequested
    | ApprovalDecided
    | QueueReordered
    | QueueRetried
    | QueueLinked
    | QueueTestStarted
    | QueueTestFinished
    | QueueSuspected
    | QueueRequeued
    | FlakeRecorded
    | TestHistoryRecorded
    | QueuePaused
    | TestsQuarantined
    | TestsReleased
    | MainMoved
    | WorkLost
    | ConflictChecked
    | ConflictClosed,
    Field(discriminator="kind"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event, config=ConfigDict(defer_build=True))


def parse_event(data: str | bytes) -> Event:
    return EVENT_ADAPTER.validate_json(data)
