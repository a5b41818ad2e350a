"""Landing a finished branch on main, safely: test what you land, land what you tested.

The branch is merged with main's current head in a temporary worktree, and the merge commit
is recorded (a `landing_merged` event) before any test runs. The gates run on that exact
tree: conflicts, paths the engine keeps for itself (`.factory/`, `.factory.toml`, and ignore
rules that would stop `.factory/` being ignored), undeclared dependencies, then the test
command in the sandbox, where the worktree's git metadata is read-only. Main is then moved
to the recorded commit, never to whatever the worktree's HEAD says afterwards, after its
tree and trailers are checked again, only if main has not moved and the entry is still
cleared to land (its approval is read at that moment).
This is the spine's landing step; the merge queue will replace it behind `LandingStep`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agents import events as ev
from agents import provenance
from agents.gitcmd import GitError, git, git_bytes, git_ok, paths_z, shown
from agents.sandbox.base import Limits, SandboxBackend, SandboxContext
from agents.sandbox.quota import DiskMeter, Quota
from agents.workspace import Workspace

# Paths no branch may add or change: the engine's own state and its configuration.
PROTECTED = (".factory", ".factory.toml")
# Asks, just before main moves, whether the entry may still land; a reason when not.
MayLand = Callable[["LandingRequest"], Awaitable[str | None]]


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


def failing_tests(output: str) -> list[str]:
    """The failing tests' names in unittest or pytest output, in order, once each."""
    names: list[str] = []
    for m in _FAILURE_LINE.finditer(output):
        if m.group(1):  # unittest: "FAIL: test_x (module.Class.test_x)" since 3.11
            qualified = m.group(2)
            name = qualified if qualified.endswith(m.group(1)) else f"{qualified}.{m.group(1)}"
        else:
            name = m.group(3)
        if name not in names:
            names.append(name)
    return names


def first_failures(output: str, limit: int = 3) -> str:
    """The failing tests' names from unittest or pytest output, for a one-line reason."""
    names = failing_tests(output)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class LandingStep(Protocol):
    async def already_landed(self, request: LandingRequest) -> str | None: ...


Emit = Callable[[ev.Event], Awaitable[object]]


