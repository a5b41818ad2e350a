"""The reconciler: decide what happens next from the store, carry it out, report by events.

After every committed batch (and when a person's command, supervision or a timeout calls
for it) the run asks `agents.decide.decide` what to do over the whole state, and carries
out each intent: short ones (block a task, finish a spec, enqueue a commit, answer for the
engine) by appending their events at once; long ones (plan a spec, work a task, land an
entry) by an executor that first takes the work's lease, does it, reports only by appending
events, and releases the lease. No coroutine's local state or in-memory flag decides what
runs next, so a run killed at any point resumes by simply running again: its leases name a
process that is gone, and deciding over the same store redoes the lost work (landed tasks
are skipped; a landing cut short is checked against main; an agent continues its recorded
conversation in its surviving worktree).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents import decide as plan_of
from agents import events as ev
from agents import leases, provenance
from agents.budget import AgentBudget, BudgetLedger
from agents.config import FactoryConfig
from agents.conflicts import BranchInfo, ConflictForecaster
from agents.errors import FactoryError
from agents.landing import LandingRequest, LandingStep
from agents.models import ModelRouter
from agents.planner import SUBMIT_PLAN_SPEC, PlanCollector, plan_digest, planner_messages
from agents.questions import QuestionDesk
from agents.queue import chain
from agents.queue.executor import ChainExecutor, GateContext
from agents.queue.merge_queue import MergeQueue, retry_event
from agents.queue.risk import assess_risk, at_entry
from agents.runtime import AgentLimits, AgentResult, AgentRunner
from agents.sandbox.base import Limits, SandboxBackend, SandboxContext
from agents.sandbox.quota import DiskMeter, quota_of
from agents.specs import Spec, lint_score, lint_spec, parse_spec
from agents.statuses import (
    AgentStatus,
    Approval,
    BranchStatus,
    QueueStatus,
    RunStatus,
    SpecStatus,
    TaskStatus,
)
from agents.store import Store
from agents.store.projections import task_key
from agents.tools import ToolContext
from agents.workspace import CommitInfo, Workspace, WorkspaceError, branch_name

READ_ONLY_TOOLS = ["read_file", "list_files", "search_code"]
# How often entries waiting for a person are said to be waiting (seconds).
NAG_SECONDS = 60.0
# A spec that leaves a decision open is best settled before it is split into tasks.
PLANNER_TOOLS = [*READ_ONLY_TOOLS, "ask"]


class _NoCommands:
    """The planner reads; it never runs commands."""

    name = "deny"

    async def run(self, argv: Any, cwd: Path, env: Any = None, timeout: Any = None,
                  limits: Any = None) -> Any:
        from agents.sandbox.base import RunResult

        return RunResult(None, "", "the planner cannot run commands", 0.0, "denied",
                         "commands are not available to the planner")

    async def close(self) -> None:
        return None


@dataclass
class RunSummary:
    run_id: str
    status: RunStatus = RunStatus.DONE
    landed: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    # Specs of the run that did not end done (a plan refused, a dependency that failed).
    specs: list[tuple[str, str, str]] = field(default_factory=list)  # (id, status, detail)
    # Entries still in the merge queue when the run ended (its queue paused), and why.
    waiting: list[tuple[str, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Everything planned landed (`factory run` exits 0)."""
        return self.status == RunStatus.DONE


