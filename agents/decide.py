"""What happens next: one pure function over the projections.

`decide(tables, now, settings)` looks at the whole state (specs, tasks, agents, the queue,
questions, leases) and returns the intents that move it on, and when to look again if
nothing else happens. It does no I/O and keeps nothing between calls: the engine calls it
after every committed batch (level-triggered, as a controller reconciles), carries out the
intents, and executors report only by appending events. So what runs next never depends on
a coroutine's local variable or an in-memory flag, and a restarted engine, deciding over the
same store, redoes exactly the work in progress that was lost:

- work in progress is a lease row (`plan:<spec>`, `work:<spec>/<task>`, `land`) naming its
  holder; a lease whose holder is not this engine was left by a process that is gone (one
  engine writes a store at a time), so its work is decided again;
- an agent waiting for a person holds no lease and no slot: its question is state, and it
  is resumed once the question is answered (by a person, or by the engine when nobody
  supervises or the wait timed out);
- landed work is never redone: a landed task is done, and the landing step itself checks
  whether a branch's commit is already in main.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.queue import chain
from agents.statuses import (
    DROPPED,
    QUEUE_OPEN,
    REPLANNED,
    TASK_DONE,
    AgentStatus,
    Approval,
    QuestionStatus,
    SpecStatus,
    TaskStatus,
)
from agents.store.projections import State

Row = Mapping[str, Any]
Tables = Mapping[str, Mapping[str, Row]]

UNSUPERVISED = "nobody is supervising this run"
LEFT = "the supervisor left"
SPEC_DONE = frozenset({SpecStatus.DONE, SpecStatus.FAILED, SpecStatus.BLOCKED})


@dataclass(frozen=True)
class Settings:
    """What decide needs beyond the store: the run, this engine, the limits, and whether a
    person is watching now."""

    run_id: str
    specs: tuple[str, ...]  # the run's specs, dependencies first
    holder: str  # this engine process, as its leases name it
    concurrency: int = 4
    question_timeout: float = 600.0
    supervised: bool = False
    # Someone supervised this run earlier and has gone (said in the engine's answers).
    left: bool = False
    queue: chain.QueueSettings = field(default_factory=chain.QueueSettings)
    # Times a refused entry goes back to its agent before its rejection is final.
    resubmits: int = 0


# -- intents -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Plan the spec (its planner agent, on a clean view of main)."""

    spec_id: str

    @property
    def work(self) -> str:
        return f"plan:{self.spec_id}"


@dataclass(frozen=True)
class Work:
    """Start, or resume, the task's agent, and commit what it did."""

    key: str
    spec_id: str
    task_id: str

    @property
    def work(self) -> str:
        return f"work:{self.key}"


@dataclass(frozen=True)
class Enqueue:
    """Put the task's commit in the merge queue (its risk, whether a person must approve)."""

    key: str
    spec_id: str
    task_id: str


@dataclass(frozen=True)
class Refuse:
    """A person rejected this very commit: the branch is rejected at the approval gate."""

    key: str
    spec_id: str
    task_id: str
    reason: str


@dataclass(frozen=True)
class Return:
    """The entry was refused (by a gate, its tests or a person) and goes back to its agent,
    which continues its conversation with the findings and submits again."""

    key: str
    spec_id: str
    task_id: str
    gate: str
    reason: str
    output: str = ""
    round: int = 1


@dataclass(frozen=True)
class Block:
    key: str
    spec_id: str
    task_id: str
    reason: str


@dataclass(frozen=True)
class BlockSpec:
    spec_id: str
    reason: str


@dataclass(frozen=True)
class FinishSpec:
    spec_id: str
    status: str
    detail: str


@dataclass(frozen=True)
class EngineAnswer:
    """Nobody will answer the question: the engine does (the agent decides alone)."""

    question_id: str
    why: str


@dataclass(frozen=True)
class Stop:
    """A person cancelled work this engine is doing: stop it."""

    key: str
    work: str


@dataclass(frozen=True)
class Cancel:
    """A person cancelled a task nothing works on: record it cancelled."""

    key: str
    spec_id: str
    task_id: str
    reason: str


