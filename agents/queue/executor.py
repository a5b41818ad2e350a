"""The queue's executors: link an entry onto the chain, test a tree, test a suspect alone,
move main. Each reports only by appending events; what to do next is agents/queue/chain.py's.

Everything git does here is done by git (`worktree add`, `merge`, `update-ref`), each piece
of work in its own temporary worktree, and every test run in its own sandbox, where the
worktree's git metadata is read-only. Main moves only to a commit the chain recorded and a
run passed on, after its links are read back from the repository (trees, parents, trailers),
each entry is checked to be still cleared to land, and, once moved, that every landed
entry's commit is contained in main.
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from agents import events as ev
from agents import provenance
from agents.gates.base import (
    Finding,
    Gate,
    GateInput,
    GateVerdict,
    Verdict,
    changes_between,
)
from agents.gitcmd import GitError, git, git_bytes, git_ok, paths_z
from agents.landing import (
    LandingRequest,
    MayLand,
    TestedLanding,
)
from agents.queue.chain import LandChain, LinkEntry, TestAlone, TestPoint


@dataclass(frozen=True)
class GateContext:
    """What the engine knows of an entry that its tree does not say: the spec's Boundaries,
    the task's paths, the agent that wrote it, and whether a person approved this commit
    already (a gate asking for approval again would wait forever)."""

    boundaries: tuple[str, ...] = ()
    task_paths: tuple[str, ...] = ()
    role: str = ""
    model: str = ""
    approved: bool = False


class ChainExecutor(TestedLanding):
    """The landing step's checks (TestedLanding's) and the configured gates, applied link
    by link."""

    _names = itertools.count(1)
    _link_path: Path | None = None
    gates: list[Gate] = []  # noqa: RUF012 (set once by the engine, never mutated)

    def close(self) -> None:
        if self._link_path is not None:
            self.ws.remove(self._link_path)
            self._link_path = None

    async def _scratch(self, commit: str, what: str) -> Path:
        self.scratch.mkdir(parents=True, exist_ok=True)
        path = self.scratch / f"{what}-{next(self._names)}-{uuid.uuid4().hex[:6]}"
        async with self.ws.add_lock:
            await git("worktree", "add", "-q", "--detach", str(path), commit, cwd=self.ws.root)
        return path

    # -- links -------------------------------------------------------------------------------

    async def _link_tree(self, onto: str) -> Path:
        """The one worktree links are made in (links are made one at a time), checked out
        at `onto`: kept between links, since adding and removing a worktree for each took
        longer than the merge, and waited behind the test runs' worktrees."""
        path = self._link_path
        if path is not None and path.is_dir():
            try:
                await git("checkout", "-q", "--detach", "--force", onto, cwd=path)
                await git("clean", "-q", "-d", "-f", "-x", cwd=path)
                return path
            except GitError:
                self.ws.remove(path)
        self._link_path = await self._scratch(onto, "link")
        return self._link_path

    async def link(self, intent: LinkEntry, request: LandingRequest,
                   context: GateContext | None = None) -> None:
        """Merge the entry onto the chain and run the gates it meets on its own."""
        path = await self._link_tree(intent.onto)
        try:
            exposed_before = await self._factory_exposed(path)
            problem = await self._link_merge(path, request)
            if problem is not None:
                gate, reason = problem
                await self._link(request, intent, ok=False, gate=gate, reason=reason)
                return
            merged = (await git("rev-parse", "HEAD", cwd=path)).strip()
            tree = (await git("rev-parse", f"{merged}^{{tree}}", cwd=path)).strip()
            problem = await self._own_gates(request, path, intent.onto, merged, exposed_before)
            if problem is None:
                problem = await self._gates(request, context or GateContext(), path,
                                            intent.onto, merged)
            if problem is not None:
                gate, reason = problem
                await self._link(request, intent, ok=False, gate=gate, reason=reason,
                                 merged=merged, tree=tree)
                return
            await self._link(request, intent, ok=True, merged=merged, tree=tree)
        except BaseException:
            self.ws.remove(path)  # in an unknown state: the next link starts afresh
            self._link_path = None
            raise

    async def _link_merge(self, path: Path, request: LandingRequest) -> tuple[str, str] | None:
        started = time.perf_counter()
        refused = await self._merge(path, request, onto="")
        if refused is not None:
            await self._failed(request, "conflicts", refused[0], started)
            return "conflicts", refused[0]
        await self._passed(request, "conflicts", "merges cleanly", started)
        return None

    async def _own_gates(self, request: LandingRequest, path: Path, base: str, merged: str,
                         exposed_before: list[str]) -> tuple[str, str] | None:
        """The paths the engine keeps for itself: always checked, whatever is configured."""
        started = time.perf_counter()
        changed = paths_z(await git_bytes("diff", "--name-only", "-z", "--no-renames",
                                          base, merged, cwd=path))
        reason = await self._protected(path, changed, exposed_before)
        if reason:
            await self._failed(request, "protected", reason, started)
            return "protected", reason
        await self._passed(request, "protected", "leaves .factory/ and .factory.toml alone",
                           started)
        return None

    async def _gates(self, request: LandingRequest, context: GateContext, path: Path,
                     base: str, merged: str) -> tuple[str, str] | None:
        """The configured gates, in order, each verdict an event: (gate, why) for the first
        that denies. A gate asking for a person's approval does not stop the others; the
        entry waits for approval once they all ran (unless this commit was approved)."""
        if not self.gates:
            return None
        given = GateInput(
            repo=self.ws.root, tree=path, base=base, merged=merged,
            main=self.ws.main_head(), entry_commit=request.commit, spec_id=request.spec_id,
            task_id=request.task_id, title=request.title, boundaries=context.boundaries,
            task_paths=context.task_paths, role=context.role, model=context.model,
            approved=context.approved,
            changes=await changes_between(path, base, merged))
        wanted: list[tuple[str, str]] = []
        for gate in self.gates:
            started = time.perf_counter()
            try:
                verdict = await gate.check(given)
            except Exception as exc:  # a broken gate refuses: it never waves a change by
                detail = f"{type(exc).__name__}: {exc}"[:500]
                verdict = GateVerdict(gate.name, Verdict.DENY, f"the gate failed: {detail}",
                                      [Finding(f"{gate.name}.error", f"the gate failed: "
                                               f"{detail}")])
            given.findings.extend(verdict.findings)
            asks = verdict.verdict == Verdict.APPROVE and not context.approved
            await self.emit(ev.GateResult(
                spec_id=request.spec_id, task_id=request.task_id, gate=gate.name,
                passed=verdict.verdict != Verdict.DENY, detail=verdict.summary[:2000],
                duration=time.perf_counter() - started, verdict=verdict.verdict.value,
                findings=[f.as_dict() for f in verdict.findings[:200]]))
            if verdict.verdict == Verdict.DENY:
                return gate.name, verdict.summary
            if asks:
                wanted.append((gate.name, verdict.summary))
        if wanted:
            await self.emit(ev.ApprovalRequested(
                spec_id=request.spec_id, task_id=request.task_id, commit=request.commit,
                gate=wanted[0][0], reasons=[f"{g}: {why}" for g, why in wanted]))
        return None

    async def _link(self, request: LandingRequest, intent: LinkEntry, *, ok: bool,
                    gate: str = "", reason: str = "", merged: str = "", tree: str = "") -> None:
        await self.emit(ev.QueueLinked(spec_id=request.spec_id, task_id=request.task_id,
                                       commit=request.commit, base=intent.onto,
                                       merge_commit=merged, tree=tree, ok=ok, gate=gate,
                                       reason=reason))

    async def _passed(self, request: LandingRequest, gate: str, detail: str,
                      started: float) -> None:
        await self.emit(ev.GateResult(spec_id=request.spec_id, task_id=request.task_id,
                                      gate=gate, passed=True, detail=detail,
                                      duration=time.perf_counter() - started))

    async def _failed(self, request: LandingRequest, gate: str, detail: str,
                      started: float) -> None:
        await self.emit(ev.GateResult(spec_id=request.spec_id, task_id=request.task_id,
                                      gate=gate, passed=False, detail=detail[:2000],
                                      duration=time.perf_counter() - started))

    # -- test runs ---------------------------------------------------------------------------

    async def test(self, intent: TestPoint, runner: int = 0) -> None:
        """Run the test command on one point of the chain (or on main) in a fresh sandbox."""
        run_id = f"run-{uuid.uuid4().hex[:12]}"
        await self.emit(ev.QueueTestStarted(run_id=run_id, commit=intent.commit,
                                            keys=list(intent.keys), position=intent.position,
                                            size=intent.size, attempt=intent.attempt,
                                            runner=runner))
        await self._test_commit(run_id, intent.commit, f"test-{intent.position}",
                                intent.attempt, intent.keys)

    async def alone(self, intent: TestAlone, request: LandingRequest, runner: int = 0) -> None:
        """Merge a suspect onto main on the side (never part of the chain) and test that."""
        run_id = f"run-{uuid.uuid4().hex[:12]}"
        path = await self._scratch(intent.onto, "alone")
        try:
            message = provenance.compose(f"Test {request.branch} alone", "", {})
            merged = intent.onto
            try:
                await git("merge", "--no-ff", "--no-edit", "-m", message, request.commit,
                          cwd=path)
                merged = (await git("rev-parse", "HEAD", cwd=path)).strip()
            except GitError as exc:
                await git("merge", "--abort", cwd=path, check=False)
                await self.emit(ev.QueueTestStarted(run_id=run_id, commit=intent.onto,
                                                    keys=[intent.key], attempt=intent.attempt,
                                                    alone=intent.key, runner=runner))
                await self.emit(ev.QueueTestFinished(
                    run_id=run_id, commit=intent.onto, passed=False,
                    reason=f"conflicts with main: {exc.stderr.strip()[:300]}"))
                return
            await self.emit(ev.QueueTestStarted(run_id=run_id, commit=merged,
                                                keys=[intent.key], position=1, size=1,
                                                attempt=intent.attempt, alone=intent.key,
                                                runner=runner))
            await self._test_at(run_id, merged, path, intent.attempt, (intent.key,))
        finally:
            self.ws.remove(path)

    async def _test_commit(self, run_id: str, commit: str, what: str, attempt: int,
                           keys: tuple[str, ...]) -> None:
        path = await self._scratch(commit, what)
        try:
            await self._test_at(run_id, commit, path, attempt, keys)
        finally:
            self.ws.remove(path)

    async def _test_at(self, run_id: str, commit: str, path: Path, attempt: int,
                       keys: tuple[str, ...]) -> None:
        started = time.perf_counter()
        # The run, its attempt on this tree and the entries it tests above main, for suites
        # that vary a seed per run or report where they ran.
        env = {"FACTORY_TEST_RUN": run_id, "FACTORY_TEST_ATTEMPT": str(attempt),
               "FACTORY_TEST_ENTRIES": ",".join(keys)}
        passed, output, reason, failing = await self._run_tests(path, f"queue-{run_id}", env)
        await self.emit(ev.QueueTestFinished(run_id=run_id, commit=commit, passed=passed,
                                             failing=failing, reason=reason,
                                             output=output if not passed else "",
                                             duration=time.perf_counter() - started))

    # -- landing -----------------------------------------------------------------------------

    async def land_chain(self, intent: LandChain, requests: list[LandingRequest],
                         links: dict[str, dict[str, object]],
                         may_land: MayLand | None) -> tuple[list[LandingRequest], str]:
        """Move main to the tested point: (the entries landed, why not when none did)."""
        async with self._lock:
            main = self.ws.main_head()
            if main != intent.main_before:
                return [], f"main moved to {main[:12]} while the chain was tested"
            base = intent.main_before
            for request in requests:
                link = links[f"{request.spec_id}/{request.task_id}"]
                problem = await self._recheck(request, str(link["merge_commit"]),
                                              str(link["tree"]), base)
                if problem is None and may_land is not None:
                    problem = await may_land(request)
                if problem is not None:
                    return [], f"{request.spec_id}/{request.task_id}: {problem}"
                base = str(link["merge_commit"])
            if base != intent.commit:
                return [], "the chain's links do not lead to the tested commit"
            try:
                await self._advance_main(intent.commit, intent.main_before)
            except GitError as exc:
                return [], f"could not advance {self.ws.main_branch}: {exc.stderr.strip()}"
        landed = []
        for request in requests:
            if await git_ok("merge-base", "--is-ancestor", request.commit, intent.commit,
                            cwd=self.ws.root):
                landed.append(request)
            else:
                await self.emit(ev.WorkLost(spec_id=request.spec_id, task_id=request.task_id,
                                            branch=request.branch, commit=request.commit,
                                            main=intent.commit))
        return landed, ""