class TestedLanding:
    """What landing is made of, for the merge queue's executor (agents/queue/executor.py):
    the merge, the protected-paths and dependencies checks, the sandboxed test run, the
    recheck of the recorded merge, and main's advance to it."""

    def __init__(
        self,
        workspace: Workspace,
        backend: SandboxBackend,
        test_command: str,
        limits: Limits,
        scratch: Path,
        emit: Emit,
        quota: Quota | None = None,
    ) -> None:
        self.ws = workspace
        self.backend = backend
        self.test_command = test_command
        self.limits = limits
        self.scratch = scratch
        self.emit = emit
        self.quota = quota
        self._lock = asyncio.Lock()
        self._counter = itertools.count(1)

    async def already_landed(self, request: LandingRequest) -> str | None:
        """Main's head if the branch's commit is already in main (a landing cut short)."""
        main = self.ws.main_head()
        if await git_ok("merge-base", "--is-ancestor", request.commit, main, cwd=self.ws.root):
            return main
        return None

    async def _merge(self, path: Path, request: LandingRequest,
                     onto: str = "with main ") -> tuple[str, str] | None:
        """Merge the branch into the worktree at path: (why not, git's output) when it does
        not merge (aborted, so the worktree is as before)."""
        message = provenance.compose(f"Land {request.branch}: {request.title}", "",
                                     request.trailers)
        try:
            await git("merge", "--no-ff", "--no-edit", "-m", message, request.commit, cwd=path)
        except GitError as exc:
            conflicted = paths_z(await git_bytes("diff", "--name-only", "-z",
                                                 "--diff-filter=U", cwd=path, check=False))
            await git("merge", "--abort", cwd=path, check=False)
            reason = (f"conflicts {onto}in {', '.join(map(shown, conflicted))}" if conflicted
                      else f"merge failed: {exc.stderr.strip() or exc.stdout.strip()}")
            return reason, exc.stdout
        return None

    async def _protected(self, path: Path, changed: list[str],
                         exposed_before: list[str]) -> str:
        """Why the change touches what the engine keeps for itself ("" when it does not):
        its paths, or ignore rules that stop `.factory/` being ignored."""
        touched = [shown(f) for f in changed if f.split("/", 1)[0] in PROTECTED]
        if touched:
            return ("changes paths the engine keeps for itself: " + ", ".join(touched[:5])
                    + (f" and {len(touched) - 5} more" if len(touched) > 5 else ""))
        exposed = sorted(set(await self._factory_exposed(path)) - set(exposed_before))
        if exposed:
            return ("changes ignore rules so that the engine's own state is no longer "
                    "ignored: " + ", ".join(map(shown, exposed[:5])))
        return ""

    async def _run_tests(self, path: Path, agent_id: str, env: dict[str, str] | None = None) \
            -> tuple[bool, str, str, list[str]]:
        """The test command in a fresh sandbox over path (its .git read-only): (passed,
        output, why not, the failing tests' names; the why says when the command itself
        could not run, exit 126 or 127). `env` is added to the sandbox's scrubbed
        environment (the queue names the run and its attempt: a suite can vary its seed)."""
        meter = DiskMeter(path, self.quota) if self.quota is not None else None
        sandbox = await self.backend.open(SandboxContext(
            worktree=path, agent_id=agent_id, read_only=[path / ".git"], meter=meter))
        try:
            result = await sandbox.run(["sh", "-c", self.test_command], cwd=path, env=env,
                                       limits=self.limits)
        finally:
            await sandbox.close()
        output = (result.stdout + result.stderr)[-8000:]
        if result.ok:
            return True, output, "", []
        why = f"exit code {result.exit_code}" if result.stop == "exit" else result.detail
        named = first_failures(output)
        reason = f"tests failed ({why})" + (f": {named}" if named else "")
        if result.stop == "exit" and result.exit_code in (126, 127):
            first = next((line.strip()[:200] for line in output.splitlines() if line.strip()),
                         "no output")
            reason += f" (the test command could not run: {first})"
        return False, output, reason, failing_tests(output)

    async def _recheck(self, request: LandingRequest, merged: str, tree: str,
                       main_before: str) -> str | None:
        """The recorded merge, looked at again from the repository itself (not from the
        worktree the tests ran in): its tree, its parents and the trailers git reads."""
        try:
            now_tree = (await git("rev-parse", "--verify", f"{merged}^{{tree}}",
                                  cwd=self.ws.root)).strip()
            parents = (await git("rev-parse", f"{merged}^1", f"{merged}^2",
                                 cwd=self.ws.root)).split()
            body = await git("show", "-s", "--format=%B", merged, cwd=self.ws.root)
        except GitError as exc:
            return f"the recorded merge {merged[:12]} cannot be read: {exc.stderr.strip()}"
        if now_tree != tree or parents != [main_before, request.commit]:
            return f"the recorded merge {merged[:12]} is not the one that was tested"
        found = await provenance.trailers_of(body, self.ws.root)
        wanted = [(k, provenance.trailer_value(v)) for k, v in request.trailers.items()]
        if found != wanted:
            return f"the merge's trailers are not the engine's ({found!r})"
        return None

    async def _factory_exposed(self, path: Path) -> list[str]:
        """Which of `.factory/` and what it holds the ignore rules of the tree checked out at
        path do not ignore (they should ignore all of it)."""
        probes = [".factory/", ".factory/factory.db", ".factory/run.lock", ".factory/x"]
        own = self.ws.root / ".factory"
        if own.is_dir():
            probes += sorted(f".factory/{entry.name}" + ("/" if entry.is_dir() else "")
                             for entry in own.iterdir())[:200]
        out = await git_bytes("check-ignore", "--no-index", "--stdin", "-z", cwd=path,
                              stdin=b"".join(os.fsencode(p) + b"\0" for p in probes),
                              check=False)
        ignored = set(paths_z(out))
        return [p for p in probes if p not in ignored]

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