@dataclass(frozen=True)
class Finish:
    """Every spec of the run has ended and nothing is in progress."""

    status: str


Intent = (Plan | Work | Enqueue | Refuse | Return | Block | BlockSpec | FinishSpec
          | EngineAnswer | Stop | Cancel | Finish | chain.QueueIntent)


@dataclass(frozen=True)
class Decision:
    intents: tuple[Intent, ...] = ()
    # When to decide again if no event arrives first (a question's timeout), as `now` counts.
    wake_at: float | None = None


@dataclass
class _Scratch:
    """What one call works out as it goes: the intents, what they use up, and the indexes
    built once per call (open questions by agent, waiting planners by spec)."""

    intents: list[Intent] = field(default_factory=list)
    free: int = 0
    wake_at: float | None = None
    questions: dict[str, list[Row]] = field(default_factory=dict)
    planners: dict[str, str] = field(default_factory=dict)

    def wake(self, at: float) -> None:
        self.wake_at = at if self.wake_at is None else min(self.wake_at, at)


def decide(state: State, now: float, settings: Settings) -> Decision:
    """The intents that move the run on, given the whole state now.

    It reads the projections' tables and their indexes of open tasks and cancel requests
    (kept with the tasks table), so its cost grows with the specs and the open tasks, not
    with every task a long run ever planned. A task that cannot start yet (every slot is
    taken) is passed over without a look at its dependencies: it is blocked, if it must be,
    when a slot would let it start."""
    tables = state.tables
    leases = tables["leases"]
    mine = {work for work, lease in leases.items() if lease["holder"] == settings.holder}
    busy = sum(1 for work in mine if work.startswith(("plan:", "work:")))
    out = _Scratch(free=max(0, settings.concurrency - busy))
    for question in tables["questions"].values():
        if question["status"] == QuestionStatus.PENDING:
            out.questions.setdefault(question["agent_id"], []).append(question)
    for agent_id in out.questions:
        agent = tables["agents"].get(agent_id)
        if agent is not None and agent["role"] == "planner" and \
                agent["status"] == AgentStatus.WAITING:
            out.planners[agent["spec_id"]] = agent_id
    run = tables["runs"].get(settings.run_id)
    budget_stop = run.get("budget_stop") if run is not None else None
    specs = tables["specs"]
    wanted = set(settings.specs)

    landing: list[Row] = []
    for spec_id in settings.specs:
        spec = specs.get(spec_id)
        if spec is None:
            continue
        status = spec["status"]
        # Planned from other text than the spec holds now (edited since): planned again.
        stale = spec["planned_digest"] != spec["digest"]
        if status == SpecStatus.BLOCKED or (status in SPEC_DONE and not stale):
            continue  # a later run looks at it again
        if not _dependencies_met(spec, specs, wanted, out):
            continue
        total = spec["tasks_total"] or 0
        if not total or stale:
            if not stale:  # planned from this very text, and no task came of it
                out.intents.append(FinishSpec(spec_id, SpecStatus.FAILED,
                                              spec["detail"] or "the plan has no task"))
            elif f"plan:{spec_id}" in mine or _planner_waits(spec_id, tables, now, settings,
                                                             out):
                pass
            elif out.free > 0:
                out.free -= 1
                out.intents.append(Plan(spec_id))
            continue
        open_tasks = state.open_tasks.get(spec_id)
        if not open_tasks:
            if f"plan:{spec_id}" not in mine:
                landed = spec["tasks_landed"] or 0
                out.intents.append(FinishSpec(
                    spec_id, SpecStatus.DONE if landed == total else SpecStatus.FAILED,
                    f"{landed} of {total} tasks landed"))
            continue
        pending: list[Row] = []
        for task in open_tasks.values():
            if task["status"] == TaskStatus.PENDING and not task["cancel"]:
                pending.append(task)
            else:
                _task(task, tables, mine, now, settings, budget_stop, out, landing)
        if pending and (out.free > 0 or budget_stop):
            pending.sort(key=lambda t: (t["ordinal"] or 0, t["key"]))
            for task in pending:
                _task(task, tables, mine, now, settings, budget_stop, out, landing)
                if not out.free and not budget_stop:
                    break

    paused = False
    if landing:
        paused = _queue(tables, landing, mine, now, settings, budget_stop, out)

    if not out.intents and not (mine - {f"run:{settings.run_id}"}):
        if all((specs.get(s) or {}).get("status") in SPEC_DONE for s in settings.specs):
            out.intents.append(Finish("budget" if budget_stop else "done"))
        elif paused and not settings.supervised:
            out.intents.append(Finish("paused"))  # nothing else moves; nobody can fix main
    return Decision(tuple(out.intents), out.wake_at)