def spec_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Orchestrator:
    def __init__(
        self,
        *,
        config: FactoryConfig,
        store: Store,
        workspace: Workspace,
        router: ModelRouter,
        backend: SandboxBackend,
        lander: LandingStep,
        run_id: str,
        questions: QuestionDesk | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.ws = workspace
        self.router = router
        self.backend = backend
        self.lander = lander
        self.queue = MergeQueue(store, config.queue.approval)
        self.run_id = run_id
        self.questions = questions or QuestionDesk(store, config.run.question_timeout_seconds)
        self.holder = leases.me()
        self.live = False
        self._specs: dict[str, Spec] = {}
        self.forecaster = ConflictForecaster(workspace.root, store.append,
                                             workspace.root / ".factory" / "merge-tree")
        self.forecaster.remember(store.rows("conflicts"))
        self._forecast_lock = asyncio.Lock()
        self.limits = AgentLimits(config.run.max_steps, config.run.stuck_repeats,
                                  config.run.stuck_idle_steps)
        sb = config.sandbox
        self.sandbox_limits = Limits(sb.wall_seconds, sb.memory_mb, sb.max_processes,
                                     sb.output_bytes)
        self.quota = quota_of(sb.quota_disk_mb, sb.quota_files, sb.quota_write_mb)
        self.ledger = BudgetLedger(store, run_id, config.budgets)
        # The executors running now, by the work they hold (to stop one a person cancels).
        self._executors: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._failure: BaseException | None = None
        self._nagged = -NAG_SECONDS
        self._watching = False

    async def emit(self, *events: ev.Event) -> int:
        return await self.store.append(*events)

    def wake(self) -> None:
        """Decide again soon (a command, supervision changed)."""
        self._wake.set()

    # -- budgets ---------------------------------------------------------------------------

    def budget_for(self, spec_id: str, agent_id: str) -> AgentBudget:
        return AgentBudget(self.ledger, spec_id, agent_id)

    # -- the run ---------------------------------------------------------------------------

    def settings(self, specs: list[Spec]) -> plan_of.Settings:
        return plan_of.Settings(
            run_id=self.run_id, specs=tuple(s.id for s in specs), holder=self.holder,
            concurrency=self.config.run.concurrency,
            question_timeout=self.questions.timeout, supervised=self.questions.supervised,
            left=self.questions.ever_supervised and not self.questions.supervised,
            queue=chain.QueueSettings(mode=self.config.queue.mode,
                                      runners=self.config.queue.runners),
            resubmits=self.config.queue.resubmits)

    async def run(self, specs: list[Spec], texts: dict[str, str],
                  watch: Callable[[], Awaitable[None]] | None = None) -> RunSummary:
        """The run to its end; with `watch` (watch mode: a coroutine that reports edits to
        specs and configuration through `spec_edited` and `config_edited`), until it is
        cancelled: a run with nothing left to do waits for the next edit."""
        for spec in specs:
            row = self.store.get("specs", spec.id)
            digest = spec_digest(texts[spec.id])
            if row is None or row["digest"] != digest:
                await self.emit(ev.SpecRegistered(
                    spec_id=spec.id, title=spec.title, path=str(spec.path or ""),
                    priority=spec.priority, depends_on=spec.depends_on, digest=digest,
                ))
        self._specs = {s.id: s for s in specs}
        self._texts = texts
        run_lease = f"run:{self.run_id}"
        await self.emit(ev.LeaseTaken(work=run_lease, holder=self.holder))
        unsubscribe = self.store.subscribe(lambda _: self._wake.set())
        previous_change = self.questions.on_change
        self.questions.on_change = self.wake
        self.live = True
        self._watching = watch is not None
        watcher = asyncio.create_task(watch()) if watch is not None else None
        try:
            await self._reconcile(specs)
        finally:
            self.live = False
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            self.questions.on_change = previous_change
            unsubscribe()
            executors = list(self._executors.values())
            for task in executors:
                task.cancel()
            await asyncio.gather(*executors, return_exceptions=True)
            if isinstance(self.lander, ChainExecutor):
                self.lander.close()
            await asyncio.shield(self.emit(ev.LeaseReleased(work=run_lease,
                                                            holder=self.holder)))
        return self.summary()

    async def _reconcile(self, specs: list[Spec]) -> None:
        while True:
            self._wake.clear()
            if self._failure is not None:
                raise self._failure
            await self._observe_main()
            decision = plan_of.decide(self.store.state, time.time(),
                                      self.settings(list(self._specs.values()) or specs))
            for intent in decision.intents:
                if isinstance(intent, plan_of.Finish):
                    if self._watching:
                        continue  # watch mode: nothing to do until the next edit
                    return
                await self._act(intent)
            timeout = None if decision.wake_at is None else \
                max(0.0, decision.wake_at - time.time())
            if await self._nag():
                timeout = NAG_SECONDS if timeout is None else min(timeout, NAG_SECONDS)
            # asyncio.timeout, not wait_for: on 3.11, wait_for swallows a cancel that arrives
            # as the event is set (a run stopped while its last events commit never ended).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _nag(self) -> bool:
        """Entries that wait for a person are said so at intervals, naming the commands
        (a headless run would otherwise wait in silence); whether any wait."""
        waiting = sorted((q for q in self.store.rows("queue")
                          if q["status"] == QueueStatus.AWAITING_APPROVAL),
                         key=lambda q: q["position"] or 0)
        if not waiting:
            return False
        if time.monotonic() - self._nagged >= NAG_SECONDS:
            self._nagged = time.monotonic()
            first = waiting[0]["key"]
            await self.emit(ev.Notice(level="warning", message=(
                f"{len(waiting)} queue entr{'y waits' if len(waiting) == 1 else 'ies wait'} "
                f"for a person: {', '.join(q['key'] for q in waiting[:5])}; "
                f"`factory approve {first}` lets it land, `factory reject {first} --reason "
                f"TEXT` refuses it")))
        return True

    async def _observe_main(self) -> None:
        """Main's head as the store knows it: moved by someone else, it is recorded so.
        Not while this engine moves main itself (its landing records the move)."""
        if "queue:land" in self._executors:
            return
        head = self.ws.main_head()
        known = (self.store.get("queue_state", "queue") or {}).get("main")
        if head != known:
            await self.emit(ev.MainMoved(main_before=known or "", main_after=head,
                                         by="outside" if known else "engine"))

    async def _act(self, intent: plan_of.Intent) -> None:
        """Carry out one intent: executors for long work, events for the rest."""
        match intent:
            case plan_of.Plan() | plan_of.Work():
                await self._start(intent)
            case chain.LinkEntry() | chain.TestPoint() | chain.TestAlone() | chain.LandChain():
                await self._start(intent)
            case chain.Evict():
                await self._evict(intent)
            case chain.Suspect():
                await self.emit(ev.QueueSuspected(keys=list(intent.keys),
                                                  run_ids=list(intent.run_ids),
                                                  failing=list(intent.failing),
                                                  single=intent.single))
            case chain.Requeue():
                await self.emit(ev.QueueRequeued(keys=list(intent.keys), cap=intent.cap,
                                                 run_ids=list(intent.run_ids),
                                                 failing=list(intent.failing),
                                                 window=intent.window, flaky=intent.flaky))
            case chain.FlakeSeen():
                await self.emit(ev.FlakeRecorded(run_id=intent.run_id,
                                                 tests=list(intent.failing)))
            case chain.Pause():
                await self.emit(ev.QueuePaused(main=intent.main, reason=intent.reason,
                                               run_ids=list(intent.run_ids)),
                                ev.Notice(level="error", message=(
                                    f"the merge queue is paused: main's own tests fail "
                                    f"({intent.reason}); nothing is blamed on an entry. "
                                    f"Fix the test command or main; main is tested again "
                                    f"in a minute")))
            case chain.Quarantine():
                await self.emit(ev.TestsQuarantined(main=intent.main, tests=list(intent.tests),
                                                    reason=intent.reason,
                                                    run_ids=list(intent.run_ids)),
                                ev.Notice(level="error", message=(
                                    f"main's own tests fail: {', '.join(intent.tests[:5])} "
                                    f"({intent.reason}). Quarantined: their failures are "
                                    f"blamed on nobody until a tree the queue lands passes "
                                    f"them; fix them on main")))
            case chain.Release():
                await self.emit(ev.TestsReleased(tests=list(intent.tests),
                                                 run_id=intent.run_id),
                                ev.Notice(level="info", message=(
                                    f"quarantined tests pass again and count: "
                                    f"{', '.join(intent.tests[:5])}")))
            case plan_of.Stop(work=work):
                executor = self._executors.get(work)
                # Once: a second cancel would land in the executor's own clean-up.
                if executor is not None and not executor.cancelling():
                    executor.cancel()
            case plan_of.Enqueue():
                await self._enqueue(intent)
            case plan_of.Return():
                await self._return(intent)
            case plan_of.Refuse():
                row = self.store.get("tasks", intent.key) or {}
                await self.emit(ev.BranchRejected(
                    spec_id=intent.spec_id, task_id=intent.task_id, branch=row.get("branch")
                    or branch_name(intent.spec_id, intent.task_id), gate="approval",
                    reason=intent.reason))
                await self.forecast()
            case plan_of.Block():
                await self.emit(ev.TaskBlocked(spec_id=intent.spec_id, task_id=intent.task_id,
                                               reason=intent.reason))
            case plan_of.BlockSpec():
                await self.emit(ev.SpecFinished(spec_id=intent.spec_id, status=SpecStatus.BLOCKED,
                                                detail=intent.reason))
            case plan_of.FinishSpec():
                await self.emit(ev.SpecFinished(spec_id=intent.spec_id,
                                                status=intent.status,  # type: ignore[arg-type]
                                                detail=intent.detail))
            case plan_of.EngineAnswer():
                await self.questions.answer_for_engine(intent.question_id, intent.why)
            case plan_of.Cancel():
                await self._cancel_idle(intent)

    async def _start(self, intent: plan_of.Plan | plan_of.Work | chain.LinkEntry
                     | chain.TestPoint | chain.TestAlone | chain.LandChain) -> None:
        """Take the work's lease (recorded before anything is done), then run its executor."""
        work = intent.work
        if work in self._executors:
            return
        await self.emit(ev.LeaseTaken(work=work, holder=self.holder))

        async def execute() -> None:
            try:
                match intent:
                    case plan_of.Plan():
                        await self._plan(self._specs[intent.spec_id])
                    case plan_of.Work():
                        await self._work(self._specs[intent.spec_id], intent.task_id)
                    case chain.LinkEntry():
                        await self._link(intent)
                    case chain.TestPoint():
                        await self.chain_executor.test(intent)
                    case chain.TestAlone():
                        await self.chain_executor.alone(intent, self._request(intent.key))
                    case chain.LandChain():
                        await self._land_chain(intent)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                # A bug, not an outcome: the run stops with it, as an exception.
                if self._failure is None:
                    self._failure = exc
            finally:
                self._executors.pop(work, None)
                await asyncio.shield(self.emit(ev.LeaseReleased(work=work,
                                                                holder=self.holder)))
                self._wake.set()

        self._executors[work] = asyncio.create_task(execute(), name=f"factory {work}")

    async def forecast(self) -> None:
        """Re-check the open branches' pairs; called whenever a branch opens or closes."""
        async with self._forecast_lock:
            live = (BranchStatus.OPEN, BranchStatus.LANDING)
            branches = {b["name"]: BranchInfo(b["name"], b["head"], b["files"] or [])
                        for b in self.store.rows("branches") if b["status"] in live and b["head"]}
            try:
                await self.forecaster.refresh(branches)
            except FactoryError as exc:
                await self.emit(ev.Notice(level="warning",
                                          message=f"conflict forecast failed: {exc}"))

    async def retry(self, key: str) -> None:
        """Put a rejected branch back in the queue; it lands in this run if one is going,
        else in the next `factory run`."""
        await self.emit(retry_event(self.store, key))


    def summary(self) -> RunSummary:
        out = RunSummary(self.run_id)
        for t in self.store.rows("tasks"):
            if t["spec_id"] not in self._specs:
                continue  # another run's work: this run is judged by its own specs
            key = t["key"]
            if t["status"] == TaskStatus.LANDED:
                out.landed.append(key)
            elif t["status"] == TaskStatus.REJECTED:
                out.rejected.append((key, t["reason"] or ""))
            elif t["status"] in (TaskStatus.FAILED, TaskStatus.BLOCKED, TaskStatus.CANCELLED):
                out.failed.append((key, t["reason"] or t["status"]))
            elif t["status"] in (TaskStatus.COMMITTED, TaskStatus.LANDING):
                queue = self.store.get("queue_state", "queue") or {}
                out.waiting.append((key, "the merge queue is paused: "
                                    + (queue.get("pause_reason") or "main's tests fail")
                                    if queue.get("paused") else "still in the merge queue"))
        for spec_id in self._specs:
            spec = self.store.get("specs", spec_id) or {}
            if spec.get("status") != SpecStatus.DONE:
                out.specs.append((spec_id, spec.get("status") or "unknown",
                                  spec.get("detail") or ""))
        run = self.store.get("runs", self.run_id) or {}
        if run.get("budget_stop"):
            out.status = RunStatus.BUDGET
        elif out.rejected or out.failed or out.specs or out.waiting:
            out.status = RunStatus.FAILED  # it ran to its end; not everything planned landed
        return out

    # -- executors: planning ---------------------------------------------------------------

    async def _plan(self, spec: Spec) -> None:
        # The spec as it is on disk now (it may have been edited and saved since the run
        # began): what is planned, and recorded as seen, so the plan and the record agree.
        text = self._texts[spec.id]
        previous = self._plan_in_force(spec.id)
        if spec.path is not None:
            try:
                text = await asyncio.to_thread(Path(spec.path).read_text, encoding="utf-8")
                spec = parse_spec(text, Path(spec.path))
            except (OSError, UnicodeError, FactoryError) as exc:
                if not previous:
                    await self.emit(ev.PlanRejected(spec_id=spec.id,
                                                    reason=f"cannot read the spec: {exc}"))
                    return
                # A plan is in force: it stays, planned from the last text that parsed.
                await self.emit(ev.Notice(spec_id=spec.id, level="error", message=(
                    f"{exc}; planning from the last saved text that parsed")))
                text = self._texts[spec.id]
                spec = self._specs[spec.id]
            self._specs[spec.id], self._texts[spec.id] = spec, text
            row = self.store.get("specs", spec.id) or {}
            if row.get("digest") != spec_digest(text):
                path = Path(spec.path)
                shown = path.relative_to(self.ws.root) if path.is_relative_to(self.ws.root) \
                    else path
                await self.emit(ev.SpecSaved(spec_id=spec.id, path=str(shown),
                                             digest=spec_digest(text),
                                             lint_score=lint_score(lint_spec(text, path))))
        collector = PlanCollector(spec)
        # A planner stopped with its run (cancelled) continues its conversation; one that
        # ended for good is followed by a new attempt.
        attempt = sum(1 for a in self.store.rows("agents")
                      if a["spec_id"] == spec.id and a["role"] == "planner"
                      and a["status"] not in (AgentStatus.RUNNING, AgentStatus.WAITING,
                                              AgentStatus.CANCELLED)) + 1
        # ":" is in no id, so no task agent (<spec>.<task>.<n>) can be named like a planner.
        agent_id = f"plan:{spec.id}.{attempt}"
        await self._recover_plan(agent_id, collector)
        if collector.tasks is None:
            view = await self.ws.clean_view(f"plan-{spec.id}")
            tools = ToolContext(worktree=view, sandbox=_NoCommands(),
                                test_command=self.config.repo.test_command)
            try:
                result = await self._run_planner(spec, text, agent_id, tools, collector)
            finally:
                self.ws.remove(view)
        else:
            result = AgentResult(AgentStatus.FINISHED, "plan recovered from the record")
        if result.status == AgentStatus.WAITING:
            return  # asked a person: planned again once the question is answered
        if collector.tasks is None:
            await self.emit(ev.PlanRejected(spec_id=spec.id,
                                            reason=f"planner {result.status}: {result.summary}"))
            return
        await self.emit(ev.PlanAccepted(spec_id=spec.id, tasks=collector.tasks,
                                        digest=plan_digest(collector.tasks),
                                        spec_digest=spec_digest(text)))

    def _plan_in_force(self, spec_id: str) -> list[dict[str, Any]]:
        """The spec's planned tasks as the planner wrote them (what a re-plan keeps when
        unchanged), in plan order."""
        rows = sorted((t for t in self.store.rows("tasks")
                       if t["spec_id"] == spec_id and t["ordinal"] is not None),
                      key=lambda t: t["ordinal"])
        return [{"id": t["task_id"], "title": t["title"], "role": t["role"],
                 "depends_on": t["depends_on"] or [], "paths": t["paths"] or [],
                 "acceptance": t["acceptance"] or [], "instructions": t["instructions"] or ""}
                for t in rows]

    async def _run_planner(self, spec: Spec, text: str, agent_id: str, tools: ToolContext,
                           collector: PlanCollector) -> AgentResult:
        """The planner agent, reading main's tracked files only (a clean view of main)."""
        runner = AgentRunner(
            store=self.store, router=self.router, tools=tools, agent_id=agent_id,
            spec_id=spec.id, task_id=None, role="planner", key=f"plan:{spec.id}",
            opening=planner_messages(spec, text, self._plan_in_force(spec.id)),
            limits=self.limits,
            budget=self.budget_for(spec.id, agent_id), tool_names=PLANNER_TOOLS,
            custom_tools={"submit_plan": collector}, extra_specs=[SUBMIT_PLAN_SPEC],
            questions=self.questions,
        )
        return await runner.run()

    async def _recover_plan(self, agent_id: str, collector: PlanCollector) -> None:
        """A planner cut short after its plan was accepted: take the plan from its record
        instead of asking the model again."""
        messages = await self.store.messages(agent_id)
        results = {m.get("tool_call_id"): m.get("content") or "" for m in messages
                   if m.get("role") == "tool"}
        for message in messages:
            for call in message.get("tool_calls") or []:
                if call["function"]["name"] == "submit_plan" and \
                        str(results.get(call["id"], "")).startswith("plan accepted"):
                    collector(json.loads(call["function"]["arguments"]))

    # -- executors: work -------------------------------------------------------------------

    async def _work(self, spec: Spec, task_id: str) -> None:
        """One agent attempt (fresh or resumed) ending in a commit, a recorded failure, or a
        question that waits for a person."""
        row = self.store.get("tasks", task_key(spec.id, task_id))
        assert row is not None
        ids = {"spec_id": spec.id, "task_id": task_id}
        wt = None
        agent_id = row["agent_id"]
        if row["revising"] and agent_id:
            wt = await self._revise(spec, row, agent_id)
            if wt is None:
                return
        elif row["status"] == TaskStatus.RUNNING and agent_id and row["base_commit"]:
            wt = self.ws.attach(spec.id, task_id, row["base_commit"], row["since"] or "")
            if wt is None:
                await self.emit(ev.TaskFailed(**ids, reason="worktree lost while interrupted; "
                                              "starting again", will_retry=True))
                agent_id = None
        if wt is None:
            attempt = (row["attempt"] or 0) + 1
            agent_id = f"{spec.id}.{task_id}.{attempt}"
            if attempt > 1:
                await self.ws.discard(spec.id, task_id)
            # The intent is recorded first: a crash between it and the worktree's creation
            # leaves a running task without a worktree, which the next run starts again.
            await self.emit(ev.TaskStarted(
                **ids, agent_id=agent_id, attempt=attempt, branch=branch_name(spec.id, task_id),
                worktree=str(self.ws.worktree_path(spec.id, task_id)),
                base_commit=self.ws.main_head()))
            started = self.store.get("tasks", task_key(spec.id, task_id)) or {}
            try:
                wt = await self.ws.create(spec.id, task_id, started.get("base_commit"))
            except WorkspaceError as exc:
                await self.emit(ev.TaskFailed(**ids, reason=str(exc)))
                return
        assert agent_id is not None
        agent_row = self.store.get("agents", agent_id)
        if agent_row is not None and agent_row["status"] == AgentStatus.FINISHED:
            result = AgentResult(AgentStatus.FINISHED, agent_row["summary"] or "",
                                 agent_row["step"])
        else:
            result = await self._run_agent(spec, row, agent_id, wt.path)
        if result.status == AgentStatus.WAITING:
            return  # its worktree stays; it resumes once the question is answered
        current = self.store.get("tasks", task_key(spec.id, task_id)) or row
        attempt = current["attempt"] or 1
        if current["since"] and result.status not in (AgentStatus.FINISHED,
                                                      AgentStatus.CANCELLED):
            await self._revision_ended(spec, current, wt.path, f"agent {result.status}: "
                                       f"{result.summary}")
            return
        if result.status != AgentStatus.FINISHED:
            retry = attempt <= self.config.run.task_retries and result.status not in (
                AgentStatus.BUDGET, AgentStatus.CANCELLED)
            if result.status == AgentStatus.CANCELLED:
                await self.emit(ev.TaskCancelled(**ids, reason=result.summary))
            else:
                await self.emit(ev.TaskFailed(**ids, reason=f"agent {result.status}: "
                                              f"{result.summary}", will_retry=retry))
            self.ws.remove(wt.path)
            await self.emit(ev.WorktreeRemoved(**ids, path=str(wt.path)))
            return
        try:
            info = await self._commit(spec, row, agent_id, wt)
        except WorkspaceError as exc:
            if current["since"]:
                await self._revision_ended(spec, current, wt.path, str(exc))
                return
            self.ws.remove(wt.path)
            await self.emit(ev.WorktreeRemoved(**ids, path=str(wt.path)))
            await self.emit(ev.TaskFailed(**ids, reason=f"could not commit: {exc}",
                                          will_retry=attempt <= self.config.run.task_retries))
            return
        self.ws.remove(wt.path)
        await self.emit(ev.WorktreeRemoved(**ids, path=str(wt.path)))
        if info is None and current["since"]:
            await self._revision_ended(spec, current, None, "its revision changed nothing")
        elif info is None:
            await self.emit(ev.TaskFailed(**ids, reason="the agent finished without changing "
                                          "any file"))

    async def _revision_ended(self, spec: Spec, row: dict[str, Any], path: Path | None,
                              why: str) -> None:
        """A revision that brought no new commit: the refusal it answered is final, with
        the gate's own reason (what the queue found stays what the entry is rejected for)."""
        ids = {"spec_id": spec.id, "task_id": row["task_id"]}
        if path is not None:
            self.ws.remove(path)
            await self.emit(ev.WorktreeRemoved(**ids, path=str(path)))
        branch = self.store.get("branches", row["branch"] or "") or {}
        await self.emit(ev.BranchRejected(
            **ids, branch=row["branch"] or "", gate=branch.get("gate") or "queue",
            reason=f"{branch.get('reason') or 'refused'} (after revision "
            f"{row['returns'] or 1}: {why})"))
        await self.forecast()

    async def _return(self, intent: plan_of.Return) -> None:
        """A refused entry goes back to its agent: the findings join its conversation now
        (so a crash before the revision starts loses nothing), and the task is worked
        again."""
        row = self.store.get("tasks", intent.key) or {}
        agent = self.store.get("agents", row.get("agent_id") or "") or {}
        ids = {"spec_id": intent.spec_id, "task_id": intent.task_id}
        events: list[ev.Event] = []
        if intent.gate == "tests":
            events.append(ev.GateResult(**ids, gate="tests", passed=False,
                                        detail=(intent.reason + "\n" + intent.output)[:2000]))
        gate_row = self.store.get("gates", f"{intent.key}:{intent.gate}") or {}
        note = {"role": "user", "content": findings_message(
            intent, row.get("commit_sha") or "", self.config.queue.resubmits,
            gate_row.get("findings") or [])}
        branch = row.get("branch") or branch_name(intent.spec_id, intent.task_id)
        await self.emit(*events, ev.BranchReturned(
            **ids, agent_id=agent.get("id"), branch=branch, commit=row.get("commit_sha") or "",
            gate=intent.gate, reason=intent.reason, output=intent.output[-4000:],
            round=intent.round),
            ev.AgentNote(**ids, agent_id=agent.get("id"), step=agent.get("step") or 0,
                         message=note),
            ev.Notice(**ids, level="info", message=(
                f"{intent.key} goes back to its agent ({intent.gate}: {intent.reason}); "
                f"revision {intent.round} of at most {self.config.queue.resubmits}")))
        await self.forecast()

    async def _revise(self, spec: Spec, row: dict[str, Any], agent_id: str) -> Any:
        """The returned branch checked out again, main merged in where it moved; the agent
        told what the merge did. None when git could not (the task is tried afresh)."""
        ids = {"spec_id": spec.id, "task_id": row["task_id"]}
        main = self.ws.main_head()
        try:
            wt, merged_in, conflicts = await self.ws.reopen(
                spec.id, row["task_id"], row["base_commit"] or main, main)
        except WorkspaceError as exc:
            await self.emit(ev.TaskFailed(**ids, reason=f"cannot revise: {exc}",
                                          will_retry=(row["attempt"] or 1)
                                          <= self.config.run.task_retries))
            return None
        events: list[ev.Event] = []
        merged = main if merged_in else ""
        if merged:
            agent = self.store.get("agents", agent_id) or {}
            text = (f"The engine merged the current {self.ws.main_branch} "
                    f"({main[:12]}) into your worktree.")
            if conflicts:
                text += (" It conflicts in: " + ", ".join(conflicts[:20]) + ". Resolve "
                         "the conflict markers (<<<<<<< ======= >>>>>>>) in those files, "
                         "keeping both sides' intent; a file left with markers is not "
                         "committed.")
            else:
                text += " It merged cleanly; make your change work on top of it."
            events.append(ev.AgentNote(**ids, agent_id=agent_id, step=agent.get("step") or 0,
                                       message={"role": "user", "content": text}))
        await self.emit(*events, ev.RevisionStarted(
            **ids, agent_id=agent_id, round=row["returns"] or 1, worktree=str(wt.path),
            base_commit=wt.base_commit, since=wt.since, merged_main=merged,
            conflicts=conflicts))
        return wt

    async def _run_agent(self, spec: Spec, row: dict[str, Any], agent_id: str,
                         worktree: Path) -> AgentResult:
        meter = DiskMeter(worktree, self.quota)
        sandbox = await self.backend.open(SandboxContext(
            worktree=worktree, agent_id=agent_id,
            read_only=[worktree / ".git", worktree / ".factory.toml"],
            env_allow=list(self.config.sandbox.env_allow), meter=meter,
        ))
        run_as = self.backend.run_as
        key = task_key(spec.id, row["task_id"])
        try:
            tools = ToolContext(worktree=worktree, sandbox=sandbox,
                                test_command=self.config.repo.test_command,
                                limits=self.sandbox_limits, meter=meter,
                                owner=run_as.owner if run_as is not None else None)
            runner = AgentRunner(
                store=self.store, router=self.router, tools=tools, agent_id=agent_id,
                spec_id=spec.id, task_id=row["task_id"], role=row["role"] or "implementer",
                key=key, opening=task_messages(spec, row),
                limits=self.limits, budget=self.budget_for(spec.id, agent_id),
                questions=self.questions,
            )
            try:
                return await runner.run()
            except asyncio.CancelledError:
                # Stopped because a person cancelled the task (not because the run stops).
                current = self.store.get("tasks", key) or {}
                if current.get("cancel"):
                    return AgentResult(AgentStatus.CANCELLED,
                                       plan_of.cancel_reason(current["cancel"]))
                raise
        finally:
            await sandbox.close()

    def _trailers(self, spec_id: str, task_id: str, agent_id: str) -> dict[str, str]:
        agent = self.store.get("agents", agent_id) or {}
        tokens = (agent.get("tokens_in") or 0) + (agent.get("tokens_out") or 0)
        return {
            "Factory-Agent": agent_id,
            "Factory-Task": task_key(spec_id, task_id),
            "Factory-Spec": spec_id,
            "Factory-Model": agent.get("model") or self.router.model_for("implementer"),
            "Factory-Tokens": str(tokens),
            "Factory-Cost": f"{agent.get('cost') or 0.0:.6f}",
        }

    async def _commit(self, spec: Spec, row: dict[str, Any], agent_id: str, wt: Any) \
            -> CommitInfo | None:
        agent = self.store.get("agents", agent_id) or {}
        trailers = self._trailers(spec.id, row["task_id"], agent_id)
        message = provenance.compose(row["title"], agent.get("summary") or "", trailers)
        info = await self.ws.commit(wt, message, DiskMeter(wt.path, self.quota))
        if info is None:
            return None
        await self.emit(ev.BranchCommitted(
            spec_id=spec.id, task_id=row["task_id"], agent_id=agent_id, branch=wt.branch,
            commit=info.commit, base_commit=wt.base_commit, files=info.files,
            insertions=info.insertions, deletions=info.deletions,
        ))
        return info

    async def _cancel_idle(self, intent: plan_of.Cancel) -> None:
        """A cancelled task nothing works on (waiting for a person, or not started)."""
        row = self.store.get("tasks", intent.key) or {}
        ids = {"spec_id": intent.spec_id, "task_id": intent.task_id}
        agent = self.store.get("agents", row.get("agent_id") or "")
        events: list[ev.Event] = []
        if agent is not None and agent["status"] in (AgentStatus.RUNNING, AgentStatus.WAITING):
            events.append(ev.AgentFinished(**ids, agent_id=agent["id"],
                                           status=AgentStatus.CANCELLED,
                                           summary=intent.reason))
        await self.emit(*events, ev.TaskCancelled(**ids, reason=intent.reason))
        if row.get("worktree") and Path(row["worktree"]).exists():
            self.ws.remove(Path(row["worktree"]))
            await self.emit(ev.WorktreeRemoved(**ids, path=row["worktree"]))
        await self.forecast()  # its branch, if it had one, is closed

    # -- executors: the queue --------------------------------------------------------------

    async def _enqueue(self, intent: plan_of.Enqueue) -> None:
        """A commit enters the queue once the conflict forecast has seen its branch (the
        console shows which entries would conflict before anyone approves them)."""
        await self.forecast()
        task = self.store.get("tasks", intent.key)
        assert task is not None
        branch = self.store.get("branches", task["branch"] or "") or {}
        risk, reasons = assess_risk(branch.get("files") or [], branch.get("insertions") or 0,
                                    branch.get("deletions") or 0)
        await self.emit(ev.QueueEntered(
            spec_id=intent.spec_id, task_id=intent.task_id, branch=task["branch"],
            commit=task["commit_sha"], risk=risk, risk_reasons=reasons,
            needs_approval=at_entry(self.queue.approval, risk, self.config.queue.gates)))

    @property
    def chain_executor(self) -> ChainExecutor:
        assert isinstance(self.lander, ChainExecutor), "the queue needs a ChainExecutor"
        return self.lander

    def _request(self, key: str) -> LandingRequest:
        row = self.store.get("tasks", key)
        assert row is not None
        return LandingRequest(
            spec_id=row["spec_id"], task_id=row["task_id"], branch=row["branch"],
            commit=row["commit_sha"], title=row["title"],
            trailers=self._trailers(row["spec_id"], row["task_id"], row["agent_id"]))

    async def _link(self, intent: chain.LinkEntry) -> None:
        request = self._request(intent.key)
        main = (self.store.get("queue_state", "queue") or {}).get("main") or ""
        if intent.onto == main and await self.lander.already_landed(request):
            # Main holds it already: a landing cut short after main moved (never twice).
            await self.emit(ev.BranchLanded(spec_id=request.spec_id, task_id=request.task_id,
                                            branch=request.branch, commit=request.commit,
                                            main_before=main, main_after=main))
            return
        row = self.store.get("tasks", intent.key) or {}
        if row.get("status") != TaskStatus.LANDING:
            await self.emit(ev.LandingStarted(spec_id=request.spec_id,
                                              task_id=request.task_id, branch=request.branch,
                                              commit=request.commit))
        await self.chain_executor.link(intent, request, self._gate_context(intent.key, row))

    def _gate_context(self, key: str, row: dict[str, Any]) -> GateContext:
        spec = self._specs.get(row.get("spec_id") or "")
        agent = self.store.get("agents", row.get("agent_id") or "") or {}
        entry = self.store.get("queue", key) or {}
        return GateContext(
            boundaries=tuple(spec.boundaries) if spec is not None else (),
            task_paths=tuple(row.get("paths") or ()), role=row.get("role") or "",
            model=agent.get("model") or "",
            approved=entry.get("approval") == Approval.APPROVED
            and entry.get("commit_sha") == row.get("commit_sha"))

    async def _land_chain(self, intent: chain.LandChain) -> None:
        requests = [self._request(key) for key in intent.keys]
        links = {key: self.store.get("links", key) or {} for key in intent.keys}
        landed, problem = await self.chain_executor.land_chain(intent, requests, links,
                                                               self.queue.may_land)
        if problem:
            await self.emit(ev.QueuePaused(main=intent.main_before, reason=problem,
                                           retry_in=10.0),
                            ev.Notice(level="warning",
                                      message=f"main was not moved: {problem}"))
            return
        events: list[ev.Event] = []
        for request in landed:
            ids = {"spec_id": request.spec_id, "task_id": request.task_id}
            events += [ev.GateResult(**ids, gate="tests", passed=True,
                                     detail=f"tests pass with {len(intent.keys)} entries "
                                     "in one tree" if len(intent.keys) > 1 else "tests pass"),
                       ev.BranchLanded(**ids, branch=request.branch, commit=request.commit,
                                       main_before=intent.main_before,
                                       main_after=intent.commit)]
        await self.emit(*events, ev.MainMoved(main_before=intent.main_before,
                                              main_after=intent.commit,
                                              keys=[f"{r.spec_id}/{r.task_id}" for r in landed],
                                              window=intent.window))
        await self.forecast()

    async def _evict(self, intent: chain.Evict) -> None:
        row = self.store.get("tasks", intent.key) or {}
        ids = {"spec_id": row.get("spec_id"), "task_id": row.get("task_id")}
        events: list[ev.Event] = []
        if intent.gate == "tests":
            events.append(ev.GateResult(**ids, gate="tests", passed=False,
                                        detail=(intent.reason + "\n" + intent.output)[:2000]))
        await self.emit(*events, ev.BranchRejected(
            **ids, branch=row.get("branch") or "", gate=intent.gate, reason=intent.reason,
            output=intent.output[-4000:]))
        await self.forecast()


def findings_message(intent: plan_of.Return, commit: str, most: int,
                     findings: list[dict[str, Any]] | None = None) -> str:
    """What a returned agent is told: which gate refused which commit, why, every finding
    of that gate (file, line, rule: the summary names only the first few), and the output
    it gave (the tests' tail), then what to do."""
    text = (f"The merge queue refused your commit {commit[:12]} at the `{intent.gate}` "
            f"gate: {intent.reason}")
    if findings:
        order = {"deny": 0, "needs_approval": 1, "warn": 2}
        lines = []
        for f in sorted(findings, key=lambda f: order.get(str(f.get("verdict")), 3)):
            where = f"{f.get('file')}:{f.get('line')}: " if f.get("file") and f.get("line") \
                else f"{f.get('file')}: " if f.get("file") else ""
            lines.append(f"- [{f.get('verdict')}] {where}{f.get('message')} [{f.get('rule')}]")
        text += "\n\nFindings:\n" + "\n".join(lines)[:6000]
    if intent.output.strip():
        text += "\n\nOutput (its end):\n" + intent.output[-3000:]
    return text + (f"\n\nFix what the findings point at, run the acceptance checks again, "
                   f"then call finish(summary). This is revision {intent.round} of at most "
                   f"{most}.")


def task_messages(spec: Spec, row: dict[str, Any]) -> list[dict[str, Any]]:
    system = (
        "You are an implementer agent in a software factory. You work alone in your own git "
        "worktree; the engine commits your work when you call finish. Use the tools to read, "
        "change and test the code. Change only the paths your task lists. Keep changes "
        "minimal, run the acceptance commands, then call finish(summary)."
    )
    checks = "\n".join(f"- `{c}`" for c in row["acceptance"] or [])
    paths = "\n".join(f"- {p}" for p in row["paths"] or [])
    invariants = "\n".join(f"- {i}" for i in spec.invariants) or "- (none stated)"
    user = (
        f"Spec `{spec.id}`: {spec.title}\n\nGoal:\n{spec.goal}\n\n"
        f"Task `{row['task_id']}`: {row['title']}\n{row['instructions'] or ''}\n\n"
        f"Paths you may change:\n{paths}\n\nInvariants:\n{invariants}\n\n"
        f"Acceptance:\n{checks}"
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


Progress = Callable[[], Awaitable[None]]
