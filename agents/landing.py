"""Landing a finished branch on main, safely: test what you land.

The branch is merged with main's current head in a temporary worktree, the gates run on that
exact tree (conflicts, undeclared dependencies, the test command in the sandbox), and main is
advanced to that tested merge only if every gate passed and main has not moved meanwhile.
This is the spine's landing step; the merge queue will replace it behind `LandingStep`.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agents import events as ev
from agents.deps import phantom_imports
from agents.gitcmd import GitError, git, git_ok
from agents.sandbox.base import Limits, SandboxBackend, SandboxContext
from agents.workspace import Workspace, trailer_block


@dataclass(frozen=True)
class LandingRequest:
    spec_id: str
    task_id: str
    branch: str
    commit: str
    title: str
    trailers: dict[str, str]


@dataclass
class LandingOutcome:
    landed: bool
    gate: str = ""
    reason: str = ""
    output: str = ""
    main_before: str = ""
    main_after: str = ""
    gates: list[ev.GateResult] = field(default_factory=list)


_FAILURE_LINE = re.compile(r"^(?:FAIL|ERROR): (\S+) \(([\w.]+)\)|^FAILED (\S+::\S+)", re.M)


def first_failures(output: str, limit: int = 3) -> str:
    """The failing tests' names from unittest or pytest output, for a one-line reason."""
    names = []
    for m in _FAILURE_LINE.finditer(output):
        if m.group(1):  # unittest: "FAIL: test_x (module.Class.test_x)" since 3.11
            qualified = m.group(2)
            name = qualified if qualified.endswith(m.group(1)) else f"{qualified}.{m.group(1)}"
        else:
            name = m.group(3)
        if name not in names:
            names.append(name)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class LandingStep(Protocol):
    async def land(self, request: LandingRequest) -> LandingOutcome: ...

    async def already_landed(self, request: LandingRequest) -> str | None: ...


Emit = Callable[[ev.Event], Awaitable[object]]


class TestedLanding:
    """Merge, gate and fast-forward, one branch at a time."""

    def __init__(
        self,
        workspace: Workspace,
        backend: SandboxBackend,
        test_command: str,
        limits: Limits,
        scratch: Path,
        emit: Emit,
    ) -> None:
        self.ws = workspace
        self.backend = backend
        self.test_command = test_command
        self.limits = limits
        self.scratch = scratch
        self.emit = emit
        self._lock = asyncio.Lock()
        self._counter = itertools.count(1)

    async def already_landed(self, request: LandingRequest) -> str | None:
        """Main's head if the branch's commit is already in main (a landing cut short)."""
        main = self.ws.main_head()
        if await git_ok("merge-base", "--is-ancestor", request.commit, main, cwd=self.ws.root):
            return main
        return None

    async def land(self, request: LandingRequest) -> LandingOutcome:
        async with self._lock:
            landed = await self.already_landed(request)
            if landed is not None:
                return LandingOutcome(True, main_before=landed, main_after=landed)
            main_before = self.ws.main_head()
            self.scratch.mkdir(parents=True, exist_ok=True)
            path = self.scratch / f"land-{request.spec_id}--{request.task_id}-{next(self._counter)}"
            async with self.ws.add_lock:
                await git("worktree", "add", "-q", "--detach", str(path), main_before,
                          cwd=self.ws.root)
            try:
                return await self._gates(request, path, main_before)
            finally:
                self.ws.remove(path)

    async def _gate(self, request: LandingRequest, outcome: LandingOutcome, gate: str,
                    passed: bool, detail: str, started: float) -> None:
        result = ev.GateResult(spec_id=request.spec_id, task_id=request.task_id, gate=gate,
                               passed=passed, detail=detail[:2000],
                               duration=time.perf_counter() - started)
        outcome.gates.append(result)
        await self.emit(result)

    async def _gates(self, request: LandingRequest, path: Path, main_before: str) \
            -> LandingOutcome:
        outcome = LandingOutcome(False, main_before=main_before)
        message = (f"Land {request.branch}: {request.title}\n\n"
                   f"{trailer_block(request.trailers)}\n")
        started = time.perf_counter()
        try:
            await git("merge", "--no-ff", "--no-edit", "-m", message, request.commit, cwd=path)
        except GitError as exc:
            conflicted = (await git("diff", "--name-only", "--diff-filter=U", cwd=path,
                                    check=False)).split()
            await git("merge", "--abort", cwd=path, check=False)
            reason = (f"conflicts with main in {', '.join(conflicted)}" if conflicted
                      else f"merge failed: {exc.stderr.strip() or exc.stdout.strip()}")
            await self._gate(request, outcome, "conflicts", False, reason, started)
            outcome.gate, outcome.reason = "conflicts", reason
            outcome.output = exc.stdout
            return outcome
        await self._gate(request, outcome, "conflicts", True, "merges cleanly", started)

        started = time.perf_counter()
        changed = (await git("diff", "--name-only", main_before, "HEAD", cwd=path)).split()
        phantom = phantom_imports(path, changed)
        if phantom:
            reason = "undeclared third-party imports: " + ", ".join(
                f"{module} (in {', '.join(files)})" for module, files in sorted(phantom.items())
            )
            await self._gate(request, outcome, "dependencies", False, reason, started)
            outcome.gate, outcome.reason = "dependencies", reason
            return outcome
        await self._gate(request, outcome, "dependencies", True, "no undeclared imports",
                         started)

        started = time.perf_counter()
        sandbox = await self.backend.open(SandboxContext(worktree=path,
                                                         agent_id=f"land-{request.task_id}"))
        try:
            result = await sandbox.run(["sh", "-c", self.test_command], cwd=path,
                                       limits=self.limits)
        finally:
            await sandbox.close()
        output = (result.stdout + result.stderr)[-8000:]
        if not result.ok:
            why = f"exit code {result.exit_code}" if result.stop == "exit" else result.detail
            failing = first_failures(output)
            reason = f"tests failed ({why})" + (f": {failing}" if failing else "")
            await self._gate(request, outcome, "tests", False, reason + "\n" + output, started)
            outcome.gate, outcome.reason, outcome.output = "tests", reason, output
            return outcome
        await self._gate(request, outcome, "tests", True, "tests pass", started)

        merged = (await git("rev-parse", "HEAD", cwd=path)).strip()
        try:
            await self._advance_main(merged, main_before)
        except GitError as exc:
            reason = f"could not advance {self.ws.main_branch}: {exc.stderr.strip()}"
            outcome.gate, outcome.reason = "land", reason
            return outcome
        outcome.landed, outcome.main_after = True, merged
        return outcome

    async def _advance_main(self, merged: str, main_before: str) -> None:
        """Move main to exactly the tested merge; keep a checked-out main's files in step."""
        head = (self.ws.root / ".git" / "HEAD")
        checked_out = head.is_file() and \
            head.read_text().strip() == f"ref: refs/heads/{self.ws.main_branch}"
        if checked_out:
            if self.ws.main_head() != main_before:
                raise GitError(("merge",), 1, "", "main moved while the branch was tested")
            await git("merge", "--ff-only", "-q", merged, cwd=self.ws.root)
        else:
            await git("update-ref", f"refs/heads/{self.ws.main_branch}", merged, main_before,
                      cwd=self.ws.root)