def _queue(tables: Tables, landing: list[Row], mine: set[str], now: float,
           settings: Settings, budget_stop: str | None, out: _Scratch) -> bool:
    """The merge queue's intents (agents/queue/chain.py) over the cleared entries; whether
    the queue is paused because main's own tests fail. An eviction of an entry its agent
    may still revise becomes a return to that agent."""
    queue, branches = tables["queue"], tables["branches"]
    state = tables["queue_state"].get("queue") or {}
    main = state.get("main")
    if not main:
        return False  # the engine records main's head before it decides
    if state.get("paused") and (state.get("retry_at") or 0) > now:
        out.wake(state["retry_at"])
        return True  # main's own tests failed (or main could not move): wait, then retry
    entries = []
    for task in sorted(landing, key=lambda t: (queue[t["key"]]["position"] or 0, t["key"])):
        entry = dict(queue[task["key"]])
        entry["files"] = (branches.get(task["branch"] or "") or {}).get("files") or []
        entries.append(entry)
    runs = [r for r in tables["test_runs"].values()
            if r["status"] != "running" or _run_work(r) in mine]
    busy = sum(1 for work in mine if work.startswith(("queue:test:", "queue:alone:")))
    window = state.get("batch") or (chain.START_WINDOW if settings.queue.batches else 1)
    tests = tables["flaky_tests"]
    intents = chain.plan(main, entries, tables["links"], runs, window, settings.queue,
                         linking="queue:link" in mine, landing="queue:land" in mine,
                         busy=busy, flaky=frozenset(n for n, t in tests.items() if t["flakes"]),
                         quarantined=frozenset(n for n, t in tests.items()
                                               if t["quarantined"]))
    for intent in intents:
        if isinstance(intent, chain.Evict):
            task = tables["tasks"][intent.key]
            back = _returned(task, tables, settings, budget_stop, intent.gate, intent.reason,
                             intent.output)
            out.intents.append(back or intent)
        else:
            out.intents.append(intent)
    return any(isinstance(i, chain.Pause) for i in intents)


def _returned(task: Row, tables: Tables, settings: Settings, budget_stop: str | None,
              gate: str, reason: str, output: str = "") -> Return | None:
    """The return to its agent of a refused entry, if it may go back: an agent made it (a
    conversation to continue), it has not gone back `resubmits` times, and the budget
    still runs."""
    rounds = task["returns"] or 0
    agent = tables["agents"].get(task["agent_id"] or "")
    if agent is None or budget_stop or rounds >= settings.resubmits:
        return None
    return Return(task["key"], task["spec_id"], task["task_id"], gate, reason, output,
                  rounds + 1)


def _run_work(run: Row) -> str:
    """The lease a running test run is held under (as chain's intents name their work)."""
    if run["alone"]:
        return f"queue:alone:{run['alone']}:{run['attempt']}"
    return f"queue:test:{run['commit_sha']}:{run['attempt']}"


def _dependencies_met(spec: Row, specs: Mapping[str, Row], wanted: set[str],
                      out: _Scratch) -> bool:
    """Whether the specs this one depends on are done; blocks it when one never will be."""
    for dep in spec["depends_on"] or []:
        row = specs.get(dep)
        status = row["status"] if row is not None else None
        if status == SpecStatus.DONE:
            continue
        if status in (SpecStatus.FAILED, SpecStatus.BLOCKED) or dep not in wanted:
            out.intents.append(BlockSpec(spec["id"], f"depends on {dep}, which is "
                                         f"{status or 'unknown'}"))
        return False
    return True


