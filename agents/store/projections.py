"""Current state, derived from events.

The writer keeps the projection rows in memory (they are small next to the log), applies each
event to them, and writes back only the rows a batch touched, in the same transaction as the
events. `rebuild` runs the very same handlers over the whole log, which is how a test proves
the live projections and the log agree.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agents import events as ev
from agents.statuses import (
    DROPPED,
    QUEUE_OPEN,
    REPLANNED,
    TASK_DONE,
    AgentStatus,
    Approval,
    BranchStatus,
    QuestionStatus,
    QueueStatus,
    RunStatus,
    SpecStatus,
    TaskStatus,
)

# table -> (primary key column, every column in order)
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "runs": ("id", ("id", "status", "started", "finished", "specs", "concurrency", "sandbox",
                    "detail", "budget_stop")),
    "specs": ("id", ("id", "title", "path", "priority", "depends_on", "digest", "status",
                     "tasks_total", "tasks_landed", "tasks_rejected", "tasks_failed", "tokens",
                     "cost", "detail", "updated", "planned_digest")),
    "tasks": ("key", ("key", "spec_id", "task_id", "title", "role", "status", "depends_on",
                      "paths", "acceptance", "instructions", "attempt", "agent_id", "branch",
                      "worktree", "base_commit", "commit_sha", "landed_commit", "tokens",
                      "cost", "reason", "updated", "cancel", "ordinal", "returns", "revising",
                      "since")),
    "agents": ("id", ("id", "spec_id", "task_id", "role", "model", "status", "step",
                      "tokens_in", "tokens_out", "cost", "started", "finished", "summary",
                      "last_tool", "messages", "updated")),
    "branches": ("name", ("name", "spec_id", "task_id", "head", "base", "status", "files",
                          "insertions", "deletions", "gate", "reason", "landed_commit",
                          "updated")),
    "gates": ("key", ("key", "task_key", "gate", "passed", "detail", "duration", "updated",
                        "verdict", "findings")),
    # Per test, over the race gate's repeated runs: how often it ran and failed.
    "test_history": ("name", ("name", "runs", "failures", "last_failed", "updated")),
    "budgets": ("key", ("key", "scope", "owner", "tokens", "cost")),
    "queue": ("key", ("key", "spec_id", "task_id", "branch", "commit_sha", "position", "status",
                      "risk", "risk_reasons", "approval", "reason", "entered", "updated",
                      "cap", "suspect", "failed_tests", "suspect_single")),
    # The queue's chain (agents/queue/chain.py): each entry's latest link, every test run,
    # the tests seen to flake, and the queue's own row (main as it last saw it, the batch
    # size, whether main's own tests stop it).
    "links": ("key", ("key", "spec_id", "task_id", "base", "entry_commit", "merge_commit",
                      "tree", "ok", "gate", "reason", "updated")),
    "test_runs": ("id", ("id", "commit_sha", "keys", "position", "size", "attempt", "alone",
                         "runner", "status", "failing", "reason", "output", "duration",
                         "handled", "flaky", "started", "updated")),
    "flaky_tests": ("name", ("name", "flakes", "last_run", "updated", "quarantined",
                             "reason")),
    "queue_state": ("key", ("key", "main", "batch", "paused", "pause_reason", "retry_at",
                            "runs", "updated")),
    "conflicts": ("key", ("key", "a", "b", "a_head", "b_head", "status", "files", "updated")),
    # Work in progress and the engine process that holds it (see agents/decide.py).
    "leases": ("work", ("work", "holder", "kind", "since", "updated")),
    # status: pending (an agent waits), answered, or withdrawn (its agent stopped first).
    "questions": ("id", ("id", "agent_id", "spec_id", "task_id", "task_key", "question",
                         "options", "status", "answer", "answered_by", "why", "asked",
                         "answered", "updated")),
}

JSON_COLUMNS = {"findings", "specs", "depends_on", "paths", "acceptance", "files", "risk_reasons",
                "options", "keys", "failing", "failed_tests"}

Row = dict[str, Any]


def task_key(spec_id: str | None, task_id: str | None) -> str:
    return f"{spec_id}/{task_id}"


def pair_key(a: str, b: str) -> str:
    """One key per unordered pair of branches."""
    return " ".join(sorted((a, b)))


@dataclass
class State:
    """Projection rows by table and key, plus the rows touched since the last flush."""

    tables: dict[str, dict[str, Row]] = field(
        default_factory=lambda: {name: {} for name in TABLES}
    )
    dirty: dict[str, set[str]] = field(default_factory=lambda: {name: set() for name in TABLES})
    current_run: str | None = None
    # Model usage not yet spread to tasks, specs and budgets: (spec, task) -> [tokens, usd].
    # Spreading once per batch instead of once per model call keeps appends cheap.
    usage: dict[tuple[str | None, str | None], list[float]] = field(default_factory=dict)
    # Indexes of the tasks table, kept with it, so that deciding what to do next looks at
    # the tasks still open (by spec) and the cancel requests, not at every task ever planned.
    open_tasks: dict[str, dict[str, Row]] = field(default_factory=dict)
    cancels: set[str] = field(default_factory=set)

    def index_task(self, row: Row) -> None:
        key, spec_id = row["key"], row["spec_id"]
        if row["status"] in TASK_DONE:
            group = self.open_tasks.get(spec_id)
            if group is not None:
                group.pop(key, None)
                if not group:
                    del self.open_tasks[spec_id]
        else:
            self.open_tasks.setdefault(spec_id, {})[key] = row
        if row["cancel"]:
            self.cancels.add(key)
        else:
            self.cancels.discard(key)

    def reindex(self) -> State:
        """Build the task indexes from the table (after it was loaded or replayed)."""
        self.open_tasks.clear()
        self.cancels.clear()
        for row in self.tables["tasks"].values():
            self.index_task(row)
        return self

    def row(self, table: str, key: str, **defaults: Any) -> Row:
        """The row for key, created with defaults (and every other column None) if absent."""
        rows = self.tables[table]
        found = rows.get(key)
        if found is None:
            pk, columns = TABLES[table]
            found = dict.fromkeys(columns)
            found[pk] = key
            found.update(defaults)
            rows[key] = found
        self.dirty[table].add(key)
        return found

    def get(self, table: str, key: str) -> Row | None:
        return self.tables[table].get(key)

    def spread_usage(self) -> None:
        """Add the model usage gathered since the last call to its tasks, then once per spec
        and once for the run (a batch of a thousand turns touches one run row, not a
        thousand times)."""
        if not self.usage:
            return
        by_spec: dict[str, list[float]] = {}
        run_tokens, run_cost = 0, 0.0
        for (spec_id, task_id), (tokens, cost) in self.usage.items():
            itokens = int(tokens)
            if task_id is not None:
                t = self.row("tasks", task_key(spec_id, task_id))
                t["tokens"] = (t["tokens"] or 0) + itokens
                t["cost"] = (t["cost"] or 0.0) + cost
            if spec_id is not None:
                total = by_spec.get(spec_id)
                if total is None:
                    by_spec[spec_id] = [itokens, cost]
                else:
                    total[0] += itokens
                    total[1] += cost
            run_tokens += itokens
            run_cost += cost
        specs = self.tables["specs"]
        for spec_id, (tokens, cost) in by_spec.items():
            itokens = int(tokens)
            spec = specs.get(spec_id)
            if spec is not None:
                self.dirty["specs"].add(spec_id)
                spec["tokens"] += itokens
                spec["cost"] += cost
            _spend(self, "spec", spec_id, itokens, cost)
        if self.current_run is not None:
            _spend(self, "run", self.current_run, run_tokens, run_cost)
        self.usage.clear()

    def take_dirty(self) -> dict[str, list[Row]]:
        self.spread_usage()
        out = {t: [self.tables[t][k] for k in keys] for t, keys in self.dirty.items() if keys}
        for keys in self.dirty.values():
            keys.clear()
        return out

    def comparable(self) -> dict[str, dict[str, Row]]:
        self.spread_usage()
        return {t: {k: dict(r) for k, r in rows.items()} for t, rows in self.tables.items()}


def _spend(state: State, scope: str, owner: str, tokens: int, cost: float) -> None:
    key = f"{scope}:{owner}"
    b = state.tables["budgets"].get(key)
    if b is None:
        b = state.row("budgets", key, scope=scope, owner=owner, tokens=0, cost=0.0)
    else:
        state.dirty["budgets"].add(key)
    b["tokens"] += tokens
    b["cost"] += cost


def _count_message(state: State, agent_id: str, ts: float, n: int = 1) -> None:
    """The conversation itself is the agent's events; the projection keeps its length."""
    a = state.row("agents", agent_id)
    a["messages"] = (a["messages"] or 0) + n
    a["updated"] = ts


