"""Scheduling: specs in dependency order, tasks in DAG order, agents under the limits.

Everything the orchestrator decides is derived from the projections, so a run that was
killed resumes by simply running again: landed tasks are skipped, a landing cut short is
checked against main, a running agent continues its conversation in its surviving worktree.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents import events as ev
from agents import provenance
from agents.budget import AgentBudget, BudgetLedger
from agents.config import FactoryConfig
from agents.conflicts import BranchInfo, ConflictForecaster
from agents.errors import FactoryError
from agents.landing import LandingRequest, LandingStep
from agents.models import ModelRouter
from agents.planner import SUBMIT_PLAN_SPEC, PlanCollector, plan_digest, planner_messages
from agents.questions import QuestionDesk
from agents.queue.merge_queue import MergeQueue, retry_event
from agents.runtime import AgentLimits, AgentResult, AgentRunner
from agents.sandbox.base import Limits, SandboxBackend, SandboxContext
from agents.sandbox.quota import DiskMeter, quota_of
from agents.specs import Spec
from agents.store import Store
from agents.store.projections import task_key
from agents.tools import ToolContext
from agents.workspace import CommitInfo, Workspace, WorkspaceError, branch_name

TERMINAL = {"landed", "rejected", "failed", "blocked", "cancelled"}
READ_ONLY_TOOLS = ["read_file", "list_files", "search_code"]
# A spec that leaves a decision open is best settled before it is split into tasks.
PLANNER_TOOLS = [*READ_ONLY_TOOLS, "ask"]
# An agent row in these states has a conversation that a restart continues.
AGENT_ALIVE = ("running", "waiting")


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


class Slot:
    """One of the run's concurrency slots, held by one agent, lent back while it waits for a
    person: a question nobody has answered yet must not hold up agents that could work."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots = slots
        self._held = False

    async def __aenter__(self) -> Slot:
        await self._slots.acquire()
        self._held = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._held:
            self._held = False
            self._slots.release()

    @asynccontextmanager
    async def lent(self) -> AsyncIterator[None]:
        if self._held:
            self._held = False
            self._slots.release()
        try:
            yield
        finally:
            # Cancelled while taking it back: not held, so the exit does not release it.
            await self._slots.acquire()
            self._held = True