def _task(task: Row, tables: Tables, mine: set[str], now: float, settings: Settings,
          budget_stop: str | None, out: _Scratch, landing: list[Row]) -> None:
    """What one open task needs next (appended to out; queue candidates to landing)."""
    key, spec_id, task_id = task["key"], task["spec_id"], task["task_id"]
    status = task["status"]
    work = f"work:{key}"
    if task["cancel"]:
        if work in mine:
            out.intents.append(Stop(key, work))
        elif status != TaskStatus.LANDING or "queue:land" not in mine:
            # (an entry main is being moved to lands first: its landing decides)
            out.intents.append(Cancel(key, spec_id, task_id, cancel_reason(task["cancel"])))
        return
    tasks = tables["tasks"]
    for dep in task["depends_on"] or []:
        row = tasks.get(f"{spec_id}/{dep}")
        dep_status = row["status"] if row is not None else None
        if dep_status == TaskStatus.LANDED:
            continue
        if dep_status is None or dep_status in TASK_DONE:
            out.intents.append(Block(key, spec_id, task_id, f"depends on {dep}, which is "
                                     f"{dep_status or 'missing'}"))
        return
    if status in (TaskStatus.PENDING, TaskStatus.RUNNING):
        if work in mine:
            return
        agent = tables["agents"].get(task["agent_id"] or "")
        if status == TaskStatus.RUNNING and agent is not None and \
                agent["status"] == AgentStatus.WAITING:
            if _waits_for_a_person(agent["id"], tables, now, settings, out):
                return
        if budget_stop:
            out.intents.append(Block(key, spec_id, task_id, "the run's budget is spent"))
        elif out.free > 0:
            out.free -= 1
            out.intents.append(Work(key, spec_id, task_id))
        return
    # committed, or landing when a landing was cut short
    entry = tables["queue"].get(key)
    if entry is None or entry["commit_sha"] != task["commit_sha"]:
        out.intents.append(Enqueue(key, spec_id, task_id))
    elif entry["approval"] == Approval.REJECTED:
        reason = entry["reason"] or "rejected by a person"
        out.intents.append(_returned(task, tables, settings, budget_stop, "approval", reason)
                           or Refuse(key, spec_id, task_id, reason))
    elif entry["status"] not in QUEUE_OPEN:
        out.intents.append(Enqueue(key, spec_id, task_id))  # landed or rejected before
    elif entry["approval"] != Approval.PENDING:
        landing.append(task)


def cancel_reason(cancel: str) -> str:
    """What a task's cancel marker means, said as the task's reason."""
    if cancel == REPLANNED:
        return "the spec was edited: re-planned"
    if cancel == DROPPED:
        return "the spec was edited: the new plan drops it"
    return "cancelled by request"


def _planner_waits(spec_id: str, tables: Tables, now: float, settings: Settings,
                   out: _Scratch) -> bool:
    """Whether the spec's planner stopped at a question that still waits for a person."""
    agent_id = out.planners.get(spec_id)
    return agent_id is not None and _waits_for_a_person(agent_id, tables, now, settings, out)


def _waits_for_a_person(agent_id: str, tables: Tables, now: float, settings: Settings,
                        out: _Scratch) -> bool:
    """An agent stopped at a question: True while it should go on waiting (the engine
    answers for nobody, or once the wait timed out)."""
    pending = out.questions.get(agent_id)
    if not pending:
        return False  # answered (or withdrawn): the agent resumes
    for question in pending:
        if not settings.supervised:
            out.intents.append(EngineAnswer(question["id"],
                                            LEFT if settings.left else UNSUPERVISED))
        else:
            due = (question["asked"] or now) + settings.question_timeout
            if now >= due:
                out.intents.append(EngineAnswer(
                    question["id"], f"nobody answered within {settings.question_timeout:g} s"))
            else:
                out.wake(due)
    return True