_TASK_FAILED = frozenset({TaskStatus.FAILED, TaskStatus.BLOCKED, TaskStatus.CANCELLED})


def _spec_counts(state: State, spec_id: str | None, ts: float) -> None:
    if spec_id is None or spec_id not in state.tables["specs"]:
        return
    spec = state.row("specs", spec_id)
    # Tasks a re-plan dropped (no ordinal) no longer count.
    tasks = [t for t in state.tables["tasks"].values()
             if t["spec_id"] == spec_id and t["ordinal"] is not None]
    landed, rejected = TaskStatus.LANDED, TaskStatus.REJECTED  # looked up once, not per task
    spec["tasks_total"] = len(tasks)
    spec["tasks_landed"] = sum(t["status"] == landed for t in tasks)
    spec["tasks_rejected"] = sum(t["status"] == rejected for t in tasks)
    spec["tasks_failed"] = sum(t["status"] in _TASK_FAILED for t in tasks)
    spec["updated"] = ts


def _set_task(state: State, e: ev._Event, ts: float, **values: Any) -> Row:
    return _set_task_ids(state, e.spec_id, e.task_id, ts, **values)


def _set_task_ids(
    state: State, spec_id: str | None, task_id: str | None, ts: float, **values: Any
) -> Row:
    t = state.row("tasks", task_key(spec_id, task_id), spec_id=spec_id, task_id=task_id)
    t.update(values)
    t["updated"] = ts
    if "status" in values or "cancel" in values or t["key"] not in state.open_tasks.get(
            spec_id or "", {}):
        state.index_task(t)
    return t


# Handlers write a status as its plain string (`.value`): a row holds what the store holds,
# so a row replayed from the log is the row loaded from the store, repr and all (a drift
# report says 'landed', not <TaskStatus.LANDED: 'landed'>). Comparisons use the members.
Handler = Callable[[State, Any, float], None]
HANDLERS: dict[str, Handler] = {}