@dataclass
class RunSummary:
    run_id: str
    status: str = "done"
    landed: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


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
        self.queue = MergeQueue(lander, store, config.queue.approval)
        self.run_id = run_id
        self.questions = questions or QuestionDesk(store, config.run.question_timeout_seconds)
        self.live = False
        self._late: set[asyncio.Task[None]] = set()
        self._specs: dict[str, Spec] = {}
        self.forecaster = ConflictForecaster(workspace.root, store.append,
                                             workspace.root / ".factory" / "merge-tree")
        self.forecaster.remember(store.rows("conflicts"))
        self._forecast_lock = asyncio.Lock()
        self.slots = asyncio.Semaphore(config.run.concurrency)
        self.limits = AgentLimits(config.run.max_steps, config.run.stuck_repeats,
                                  config.run.stuck_idle_steps)
        sb = config.sandbox
        self.sandbox_limits = Limits(sb.wall_seconds, sb.memory_mb, sb.max_processes,
                                     sb.output_bytes)
        self.quota = quota_of(sb.quota_disk_mb, sb.quota_files, sb.quota_write_mb)
        self.spec_done: dict[str, asyncio.Event] = {}
        self.agent_tasks: dict[str, asyncio.Task[AgentResult]] = {}
        self.cancelled: set[str] = set()
        self.budget_exhausted: ev.BudgetStop | None = None
        self.ledger = BudgetLedger(store, run_id, config.budgets)

    async def emit(self, *events: ev.Event) -> int:
        return await self.store.append(*events)

    # -- budgets ---------------------------------------------------------------------------

    def budget_for(self, spec_id: str, agent_id: str) -> AgentBudget:
        return AgentBudget(self.ledger, spec_id, agent_id)

    # -- the run ---------------------------------------------------------------------------

    async def run(self, specs: list[Spec], texts: dict[str, str]) -> RunSummary:
        self.spec_done = {s.id: asyncio.Event() for s in specs}
        for spec in specs:
            row = self.store.get("specs", spec.id)
            digest = spec_digest(texts[spec.id])
            if row is None or row["digest"] != digest:
                await self.emit(ev.SpecRegistered(
                    spec_id=spec.id, title=spec.title, path=str(spec.path or ""),
                    priority=spec.priority, depends_on=spec.depends_on, digest=digest,
                ))
        self._specs = {s.id: s for s in specs}
        self.live = True
        try:
            async with asyncio.TaskGroup() as group:
                for spec in specs:
                    group.create_task(self._run_spec(spec, texts[spec.id], specs))
            while self._late:  # retries a person asked for while the run went on
                await asyncio.gather(*self._late)
        finally:
            self.live = False
            for task in self._late:
                task.cancel()
        return self.summary()

    async def forecast(self) -> None:
        """Re-check the open branches' pairs; called whenever a branch opens or closes."""
        async with self._forecast_lock:
            branches = {b["name"]: BranchInfo(b["name"], b["head"], b["files"] or [])
                        for b in self.store.rows("branches")
                        if b["status"] in ("open", "landing") and b["head"]}
            try:
                await self.forecaster.refresh(branches)
            except FactoryError as exc:
                await self.emit(ev.Notice(level="warning",
                                          message=f"conflict forecast failed: {exc}"))

    async def retry(self, key: str) -> None:
        """Put a rejected branch back in the queue; it lands in this run if one is going,
        else in the next `factory run`."""
        event = retry_event(self.store, key)
        await self.emit(event)
        spec = self._specs.get(event.spec_id or "")
        if not self.live or spec is None:
            return
        row = self.store.get("tasks", key)
        assert row is not None

        async def land_again() -> None:
            await self._land(spec, row)
            await self._finish_spec(spec)

        task = asyncio.create_task(land_again())
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    def summary(self) -> RunSummary:
        out = RunSummary(self.run_id)
        for t in self.store.rows("tasks"):
            key = t["key"]
            if t["status"] == "landed":
                out.landed.append(key)
            elif t["status"] == "rejected":
                out.rejected.append((key, t["reason"] or ""))
            elif t["status"] in ("failed", "blocked", "cancelled"):
                out.failed.append((key, t["reason"] or t["status"]))
        if self.budget_exhausted is not None:
            out.status = "budget"
        return out

    async def _run_spec(self, spec: Spec, text: str, specs: list[Spec]) -> None:
        try:
            for dep in spec.depends_on:
                if dep in self.spec_done:
                    await self.spec_done[dep].wait()
                dep_row = self.store.get("specs", dep)
                if dep_row is None or dep_row["status"] != "done":
                    await self.emit(ev.SpecFinished(
                        spec_id=spec.id, status="blocked",
                        detail=f"depends on {dep}, which is "
                        f"{dep_row['status'] if dep_row else 'unknown'}"))
                    return
            row = self.store.get("specs", spec.id) or {}
            if row.get("status") == "done" and row.get("digest") == spec_digest(text):
                return
            # Plan when there is none yet or the spec's text changed since the last plan.
            if not self._has_plan(spec.id) or row.get("status") == "registered":
                if not await self._plan(spec, text):
                    return
            await self._run_tasks(spec)
            await self._finish_spec(spec)
        finally:
            self.spec_done[spec.id].set()

    async def _finish_spec(self, spec: Spec) -> None:
        tasks = [t for t in self.store.rows("tasks") if t["spec_id"] == spec.id]
        bad = [t for t in tasks if t["status"] != "landed"]
        await self.emit(ev.SpecFinished(
            spec_id=spec.id, status="failed" if bad else "done",
            detail=f"{len(tasks) - len(bad)} of {len(tasks)} tasks landed"))

    def _has_plan(self, spec_id: str) -> bool:
        return any(t["spec_id"] == spec_id for t in self.store.rows("tasks"))

    async def _plan(self, spec: Spec, text: str) -> bool:
        collector = PlanCollector(spec)
        attempt = sum(1 for a in self.store.rows("agents")
                      if a["spec_id"] == spec.id and a["role"] == "planner"
                      and a["status"] not in AGENT_ALIVE) + 1
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
            result = AgentResult("finished", "plan recovered from the record")
        if collector.tasks is None:
            await self.emit(ev.PlanRejected(spec_id=spec.id,
                                            reason=f"planner {result.status}: {result.summary}"))
            return False
        await self.emit(ev.PlanAccepted(spec_id=spec.id, tasks=collector.tasks,
                                        digest=plan_digest(collector.tasks)))
        return True

    async def _run_planner(self, spec: Spec, text: str, agent_id: str, tools: ToolContext,
                           collector: PlanCollector) -> AgentResult:
        """The planner agent, reading main's tracked files only (a clean view of main)."""
        async with Slot(self.slots) as slot:
            runner = AgentRunner(
                store=self.store, router=self.router, tools=tools, agent_id=agent_id,
                spec_id=spec.id, task_id=None, role="planner", key=f"plan:{spec.id}",
                opening=planner_messages(spec, text), limits=self.limits,
                budget=self.budget_for(spec.id, agent_id), tool_names=PLANNER_TOOLS,
                custom_tools={"submit_plan": collector}, extra_specs=[SUBMIT_PLAN_SPEC],
                questions=self.questions, waiting=slot.lent,
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

    async def _run_tasks(self, spec: Spec) -> None:
        tasks = {t["task_id"]: t for t in self.store.rows("tasks") if t["spec_id"] == spec.id}
        done = {tid: asyncio.Event() for tid in tasks}
        async with asyncio.TaskGroup() as group:
            for tid in tasks:
                group.create_task(self._run_task(spec, tid, done))

    async def _run_task(self, spec: Spec, task_id: str, done: dict[str, asyncio.Event]) -> None:
        key = task_key(spec.id, task_id)
        try:
            row = self.store.get("tasks", key)
            assert row is not None
            for dep in row["depends_on"] or []:
                await done[dep].wait()
                dep_row = self.store.get("tasks", task_key(spec.id, dep))
                if dep_row is None or dep_row["status"] != "landed":
                    await self.emit(ev.TaskBlocked(
                        spec_id=spec.id, task_id=task_id,
                        reason=f"depends on {dep}, which is "
                        f"{dep_row['status'] if dep_row else 'missing'}"))
                    return
            await self._drive(spec, task_id)
        finally:
            done[task_id].set()

    async def _drive(self, spec: Spec, task_id: str) -> None:
        key = task_key(spec.id, task_id)
        while True:
            row = self.store.get("tasks", key)
            assert row is not None
            status = row["status"]
            if status in TERMINAL:
                return
            if status in ("committed", "landing"):
                await self._land(spec, row)
                return
            if self.budget_exhausted is not None:
                await self.emit(ev.TaskBlocked(spec_id=spec.id, task_id=task_id,
                                               reason="the run's budget is spent"))
                return
            async with Slot(self.slots) as slot:
                await self._attempt(spec, row, slot)

    async def _attempt(self, spec: Spec, row: dict[str, Any], slot: Slot) -> None:
        """One agent attempt (fresh or resumed) ending in a commit or a recorded failure."""
        task_id = row["task_id"]
        ids = {"spec_id": spec.id, "task_id": task_id}
        wt = None
        agent_id = row["agent_id"]
        if row["status"] == "running" and agent_id and row["base_commit"]:
            wt = self.ws.attach(spec.id, task_id, row["base_commit"])
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
        if agent_row is not None and agent_row["status"] == "finished":
            result = AgentResult("finished", agent_row["summary"] or "", agent_row["step"])
        else:
            result = await self._run_agent(spec, row, agent_id, wt.path, slot)
        attempt = (self.store.get("tasks", task_key(spec.id, task_id)) or row)["attempt"] or 1
        if result.status != "finished":
            retry = attempt <= self.config.run.task_retries and result.status not in (
                "budget", "cancelled")
            if result.status == "cancelled":
                await self.emit(ev.TaskCancelled(**ids, reason=result.summary))
            else:
                await self.emit(ev.TaskFailed(**ids, reason=f"agent {result.status}: "
                                              f"{result.summary}", will_retry=retry))
            if result.status == "budget" and result.summary.startswith("run "):
                self.budget_exhausted = self.ledger.exhausted() or self.budget_exhausted \
                    or ev.BudgetStop(scope="run", measure="tokens", limit=0, used=0)
            self.ws.remove(wt.path)
            await self.emit(ev.WorktreeRemoved(**ids, path=str(wt.path)))
            return
        try:
            info = await self._commit(spec, row, agent_id, wt)
        except WorkspaceError as exc:
            self.ws.remove(wt.path)
            await self.emit(ev.WorktreeRemoved(**ids, path=str(wt.path)))
            await self.emit(ev.TaskFailed(**ids, reason=f"could not commit: {exc}",
                                          will_retry=attempt <= self.config.run.task_retries))
            return
        self.ws.remove(wt.path)
        await self.emit(ev.WorktreeRemoved(**ids, path=str(wt.path)))
        if info is None:
            await self.emit(ev.TaskFailed(**ids, reason="the agent finished without changing "
                                          "any file"))

    async def _run_agent(self, spec: Spec, row: dict[str, Any], agent_id: str,
                         worktree: Path, slot: Slot) -> AgentResult:
        meter = DiskMeter(worktree, self.quota)
        sandbox = await self.backend.open(SandboxContext(
            worktree=worktree, agent_id=agent_id,
            read_only=[worktree / ".git", worktree / ".factory.toml"],
            env_allow=list(self.config.sandbox.env_allow), meter=meter,
        ))
        run_as = self.backend.run_as
        try:
            tools = ToolContext(worktree=worktree, sandbox=sandbox,
                                test_command=self.config.repo.test_command,
                                limits=self.sandbox_limits, meter=meter,
                                owner=run_as.owner if run_as is not None else None)
            runner = AgentRunner(
                store=self.store, router=self.router, tools=tools, agent_id=agent_id,
                spec_id=spec.id, task_id=row["task_id"], role=row["role"] or "implementer",
                key=task_key(spec.id, row["task_id"]), opening=task_messages(spec, row),
                limits=self.limits, budget=self.budget_for(spec.id, agent_id),
                questions=self.questions, waiting=slot.lent,
            )
            job = asyncio.ensure_future(runner.run())
            self.agent_tasks[task_key(spec.id, row["task_id"])] = job
            try:
                return await job
            except asyncio.CancelledError:
                if task_key(spec.id, row["task_id"]) in self.cancelled and not _cancelling():
                    return AgentResult("cancelled", "cancelled by request")
                raise
            finally:
                self.agent_tasks.pop(task_key(spec.id, row["task_id"]), None)
        finally:
            await sandbox.close()

    def cancel(self, key: str) -> bool:
        job = self.agent_tasks.get(key)
        if job is None:
            return False
        self.cancelled.add(key)
        job.cancel()
        return True

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

    async def _land(self, spec: Spec, row: dict[str, Any]) -> None:
        ids = {"spec_id": spec.id, "task_id": row["task_id"]}
        request = LandingRequest(
            spec_id=spec.id, task_id=row["task_id"], branch=row["branch"],
            commit=row["commit_sha"], title=row["title"],
            trailers=self._trailers(spec.id, row["task_id"], row["agent_id"]),
        )
        async def on_turn() -> None:
            current = self.store.get("tasks", task_key(spec.id, row["task_id"]))
            if current is None or current["status"] != "landing":
                await self.emit(ev.LandingStarted(**ids, branch=row["branch"],
                                                  commit=row["commit_sha"]))

        branch = self.store.get("branches", row["branch"]) or {}
        await self.forecast()
        outcome = await self.queue.land(request, branch, on_turn)
        if outcome.landed:
            await self.emit(ev.BranchLanded(**ids, branch=row["branch"],
                                            commit=row["commit_sha"],
                                            main_before=outcome.main_before,
                                            main_after=outcome.main_after))
        else:
            await self.emit(ev.BranchRejected(**ids, branch=row["branch"], gate=outcome.gate,
                                              reason=outcome.reason,
                                              output=outcome.output[-4000:]))
        await self.forecast()


def _cancelling() -> bool:
    task = asyncio.current_task()
    return bool(task and task.cancelling())


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
