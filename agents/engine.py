"""The Factory facade: open a repository's factory, run specs, answer commands.

This is what the CLI, the console's in-process client and the daemon hold. It owns the
store (the only writer), the workspace, the model router and the sandbox backend.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import uuid
from pathlib import Path
from typing import IO, Any

from agents import commands as cmd
from agents import events as ev
from agents.config import FactoryConfig, load_config
from agents.conflicts import ConflictForecaster
from agents.errors import FactoryError
from agents.gates.registry import GateServices, build_gates
from agents.gitcmd import git
from agents.models import ModelRouter, api_key_from_env, check_models, replay_path
from agents.orchestrator import Orchestrator, RunSummary, spec_digest
from agents.private import exclude_factory, private_dir, private_file
from agents.questions import Answer, QuestionDesk
from agents.queue.executor import ChainExecutor
from agents.queue.merge_queue import MergeQueue, retry_event
from agents.sandbox.base import Limits, SandboxBackend
from agents.sandbox.none import NoneBackend
from agents.sandbox.quota import Quota, quota_of
from agents.specs import (
    LintFinding,
    Spec,
    lint_score,
    lint_spec,
    load_specs,
    order_specs,
    parse_spec,
    write_atomically,
)
from agents.statuses import TASK_DONE, RunStatus, TaskStatus
from agents.store import Store
from agents.watch import Watch
from agents.workspace import Workspace

CONFIG_NAME = ".factory.toml"


def sandbox_limits(config: FactoryConfig) -> Limits:
    sb = config.sandbox
    return Limits(sb.wall_seconds, sb.memory_mb, sb.max_processes, sb.output_bytes)


def sandbox_quota(config: FactoryConfig) -> Quota:
    sb = config.sandbox
    return quota_of(sb.quota_disk_mb, sb.quota_files, sb.quota_write_mb)


def make_sandbox_backend(config: FactoryConfig) -> SandboxBackend:
    """The configured backend; `none` only when the configuration names it."""
    limits = sandbox_limits(config)
    if config.sandbox.backend == "none":
        return NoneBackend(limits)
    from agents.sandbox.select import make_backend

    return make_backend(config.sandbox.backend, limits=limits,
                        image=config.sandbox.image or None,
                        env_allow=list(config.sandbox.env_allow), root=config.root,
                        run_as=config.sandbox.run_as)


def make_router(config: FactoryConfig) -> ModelRouter:
    m = config.models
    return ModelRouter(
        roles={"planner": m.planner, "implementer": m.implementer, "reviewer": m.reviewer},
        fallbacks=dict(m.fallbacks),
        api_base=m.api_base or None,
        api_key=api_key_from_env(m.api_key_env or None),
        api_key_env=m.api_key_env or None,
        max_retries=m.max_retries,
        timeout=float(m.timeout_seconds),
    )


class RunLock:
    """One running factory per store; `factory status` and consoles only read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = private_file(self.path).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise FactoryError(f"{self.path}: the factory is already running ({holder})") \
                from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class Factory:
    def __init__(self, root: Path, config: FactoryConfig, store: Store, workspace: Workspace,
                 router: ModelRouter, backend: SandboxBackend, *,
                 supervised: bool = False) -> None:
        self.root = root
        self.config = config
        self.store = store
        self.ws = workspace
        self.router = router
        self.backend = backend
        self.orchestrator: Orchestrator | None = None
        # Agents' questions: awaited while a person supervises, answered by the engine when
        # nobody does (headless runs, CI).
        self.questions = QuestionDesk(store, config.run.question_timeout_seconds,
                                      supervised=supervised)
        self._lock = RunLock(root / ".factory" / "run.lock")
        self._background: asyncio.Task[RunSummary | None] | None = None
        self.run_error: FactoryError | None = None

    @classmethod
    async def open(
        cls,
        root: Path,
        config: FactoryConfig | None = None,
        *,
        backend: SandboxBackend | None = None,
        router: ModelRouter | None = None,
        supervised: bool = False,
    ) -> Factory:
        root = root.resolve()
        config = config or load_config(root / CONFIG_NAME)
        workspace = Workspace(root, root / ".factory" / "worktrees", config.repo.main_branch)
        private_dir(root / ".factory")
        exclude_factory(workspace.common_dir)
        router = router or make_router(config)
        _load_replays(root, router)
        backend = backend or make_sandbox_backend(config)
        store = await Store.open(config.store_path)
        return cls(root, config, store, workspace, router, backend, supervised=supervised)

    async def close(self) -> None:
        background = self._background
        if background is not None and not background.done():
            background.cancel()
            await asyncio.wait([background])
        await self.store.close()
        self.ws.close()
        self._lock.release()

    def specs(self, only: list[str] | None = None) -> tuple[list[Spec], dict[str, str]]:
        """The specs to run (with what they depend on), in dependency order."""
        specs = load_specs(self.config.specs_path)
        by_id = {s.id: s for s in specs}
        if only:
            unknown = [s for s in only if s not in by_id]
            if unknown:
                raise FactoryError(f"unknown spec(s): {', '.join(unknown)}; "
                                   f"known: {', '.join(sorted(by_id)) or 'none'}")
            wanted: set[str] = set()
            stack = list(only)
            while stack:
                sid = stack.pop()
                if sid not in wanted:
                    wanted.add(sid)
                    stack.extend(by_id[sid].depends_on)
            specs = [s for s in specs if s.id in wanted]
        ordered = order_specs(specs)
        texts = {s.id: Path(s.path).read_text() if s.path else "" for s in ordered}
        return ordered, texts

    async def _clean_orphans(self) -> None:
        active = {Path(t["worktree"]).resolve() for t in self.store.rows("tasks")
                  if t["status"] == TaskStatus.RUNNING and t["worktree"]}
        for path in self.ws.orphans(active):
            await self.store.append(ev.Notice(
                level="warning",
                message=f"orphan worktree {path.relative_to(self.root)} (no running task owns "
                "it): removed"))
            self.ws.remove(path)
        # Only the engine writes factory/* refs, and it holds the run lock: a lock file left
        # there was left by a crash.
        refs = self.ws.common_dir / "refs" / "heads" / "factory"
        if refs.is_dir():
            for lock in refs.rglob("*.lock"):
                lock.unlink(missing_ok=True)
        for scratch in (self.root / ".factory" / "landing", self.root / ".factory" / "views"):
            if scratch.is_dir():
                for path in scratch.iterdir():
                    self.ws.remove(path)
        await git("worktree", "prune", cwd=self.root)
        sweep = getattr(self.backend, "sweep", None)
        if sweep is not None and (swept := await sweep()):
            await self.store.append(ev.Notice(
                level="warning",
                message=f"removed {swept} sandbox container(s) a previous run left"))

    async def run(self, spec_ids: list[str] | None = None, watch: bool = False) -> RunSummary:
        """Plan, work and land the specs to the end; with `watch`, until cancelled, planning
        again each spec saved meanwhile (agents/watch.py)."""
        self._lock.acquire()
        try:
            specs, texts = self.specs(spec_ids)
            if not specs:
                raise FactoryError(f"no specs in {self.config.specs_path}")
            # A run that cannot work refuses to start, saying what to set (no model call).
            problems = await asyncio.to_thread(check_models, self.config)
            if problems:
                raise FactoryError("the run cannot start: its models cannot work:\n  "
                                   + "\n  ".join(problems))
        except BaseException:
            self._lock.release()  # nothing started: a later run must not find it held
            raise
        # Runs recorded as running whose process went away (this one holds the run lock,
        # so none of them still runs): they end, interrupted, before this one starts.
        for old in self.store.rows("runs"):
            if old["status"] == RunStatus.RUNNING:
                lease = self.store.get("leases", f"run:{old['id']}") or {}
                await self.store.append(ev.RunFinished(
                    run_id=old["id"], status=RunStatus.INTERRUPTED,
                    detail=f"its process ({lease.get('holder') or 'unknown'}) went away "
                    "before it finished"))
        run_id = uuid.uuid4().hex[:12]
        budgets = self.config.budgets.run
        await self.store.append(ev.RunStarted(
            run_id=run_id, specs=[s.id for s in specs], concurrency=self.config.run.concurrency,
            sandbox=self.backend.name, budget_tokens=budgets.tokens, budget_usd=budgets.usd,
        ))
        if self.backend.name == "none":
            await self.store.append(ev.Notice(
                level="warning", message="sandbox backend is 'none': agents run UNSANDBOXED "
                "commands on this machine"))
        await self._clean_orphans()
        lander = ChainExecutor(
            self.ws, self.backend, self.config.repo.test_command, sandbox_limits(self.config),
            self.root / ".factory" / "landing", self.store.append, sandbox_quota(self.config),
        )
        self.orchestrator = Orchestrator(
            config=self.config, store=self.store, workspace=self.ws, router=self.router,
            backend=self.backend, lander=lander, run_id=run_id, questions=self.questions,
        )
        lander.gates = build_gates(GateServices(
            config=self.config, backend=self.backend, limits=sandbox_limits(self.config),
            test_command=self.config.repo.test_command, emit=self.store.append,
            quota=sandbox_quota(self.config), router=self.router, store=self.store,
            budget=self.orchestrator.budget_for))
        status = RunStatus.FAILED
        try:
            watcher = Watch(self.orchestrator, self.config.specs_path, self.root).run \
                if watch else None
            summary = await self.orchestrator.run(specs, texts, watcher)
            status = summary.status
            return summary
        except asyncio.CancelledError:
            status = RunStatus.CANCELLED
            raise
        finally:
            await asyncio.shield(self.store.append(ev.RunFinished(run_id=run_id,
                                                                  status=status)))  # type: ignore[arg-type]
            self._lock.release()

    def start(self, spec_ids: list[str] | None = None, watch: bool = False) -> None:
        """Run in the background, for a console or a daemon: progress arrives as events, and a
        failure that a person can act on is kept in `run_error`. With `watch`, the run goes on
        planning saved specs again until it is stopped (`factory daemon --watch`)."""
        if self.background_running:
            raise FactoryError("a run is already going; wait for it to finish")
        self.specs(spec_ids)  # unknown ids fail here, before anything starts

        async def go() -> RunSummary | None:
            try:
                return await self.run(spec_ids, watch=watch)
            except FactoryError as exc:
                self.run_error = exc
                return None

        self.run_error = None
        self._background = asyncio.create_task(go())

    @property
    def background_running(self) -> bool:
        return self._background is not None and not self._background.done()

    async def wait_background(self) -> None:
        if self._background is not None:
            await asyncio.wait([self._background])

    async def cancel_task(self, key: str, by: str = "console") -> bool:
        """Ask for a task to stop: recorded, and the reconciler stops its agent (or cancels
        it at once when nothing works on it; with no run going, the next run does). False
        when the task has ended already."""
        task = self.store.get("tasks", key)
        if task is None or task["status"] in TASK_DONE | {TaskStatus.LANDING}:
            return False
        await self.store.append(ev.CancelRequested(spec_id=task["spec_id"],
                                                   task_id=task["task_id"], by=by))
        return True

    # -- commands a person gives (through a console's client) ------------------------------

    async def execute(self, command: cmd.Command, by: str = "console") -> Any:
        """Carry out a person's command: recorded first (with who gave it), then done; one
        the state refuses is recorded as refused, and raises saying why."""
        await self.store.append(ev.CommandGiven(op=command.op, args=command.recorded(), by=by))
        try:
            match command:
                case cmd.Approve():
                    return await self.approve(command.key, by)
                case cmd.Reject():
                    return await self.reject(command.key, command.reason, by)
                case cmd.Move():
                    return await self.move(command.key, command.delta)
                case cmd.Retry():
                    return await self.retry(command.key)
                case cmd.CancelTask():
                    return await self.cancel_task(command.key, by)
                case cmd.AnswerQuestion():
                    return await self.answer(command.question_id, command.text)
                case cmd.StartRun():
                    return self.start(command.spec_ids)
                case cmd.SaveSpec():
                    return await self.save_spec(Path(command.path), command.text)
        except FactoryError as exc:
            await self.store.append(ev.CommandRefused(op=command.op, by=by, reason=str(exc)))
            raise
        raise FactoryError(f"unknown command {command.op!r}")

    @property
    def running(self) -> bool:
        return self.orchestrator is not None and self.orchestrator.live

    def _queue(self) -> MergeQueue:
        """The queue's commands: events, which a running reconciler decides on at once."""
        return MergeQueue(self.store, self.config.queue.approval)

    async def approve(self, key: str, by: str = "console") -> None:
        await self._queue().approve(key, by)

    async def reject(self, key: str, reason: str, by: str = "console") -> None:
        await self._queue().reject(key, reason, by)

    async def move(self, key: str, delta: int) -> None:
        await self._queue().move(key, delta)

    async def retry(self, key: str) -> None:
        """A rejected branch goes back in the queue: it lands in this run if one is going,
        else in the next."""
        await self.store.append(retry_event(self.store, key))

    @property
    def supervised(self) -> bool:
        return self.questions.supervised

    def supervise(self, on: bool = True) -> None:
        """Say whether a person is watching (a console holds this factory). Agents' questions
        wait for a person only then; turning it off answers the waiting ones at once."""
        self.questions.supervise(on)

    async def answer(self, question_id: str, text: str) -> Answer:
        """A person answers an agent's question; the waiting agent continues with it. Works
        without a run too: the agent finds the answer when it resumes."""
        return await self.questions.answer(question_id, text)

    async def spec_files(self) -> list[tuple[Path, str, list[LintFinding]]]:
        """Every spec file with its text and the lint's findings (a console's spec list)."""
        folder = self.config.specs_path

        def read() -> list[tuple[Path, str, list[LintFinding]]]:
            out = []
            for path in sorted(folder.glob("*.md")):
                if path.name.lower() == "readme.md":
                    continue
                text = path.read_text(encoding="utf-8")
                out.append((path, text, lint_spec(text, path)))
            return out

        return await asyncio.to_thread(read)

    async def save_spec(self, path: Path, text: str) -> list[LintFinding]:
        """Write a spec atomically, record it, and return the lint's findings for it."""
        path = path.resolve()
        specs_dir = self.config.specs_path.resolve()
        if not path.is_relative_to(specs_dir) or path.suffix != ".md":
            raise FactoryError(f"{path}: specs are .md files under {specs_dir}")
        await asyncio.to_thread(write_atomically, path, text)
        findings = lint_spec(text, path)
        spec_id = None
        try:
            spec_id = parse_spec(text, path).id
        except FactoryError:
            pass
        await self.store.append(ev.SpecSaved(
            spec_id=spec_id, path=str(path.relative_to(self.root)),
            digest=spec_digest(text),
            lint_score=lint_score(findings)))
        return findings

    async def diff(self, key: str) -> str:
        """What a task's branch changes against the point where it left main."""
        task = self.store.get("tasks", key)
        if task is None or not task["commit_sha"]:
            raise FactoryError(f"{key} has no commit to show")
        base = task["base_commit"] or self.config.repo.main_branch
        return await git("diff", "--stat", "--patch", "--no-color", base, task["commit_sha"],
                         cwd=self.root)

    async def conflict_hunks(self, a: str, b: str) -> dict[str, str]:
        """The conflicted files, with markers, if branches a and b were merged."""
        heads = []
        for name in (a, b):
            row = self.store.get("branches", name)
            if row is None or not row["head"]:
                raise FactoryError(f"no open branch {name}")
            heads.append(row["head"])
        forecaster = ConflictForecaster(self.root, self.store.append,
                                        self.root / ".factory" / "merge-tree")
        return await forecaster.hunks(heads[0], heads[1])


def _load_replays(root: Path, router: ModelRouter) -> None:
    models = {m for m in router.roles.values() if m.startswith("replay/")}
    for fallbacks in router.fallbacks.values():
        models.update(m for m in fallbacks if m.startswith("replay/"))
    if not models:
        return
    from agents import replay

    for model in models:
        path = replay_path(root, model)
        try:
            replay.load(model.split("/", 1)[1], path)
        except ValueError as exc:
            raise FactoryError(str(exc)) from None