def on(kind: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        return fn

    return register


@on("run_started")
def _run_started(s: State, e: ev.RunStarted, ts: float) -> None:
    s.spread_usage()
    s.current_run = e.run_id
    s.row("runs", e.run_id).update(
        status=RunStatus.RUNNING.value, started=ts, specs=e.specs, concurrency=e.concurrency,
        sandbox=e.sandbox, detail="", budget_stop=None,
    )
    # A spec that ended in an earlier run is looked at again by this one: its landed and
    # failed tasks stay as they are, a dependency that is done now unblocks it, and one
    # whose plan was refused is planned again.
    planned = {t["spec_id"] for t in s.tables["tasks"].values()}
    for spec_id in e.specs:
        spec = s.get("specs", spec_id)
        if spec is None or spec["status"] not in (SpecStatus.FAILED, SpecStatus.BLOCKED):
            continue
        if spec_id in planned:
            s.row("specs", spec_id)["status"] = SpecStatus.PLANNED.value
        else:
            s.row("specs", spec_id).update(status=SpecStatus.REGISTERED.value, planned_digest=None)


@on("run_finished")
def _run_finished(s: State, e: ev.RunFinished, ts: float) -> None:
    s.spread_usage()
    s.row("runs", e.run_id).update(status=e.status, finished=ts, detail=e.detail)


@on("lease_taken")
def _lease_taken(s: State, e: ev.LeaseTaken, ts: float) -> None:
    s.row("leases", e.work).update(holder=e.holder, kind=e.work.split(":", 1)[0], since=ts,
                                   updated=ts)


@on("lease_released")
def _lease_released(s: State, e: ev.LeaseReleased, ts: float) -> None:
    lease = s.get("leases", e.work)
    if lease is not None and lease["holder"] == e.holder:
        s.row("leases", e.work).update(holder=None, updated=ts)


@on("cancel_requested")
def _cancel_requested(s: State, e: ev.CancelRequested, ts: float) -> None:
    key = task_key(e.spec_id, e.task_id)
    if key in s.tables["tasks"]:
        _set_task(s, e, ts, cancel=e.by)


@on("budget_stop")
def _budget_stop(s: State, e: ev.BudgetStop, ts: float) -> None:
    if e.scope == "run" and s.current_run is not None:
        s.row("runs", s.current_run)["budget_stop"] = \
            f"run {e.measure} budget: {e.used:g} used of {e.limit:g}"


@on("spec_registered")
def _spec_registered(s: State, e: ev.SpecRegistered, ts: float) -> None:
    spec = s.row("specs", e.spec_id or "", status=SpecStatus.REGISTERED.value, tasks_total=0,
                 tasks_landed=0, tasks_rejected=0, tasks_failed=0, tokens=0, cost=0.0,
                 detail="")
    spec.update(title=e.title, path=e.path, priority=e.priority, depends_on=e.depends_on,
                digest=e.digest, status=SpecStatus.REGISTERED.value, detail="", updated=ts)


@on("spec_saved")
def _spec_saved(s: State, e: ev.SpecSaved, ts: float) -> None:
    if e.spec_id in s.tables["specs"]:
        s.row("specs", e.spec_id or "").update(digest=e.digest, path=e.path, updated=ts)


_KEPT_BY_REPLAN = frozenset({TaskStatus.LANDED, TaskStatus.COMMITTED, TaskStatus.LANDING})
_IN_PROGRESS = frozenset({TaskStatus.RUNNING})
_STOPPED_BY_REPLAN = frozenset({TaskStatus.RUNNING, TaskStatus.COMMITTED, TaskStatus.LANDING})


_FIELDS = ("title", "role", "depends_on", "paths", "acceptance", "instructions")


@on("plan_accepted")
def _plan_accepted(s: State, e: ev.PlanAccepted, ts: float) -> None:
    """A plan, or a re-plan of an edited spec, diffed against the one in force: a task whose
    fields are unchanged keeps its work (running or landed); a changed one is stopped and
    starts again with its new fields (landed work is redone on top of main); a task the new
    plan drops is stopped for good and no longer counts; a new one starts."""
    planned = set()
    for ordinal, task in enumerate(e.tasks):
        key = task_key(e.spec_id, task.id)
        planned.add(key)
        existing = s.get("tasks", key)
        fields = {"title": task.title, "role": task.role, "depends_on": task.depends_on,
                  "paths": task.paths, "acceptance": task.acceptance,
                  "instructions": task.instructions}
        same = existing is not None and all(existing[f] == fields[f] for f in _FIELDS)
        if same and existing["status"] in _KEPT_BY_REPLAN | _IN_PROGRESS:
            s.row("tasks", key)["ordinal"] = ordinal
            if existing["cancel"] in (REPLANNED, DROPPED):  # back in the plan as it was
                _set_task_ids(s, e.spec_id, task.id, ts, cancel=None)
            continue  # a re-plan keeps work whose inputs did not change
        if existing is not None and existing["status"] in _STOPPED_BY_REPLAN:
            # At work (or queued) with the old fields: stopped first, then started again.
            _set_task_ids(s, e.spec_id, task.id, ts, **fields, ordinal=ordinal,
                          cancel=REPLANNED)
            continue
        _set_task_ids(
            s, e.spec_id, task.id, ts, **fields, status=TaskStatus.PENDING.value,
            attempt=(existing or {}).get("attempt") or 0, tokens=0, cost=0.0, reason="",
            ordinal=ordinal, cancel=None,
        )
    for key, row in list(s.tables["tasks"].items()):
        if row["spec_id"] != e.spec_id or key in planned or row["ordinal"] is None:
            continue
        if row["status"] in TASK_DONE:
            _set_task_ids(s, e.spec_id, row["task_id"], ts, ordinal=None)
        else:  # dropped by the new plan: stopped for good, and no longer counted
            _set_task_ids(s, e.spec_id, row["task_id"], ts, ordinal=None, cancel=DROPPED)
    spec = s.row("specs", e.spec_id or "")
    spec.update(status=SpecStatus.PLANNED.value, planned_digest=e.spec_digest or spec["digest"])
    _spec_counts(s, e.spec_id, ts)


@on("plan_rejected")
def _plan_rejected(s: State, e: ev.PlanRejected, ts: float) -> None:
    spec = s.row("specs", e.spec_id or "")
    # This text was tried: it is not planned again until it changes.
    spec.update(status=SpecStatus.FAILED.value, detail=e.reason, updated=ts,
                planned_digest=spec["digest"])


@on("spec_finished")
def _spec_finished(s: State, e: ev.SpecFinished, ts: float) -> None:
    s.row("specs", e.spec_id or "").update(status=e.status, detail=e.detail, updated=ts)


@on("task_started")
def _task_started(s: State, e: ev.TaskStarted, ts: float) -> None:
    _set_task(s, e, ts, status=TaskStatus.RUNNING.value, attempt=e.attempt, agent_id=e.agent_id,
              branch=e.branch, worktree=e.worktree, base_commit=e.base_commit, reason="",
              cancel=None, revising=None, since=None)
    # An earlier attempt's agent that died waiting (its worktree lost) will never resume.
    _withdraw_questions(s, ts, lambda q: q["spec_id"] == e.spec_id
                        and q["task_id"] == e.task_id and q["agent_id"] != e.agent_id)
    if e.spec_id in s.tables["specs"]:
        s.row("specs", e.spec_id or "")["status"] = SpecStatus.RUNNING.value


@on("task_failed")
def _task_failed(s: State, e: ev.TaskFailed, ts: float) -> None:
    status = TaskStatus.PENDING if e.will_retry else TaskStatus.FAILED
    _set_task(s, e, ts, status=status.value, reason=e.reason)
    _spec_counts(s, e.spec_id, ts)


@on("task_blocked")
def _task_blocked(s: State, e: ev.TaskBlocked, ts: float) -> None:
    _set_task(s, e, ts, status=TaskStatus.BLOCKED.value, reason=e.reason)
    _spec_counts(s, e.spec_id, ts)


def _task_ended(s: State, e: ev._Event, ts: float, status: TaskStatus, reason: str,
                **values: Any) -> Row:
    """A task's work ended (cancelled, landed, refused). One a re-plan changed meanwhile
    (cancel: REPLANNED) is not done: it starts again, with its new fields."""
    row = s.get("tasks", task_key(e.spec_id, e.task_id)) or {}
    if row.get("cancel") == REPLANNED:
        _set_task(s, e, ts, **values, status=TaskStatus.PENDING.value, cancel=None,
                  reason="re-planned: starts again", revising=None, since=None)
    else:
        _set_task(s, e, ts, **values, status=status.value, reason=reason)
    return row


@on("task_cancelled")
def _task_cancelled(s: State, e: ev.TaskCancelled, ts: float) -> None:
    row = _task_ended(s, e, ts, TaskStatus.CANCELLED, e.reason)
    _queue_status_if_open(s, e, ts, f"cancelled: {e.reason or 'by request'}")
    branch = s.get("branches", row.get("branch") or "")
    if branch is not None and branch["status"] in (BranchStatus.OPEN, BranchStatus.LANDING):
        # Closed: no longer forecast against the others, and never landed.
        s.row("branches", branch["name"]).update(status=BranchStatus.REJECTED.value,
                                                 gate="cancelled", reason=e.reason,
                                                 updated=ts)
    _withdraw_questions(s, ts, lambda q: q["spec_id"] == e.spec_id
                        and q["task_id"] == e.task_id)
    _spec_counts(s, e.spec_id, ts)


@on("branch_committed")
def _branch_committed(s: State, e: ev.BranchCommitted, ts: float) -> None:
    _set_task(s, e, ts, status=TaskStatus.COMMITTED.value, commit_sha=e.commit)
    s.row("branches", e.branch).update(
        spec_id=e.spec_id, task_id=e.task_id, head=e.commit, base=e.base_commit,
        status=BranchStatus.OPEN.value, files=e.files, insertions=e.insertions,
        deletions=e.deletions, gate=None, reason="", updated=ts,
    )


@on("landing_started")
def _landing_started(s: State, e: ev.LandingStarted, ts: float) -> None:
    _set_task(s, e, ts, status=TaskStatus.LANDING.value)
    s.row("branches", e.branch).update(status=BranchStatus.LANDING.value, updated=ts)
    _queue_status(s, e, ts, QueueStatus.LANDING)


def _queue_status_if_open(s: State, e: ev._Event, ts: float, reason: str) -> None:
    """A queue entry whose task stopped leaves the queue (it shows why)."""
    entry = s.get("queue", task_key(e.spec_id, e.task_id))
    if entry is not None and entry["status"] in QUEUE_OPEN:
        _queue_status(s, e, ts, QueueStatus.REJECTED, reason)


def _queue_status(s: State, e: ev._Event, ts: float, status: QueueStatus,
                  reason: str = "") -> None:
    key = task_key(e.spec_id, e.task_id)
    if key in s.tables["queue"]:
        s.row("queue", key).update(status=status.value, reason=reason, updated=ts)


@on("queue_entered")
def _queue_entered(s: State, e: ev.QueueEntered, ts: float) -> None:
    key = task_key(e.spec_id, e.task_id)
    existing = s.get("queue", key)
    if existing is not None and existing["status"] in QUEUE_OPEN:
        position = existing["position"]
    else:
        position = 1 + max((q["position"] or 0 for q in s.tables["queue"].values()), default=0)
    s.row("queue", key).update(
        spec_id=e.spec_id, task_id=e.task_id, branch=e.branch, commit_sha=e.commit,
        position=position,
        status=(QueueStatus.AWAITING_APPROVAL if e.needs_approval else QueueStatus.QUEUED).value,
        risk=e.risk, risk_reasons=e.risk_reasons,
        approval=(Approval.PENDING if e.needs_approval else Approval.NOT_REQUIRED).value,
        reason="", entered=ts, updated=ts,
        # A new commit (a revision, a retry) starts with a clean record: what the queue
        # noted on the old one, and its runs alone on main, are no evidence against it.
        cap=None, suspect=None, failed_tests=None, suspect_single=None,
    )
    for run_id, run in s.tables["test_runs"].items():
        if run["alone"] == key and not run["handled"] and run["status"] != "running":
            s.row("test_runs", run_id).update(handled=1, updated=ts)


@on("approval_requested")
def _approval_requested(s: State, e: ev.ApprovalRequested, ts: float) -> None:
    key = task_key(e.spec_id, e.task_id)
    entry = s.get("queue", key)
    if entry is None or entry["commit_sha"] != e.commit or entry["status"] not in QUEUE_OPEN:
        return  # the entry moved on (a new commit, landed, rejected): nothing to ask
    s.row("queue", key).update(
        approval=Approval.PENDING.value, status=QueueStatus.AWAITING_APPROVAL.value,
        risk_reasons=[*(entry.get("risk_reasons") or []), *e.reasons], updated=ts)


@on("approval_decided")
def _approval_decided(s: State, e: ev.ApprovalDecided, ts: float) -> None:
    key = task_key(e.spec_id, e.task_id)
    if key in s.tables["queue"]:
        s.row("queue", key).update(
            approval=(Approval.APPROVED if e.approved else Approval.REJECTED).value,
            status=(QueueStatus.QUEUED if e.approved else QueueStatus.REJECTED).value,
            reason=e.reason, updated=ts)


@on("queue_reordered")
def _queue_reordered(s: State, e: ev.QueueReordered, ts: float) -> None:
    queue = s.tables["queue"]
    positions = sorted(queue[k]["position"] for k in e.order if k in queue)
    for key, position in zip((k for k in e.order if k in queue), positions, strict=True):
        s.row("queue", key).update(position=position, updated=ts)


@on("queue_retried")
def _queue_retried(s: State, e: ev.QueueRetried, ts: float) -> None:
    _set_task(s, e, ts, status=TaskStatus.COMMITTED.value, reason="")
    s.row("branches", e.branch).update(status=BranchStatus.OPEN.value, gate=None, reason="",
                                        updated=ts)
    key = task_key(e.spec_id, e.task_id)
    if key in s.tables["queue"]:
        position = 1 + max((q["position"] or 0 for q in s.tables["queue"].values()), default=0)
        entry = s.row("queue", key)
        # A person's earlier verdict was about the earlier attempt: ask again.
        asked = entry["approval"] in (Approval.APPROVED, Approval.REJECTED, Approval.PENDING)
        entry.update(status=(QueueStatus.AWAITING_APPROVAL if asked else QueueStatus.QUEUED).value,
                     approval=Approval.PENDING.value if asked else entry["approval"],
                     position=position, reason="", updated=ts)
    _spec_counts(s, e.spec_id, ts)


@on("queue_linked")
def _queue_linked(s: State, e: ev.QueueLinked, ts: float) -> None:
    s.row("links", task_key(e.spec_id, e.task_id)).update(
        spec_id=e.spec_id, task_id=e.task_id, base=e.base, entry_commit=e.commit,
        merge_commit=e.merge_commit, tree=e.tree, ok=int(e.ok), gate=e.gate, reason=e.reason,
        updated=ts)


def _queue_row(s: State, ts: float) -> Row:
    row = s.row("queue_state", "queue", batch=None, paused=0, pause_reason="", runs=0)
    row["updated"] = ts
    return row


@on("queue_test_started")
def _queue_test_started(s: State, e: ev.QueueTestStarted, ts: float) -> None:
    s.row("test_runs", e.run_id).update(
        commit_sha=e.commit, keys=e.keys, position=e.position, size=e.size, attempt=e.attempt,
        alone=e.alone or None, runner=e.runner, status="running", failing=[], reason="",
        output="", duration=None, handled=0, flaky=0, started=ts, updated=ts)
    queue = _queue_row(s, ts)
    queue["runs"] = (queue["runs"] or 0) + 1


@on("queue_test_finished")
def _queue_test_finished(s: State, e: ev.QueueTestFinished, ts: float) -> None:
    s.row("test_runs", e.run_id).update(
        commit_sha=e.commit, status="passed" if e.passed else "failed", failing=e.failing,
        reason=e.reason, output=e.output, duration=e.duration, updated=ts)
    queue = s.get("queue_state", "queue")
    if e.passed and queue is not None and queue["paused"] and queue["main"] == e.commit:
        queue.update(paused=0, pause_reason="")
        s.dirty["queue_state"].add("queue")


def _settle(s: State, run_ids: list[str], ts: float, flaky: bool = False) -> None:
    for run_id in run_ids:
        if run_id in s.tables["test_runs"]:
            s.row("test_runs", run_id).update(handled=1, updated=ts,
                                              **({"flaky": 1} if flaky else {}))


@on("queue_suspected")
def _queue_suspected(s: State, e: ev.QueueSuspected, ts: float) -> None:
    _settle(s, e.run_ids, ts)
    for key in e.keys:
        if key in s.tables["queue"]:
            s.row("queue", key).update(suspect=1, failed_tests=e.failing,
                                       suspect_single=int(e.single), updated=ts)


@on("queue_requeued")
def _queue_requeued(s: State, e: ev.QueueRequeued, ts: float) -> None:
    _settle(s, e.run_ids, ts, flaky=e.flaky)
    if e.flaky:
        _flakes(s, e.failing, e.run_ids[-1] if e.run_ids else "", ts)
    queue = s.tables["queue"]
    last = max((q["position"] or 0 for q in queue.values()), default=0)
    for offset, key in enumerate(k for k in e.keys if k in queue):
        entry = s.row("queue", key)
        entry.update(position=last + 1 + offset, cap=e.cap, suspect=0, suspect_single=0,
                     failed_tests=e.failing or entry["failed_tests"] or [], updated=ts)
    _queue_row(s, ts)["batch"] = e.window


@on("flake_recorded")
def _flake_recorded(s: State, e: ev.FlakeRecorded, ts: float) -> None:
    _settle(s, [e.run_id], ts, flaky=True)
    _flakes(s, e.tests, e.run_id, ts)


def _flakes(s: State, tests: list[str], run_id: str, ts: float) -> None:
    for name in tests:
        row = s.row("flaky_tests", name, flakes=0)
        row.update(flakes=(row["flakes"] or 0) + 1, last_run=run_id, updated=ts)


@on("test_history_recorded")
def _test_history_recorded(s: State, e: ev.TestHistoryRecorded, ts: float) -> None:
    for name in dict.fromkeys([*e.ran, *e.failed]):
        row = s.row("test_history", name, runs=0, failures=0)
        failures = e.failed.get(name, 0)
        row.update(runs=(row["runs"] or 0) + max(e.ran.get(name, 0), failures),
                   failures=(row["failures"] or 0) + failures, updated=ts)
        if failures:
            row["last_failed"] = e.commit


@on("tests_quarantined")
def _tests_quarantined(s: State, e: ev.TestsQuarantined, ts: float) -> None:
    for name in e.tests:
        s.row("flaky_tests", name, flakes=0).update(quarantined=ts, reason=e.reason,
                                                    last_run=(e.run_ids or [None])[-1],
                                                    updated=ts)
    _queue_row(s, ts).update(main=e.main, paused=0, pause_reason=None, retry_at=None)


@on("tests_released")
def _tests_released(s: State, e: ev.TestsReleased, ts: float) -> None:
    for name in e.tests:
        if name in s.tables["flaky_tests"]:
            s.row("flaky_tests", name).update(quarantined=None, updated=ts)


@on("queue_paused")
def _queue_paused(s: State, e: ev.QueuePaused, ts: float) -> None:
    _settle(s, e.run_ids, ts)
    _queue_row(s, ts).update(main=e.main, paused=1, pause_reason=e.reason,
                             retry_at=ts + e.retry_in)


@on("main_moved")
def _main_moved(s: State, e: ev.MainMoved, ts: float) -> None:
    queue = _queue_row(s, ts)
    queue.update(main=e.main_after, paused=0, pause_reason="")
    if e.window is not None:
        queue["batch"] = e.window


@on("conflict_checked")
def _conflict_checked(s: State, e: ev.ConflictChecked, ts: float) -> None:
    a, b = sorted((e.a, e.b))
    heads = (e.a_head, e.b_head) if a == e.a else (e.b_head, e.a_head)
    s.row("conflicts", pair_key(a, b)).update(
        a=a, b=b, a_head=heads[0], b_head=heads[1],
        status="conflict" if e.conflicts else "clean", files=e.files, updated=ts)


@on("conflict_closed")
def _conflict_closed(s: State, e: ev.ConflictClosed, ts: float) -> None:
    key = pair_key(e.a, e.b)
    if key in s.tables["conflicts"]:
        s.row("conflicts", key).update(status="closed", updated=ts)


@on("gate_result")
def _gate_result(s: State, e: ev.GateResult, ts: float) -> None:
    tk = task_key(e.spec_id, e.task_id)
    s.row("gates", f"{tk}:{e.gate}").update(
        task_key=tk, gate=e.gate, passed=int(e.passed), detail=e.detail, duration=e.duration,
        updated=ts, verdict=e.verdict or ("pass" if e.passed else "deny"), findings=e.findings,
    )


@on("branch_landed")
def _branch_landed(s: State, e: ev.BranchLanded, ts: float) -> None:
    _task_ended(s, e, ts, TaskStatus.LANDED, "", landed_commit=e.main_after)
    s.row("branches", e.branch).update(status=BranchStatus.LANDED.value, landed_commit=e.main_after,
                                        updated=ts)
    _queue_status(s, e, ts, QueueStatus.LANDED)
    _spec_counts(s, e.spec_id, ts)


@on("branch_rejected")
def _branch_rejected(s: State, e: ev.BranchRejected, ts: float) -> None:
    _task_ended(s, e, ts, TaskStatus.REJECTED, f"{e.gate}: {e.reason}")
    s.row("branches", e.branch).update(status=BranchStatus.REJECTED.value, gate=e.gate,
                                        reason=e.reason, updated=ts)
    _queue_status(s, e, ts, QueueStatus.REJECTED, f"{e.gate}: {e.reason}")
    _spec_counts(s, e.spec_id, ts)


@on("branch_returned")
def _branch_returned(s: State, e: ev.BranchReturned, ts: float) -> None:
    reason = f"{e.gate}: {e.reason}"
    _set_task(s, e, ts, status=TaskStatus.RUNNING.value, returns=e.round, revising=1,
              reason=f"returned to its agent ({reason})")
    s.row("branches", e.branch).update(status=BranchStatus.OPEN.value, gate=e.gate,
                                        reason=e.reason, updated=ts)
    _queue_status(s, e, ts, QueueStatus.REJECTED, f"returned to its agent: {reason}")
    _spec_counts(s, e.spec_id, ts)


@on("revision_started")
def _revision_started(s: State, e: ev.RevisionStarted, ts: float) -> None:
    _set_task(s, e, ts, revising=0, worktree=e.worktree, base_commit=e.base_commit,
              since=e.since)
    # Its conversation goes on: the agent is no longer finished (a crash before it resumes
    # must not be taken for a finished revision).
    if e.agent_id in s.tables["agents"]:
        s.row("agents", e.agent_id or "").update(status=AgentStatus.RUNNING.value,
                                                 finished=None, updated=ts)


@on("worktree_removed")
def _worktree_removed(s: State, e: ev.WorktreeRemoved, ts: float) -> None:
    if e.task_id is not None:
        _set_task(s, e, ts, worktree=None)


@on("agent_started")
def _agent_started(s: State, e: ev.AgentStarted, ts: float) -> None:
    a = s.row("agents", e.agent_id or "", step=0, tokens_in=0, tokens_out=0, cost=0.0,
              messages=0, started=ts)
    # An agent resumed with its question still open goes straight back to waiting for it.
    pending = QuestionStatus.PENDING
    waiting = any(q["status"] == pending and q["agent_id"] == e.agent_id
                  for q in s.tables["questions"].values())
    # One agent works a task (or plans a spec) at a time: one that replaced an agent which
    # stopped while waiting (a planner stopped with its run starts afresh) takes over.
    _withdraw_questions(s, ts, lambda q: q["spec_id"] == e.spec_id
                        and q["task_id"] == e.task_id and q["agent_id"] != e.agent_id)
    a.update(spec_id=e.spec_id, task_id=e.task_id, role=e.role, model=e.model,
             status=(AgentStatus.WAITING if waiting else AgentStatus.RUNNING).value,
             finished=None, updated=ts)
    _count_message(s, e.agent_id or "", ts, len(e.messages))


@on("agent_turn")
def _agent_turn(s: State, e: ev.AgentTurn, ts: float) -> None:
    # The hottest handler (one per model call): plain dict work, no helper layers.
    aid = e.agent_id or ""
    a = s.tables["agents"].get(aid) or s.row("agents", aid, step=0, tokens_in=0, tokens_out=0,
                                             cost=0.0, messages=0)
    s.dirty["agents"].add(aid)
    a["step"] = e.step
    a["tokens_in"] += e.tokens_in
    a["tokens_out"] += e.tokens_out
    a["cost"] += e.cost_usd
    a["model"] = e.model
    a["messages"] += 1
    a["updated"] = ts
    pending = s.usage.get((e.spec_id, e.task_id))
    if pending is None:
        s.usage[(e.spec_id, e.task_id)] = [e.tokens_in + e.tokens_out, e.cost_usd]
    else:
        pending[0] += e.tokens_in + e.tokens_out
        pending[1] += e.cost_usd


@on("agent_note")
def _agent_note(s: State, e: ev.AgentNote, ts: float) -> None:
    _count_message(s, e.agent_id or "", ts)


@on("tool_executed")
def _tool_executed(s: State, e: ev.ToolExecuted, ts: float) -> None:
    aid = e.agent_id or ""
    a = s.tables["agents"].get(aid) or s.row("agents", aid, messages=0)
    s.dirty["agents"].add(aid)
    a["last_tool"] = e.name
    a["messages"] = (a["messages"] or 0) + 1
    a["updated"] = ts


@on("agent_finished")
def _agent_finished(s: State, e: ev.AgentFinished, ts: float) -> None:
    s.row("agents", e.agent_id or "").update(status=e.status, summary=e.summary, finished=ts,
                                             updated=ts)
    # An agent stopped with the run (cancelled) resumes with the next one and goes on
    # waiting; an agent that ended for good has nobody waiting for its answers.
    if e.status != AgentStatus.CANCELLED:
        _withdraw_questions(s, ts, lambda q: q["agent_id"] == e.agent_id)


def _withdraw_questions(s: State, ts: float, which: Callable[[Row], bool]) -> None:
    pending = QuestionStatus.PENDING
    for qid, q in s.tables["questions"].items():
        if q["status"] == pending and which(q):
            s.row("questions", qid).update(status=QuestionStatus.WITHDRAWN.value, updated=ts)


@on("question_asked")
def _question_asked(s: State, e: ev.QuestionAsked, ts: float) -> None:
    # A question asked again (its agent was stopped and resumed) reopens its one row.
    s.row("questions", e.question_id).update(
        agent_id=e.agent_id, spec_id=e.spec_id, task_id=e.task_id, task_key=e.task_key,
        question=e.question, options=e.options, status=QuestionStatus.PENDING.value, answer=None,
        answered_by=None, why=None, asked=ts, answered=None, updated=ts)
    agent = s.get("agents", e.agent_id or "")
    if agent is not None:
        s.row("agents", e.agent_id or "").update(status=AgentStatus.WAITING.value, updated=ts)


@on("question_answered")
def _question_answered(s: State, e: ev.QuestionAnswered, ts: float) -> None:
    q = s.row("questions", e.question_id)
    q.update(status=QuestionStatus.ANSWERED.value, answer=e.answer, answered_by=e.by,
             why=e.why, answered=ts, updated=ts)
    agent = s.get("agents", q["agent_id"] or "")
    if agent is not None and agent["status"] == AgentStatus.WAITING:
        s.row("agents", q["agent_id"]).update(status=AgentStatus.RUNNING.value, updated=ts)


def apply(state: State, event: Any, ts: float) -> None:
    handler = HANDLERS.get(event.kind)
    if handler is not None:
        handler(state, event, ts)


def apply_batch(state: State, events: Iterable[Any], ts: float) -> None:
    handlers = HANDLERS
    for event in events:
        handler = handlers.get(event.kind)
        if handler is not None:
            handler(state, event, ts)


def apply_all(state: State, stream: Iterable[tuple[float, Any]]) -> State:
    for ts, event in stream:
        apply(state, event, ts)
    return state


# JSON columns hold lists that handlers replace but never change in place, so the text of
# a list can be kept by identity: rows are re-encoded every batch that touches them.
_json_text: dict[int, tuple[Any, str]] = {}


def _as_json(value: Any) -> str:
    hit = _json_text.get(id(value))
    if hit is not None and hit[0] is value:
        return hit[1]
    if len(_json_text) > 200_000:
        _json_text.clear()
    text = json.dumps(value)
    _json_text[id(value)] = (value, text)
    return text


# Where each table's JSON columns are. The store encodes every row a batch touched, on the
# event loop, so this runs thousands of times per busy batch: visit only those columns.
JSON_AT: dict[str, tuple[int, ...]] = {
    table: tuple(i for i, c in enumerate(cols) if c in JSON_COLUMNS)
    for table, (_, cols) in TABLES.items()
}


def encode_row(table: str, row: Row) -> tuple[Any, ...]:
    # Rows are created with every column, in order (State.row), so their values are the
    # columns unless something added a key.
    columns, at = TABLES[table][1], JSON_AT[table]
    if len(row) != len(columns):
        values = [row[c] for c in columns]
    elif not at:
        return tuple(row.values())
    else:
        values = list(row.values())
    for i in at:
        if values[i] is not None:
            values[i] = _as_json(values[i])
    return tuple(values)


def decode_row(table: str, values: Iterable[Any]) -> Row:
    row = dict(zip(TABLES[table][1], values, strict=True))
    for c in JSON_COLUMNS.intersection(row):
        if row[c] is not None:
            row[c] = json.loads(row[c])
    return row


# -- replaying the log: `factory audit verify` and `factory store rebuild` ------------------


def replay(stream: Iterable[tuple[float, Any]]) -> State:
    """The projections a writer holds after the events of `stream` ((time, event) in log
    order), from nothing: the live handlers, with model usage spread where the writer spreads
    it, at the end of each transaction. A transaction's events share one time, so a new time
    is a new transaction: sums of tokens and costs then come out as stored, bit for bit, not
    only within rounding (`apply_all` spreads once, at the end)."""
    state, handlers, last = State(), HANDLERS, None
    for ts, event in stream:
        if ts != last:
            state.spread_usage()
            last = ts
        handler = handlers.get(event.kind)
        if handler is not None:
            handler(state, event, ts)
    state.spread_usage()
    return state


@dataclass(frozen=True, slots=True)
class Drift:
    """One way the stored projections differ from a replay of the log."""

    table: str
    key: str
    column: str | None  # None: the whole row is on one side only
    stored: Any  # the stored value (with column None: the stored row, or None)
    replayed: Any  # the replay's value (with column None: the replay's row, or None)

    def __str__(self) -> str:
        if self.column is None:
            side = "log" if self.stored is None else "projection"
            return f"{self.table}[{self.key}]: only in {side}"
        return (f"{self.table}[{self.key}].{self.column}: stored {self.stored!r}, "
                f"log says {self.replayed!r}")


def _same(stored: Any, replayed: Any) -> bool:
    # Costs are sums of floats: the writer and a replay add them in the same order, but a
    # store written before `replay` spread usage per transaction may differ in the last bit.
    if isinstance(stored, float) and isinstance(replayed, float):
        return abs(stored - replayed) <= max(1e-9, 1e-12 * max(abs(stored), abs(replayed)))
    return bool(stored == replayed)


def drift(stored: State, replayed: State) -> list[Drift]:
    """Every row and column where `stored` differs from `replayed`, by table (in TABLES'
    order), key and column."""
    live, fresh = stored.comparable(), replayed.comparable()
    out: list[Drift] = []
    for table, (_, columns) in TABLES.items():
        mine, theirs = live[table], fresh[table]
        for key in sorted(mine.keys() | theirs.keys()):
            a, b = mine.get(key), theirs.get(key)
            if a is None or b is None:
                out.append(Drift(table, key, None, a, b))
                continue
            for column in columns:
                x, y = a.get(column), b.get(column)
                if not _same(x, y):
                    out.append(Drift(table, key, column, x, y))
    return out
