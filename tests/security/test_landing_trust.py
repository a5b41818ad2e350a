"""Trust at the landing: what lands is exactly what was tested, provenance says only what
the engine wrote, odd file names are seen as git sees them, and the engine's own state
(`.factory/`, `.factory.toml`) never arrives through a branch.

Everything here is real: git repositories, the engine's Workspace and the merge queue's
executor (link, test, land: ChainExecutor),
bubblewrap and docker sandboxes, a Store the landing's events go to, the MergeQueue reading
approval from that store, a whole factory run on the demo project. Branches are made with
plain git (they are the attacker's); the commit or landing under test is always the engine's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agents import events as ev
from agents import provenance
from agents.engine import Factory
from agents.gates.dependencies import DependenciesGate
from agents.gitcmd import shown
from agents.landing import LandingOutcome, LandingRequest, MayLand
from agents.queue import chain
from agents.queue.executor import ChainExecutor
from agents.queue.merge_queue import MergeQueue
from agents.sandbox.base import Limits
from agents.sandbox.select import make_backend
from agents.store import Store
from agents.store.projections import task_key
from agents.workspace import Workspace
from tests.conftest import GIT, PROJECT, git, make_repo
from tests.test_engine import TRAILERS, build_demo

PY = sys.executable
# The project's test command runs the branch's own `ci.sh`: a hostile branch brings its own.
TEST_COMMAND = "sh ci.sh"
CI = f"exec {PY} -m unittest discover -s tests -q\n"
FILES = {**PROJECT, ".factory.toml": "[run]\nconcurrency = 1\n", "ci.sh": CI}
LIMITS = Limits(wall_seconds=60, memory_mb=512, max_processes=128, output_bytes=200_000)
MUL = "def mul(a, b):\n    return a * b\n"
APPEND_SECONDS = 5.0
LAND_SECONDS = 120.0
SPEC = "s"


def trailers_for(task: str, spec: str = SPEC) -> dict[str, str]:
    """Trailers shaped like the orchestrator's (`Orchestrator._trailers`)."""
    return {
        "Factory-Agent": f"{spec}.{task}.1",
        "Factory-Task": f"{spec}/{task}",
        "Factory-Spec": spec,
        "Factory-Model": "replay/demo",
        "Factory-Tokens": "4242",
        "Factory-Cost": "0.001234",
    }


def git_raw(root: Path, *args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(
        [*GIT, *args], cwd=root, check=True, capture_output=True, input=stdin
    ).stdout


def git_ok(root: Path, *args: str) -> bool:
    return subprocess.run([*GIT, *args], cwd=root, capture_output=True).returncode == 0


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


def assert_engine_trailers(repo: Path, commit: str, trailers: dict[str, str]) -> None:
    """git's own parsers find exactly the engine's trailers, in order, and nothing else."""
    wanted = [f"{k}: {provenance.trailer_value(v)}" for k, v in trailers.items()]
    body = git_raw(repo, "log", "-1", "--format=%B", commit)
    parsed = lines(git_raw(repo, "interpret-trailers", "--parse", stdin=body).decode())
    assert parsed == wanted, f"interpret-trailers --parse found {parsed!r} in {body!r}"
    only = lines(git(repo, "log", "-1", "--format=%(trailers:only,unfold)", commit))
    assert only == wanted, f"%(trailers:only,unfold) found {only!r} in {body!r}"
    for key, value in trailers.items():
        got = lines(git(repo, "log", "-1", f"--format=%(trailers:key={key},valueonly)", commit))
        assert got == [provenance.trailer_value(value)], (key, got, body)
    subject = git(repo, "log", "-1", "--format=%s", commit).rstrip("\n")
    assert "\n" not in subject and subject, body


# -- the landing yard: a repository, its engine workspace, a store, a sandbox backend --------


@dataclass
class Yard:
    repo: Path
    ws: Workspace
    store: Store
    lander: ChainExecutor | None = None
    hooks: list[Callable[[ev.Event], Awaitable[None]]] = field(default_factory=list)
    made: int = 0

    async def emit(self, event: ev.Event) -> None:
        try:  # a commit to the store takes milliseconds: one that never ends is a failure
            await asyncio.wait_for(asyncio.shield(self.store.append(event)), APPEND_SECONDS)
        except TimeoutError:
            raise AssertionError(f"Store.append never returned for {ascii(event)[:600]}") from None
        for hook in list(self.hooks):
            await hook(event)

    def main(self) -> str:
        return git(self.repo, "rev-parse", "refs/heads/main").strip()

    def tree(self, rev: str) -> str:
        return git(self.repo, "rev-parse", f"{rev}^{{tree}}").strip()

    def branch(
        self,
        name: str,
        files: dict[str, str | bytes | None],
        base: str = "main",
        symlinks: dict[str, str] | None = None,
    ) -> str:
        """A branch made by hand with plain git: files written (None deletes), committed."""
        self.made += 1
        wt = self.repo.parent / f"branch-wt-{self.made}"
        git(self.repo, "worktree", "add", "-q", "-b", name, str(wt), base)
        written = []
        for rel, content in files.items():
            target = wt / rel
            if content is None:
                target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
            written.append(rel)
        for rel, pointee in (symlinks or {}).items():
            target = wt / rel
            if target.exists() or target.is_symlink():
                target.unlink()
            os.symlink(pointee, target)
            written.append(rel)
        git(wt, "add", "-A")
        if written:  # ignored paths (under .factory/) are added by force, as an attacker would
            git(wt, "add", "-f", "--", *written)
        git(wt, "commit", "-q", "-m", f"work on {name}")
        sha = git(wt, "rev-parse", "HEAD").strip()
        git(self.repo, "worktree", "remove", "--force", str(wt))
        return sha

    def request(self, commit: str, task: str = "t", title: str = "Add mul") -> LandingRequest:
        return LandingRequest(
            spec_id=SPEC,
            task_id=task,
            branch=f"factory/{SPEC}/{task}",
            commit=commit,
            title=title,
            trailers=trailers_for(task),
        )

    async def land(
        self, commit: str, task: str = "t", title: str = "Add mul", may_land: MayLand | None = None
    ) -> LandingOutcome:
        return await asyncio.wait_for(
            self._through_the_queue(self.request(commit, task, title), may_land), LAND_SECONDS
        )

    async def _through_the_queue(self, request: LandingRequest,
                                 may_land: MayLand | None) -> LandingOutcome:
        """The entry's way through the merge queue's executor, as the engine drives it: linked
        onto main (its own gates), its chain point tested in a sandbox, main moved to it."""
        assert self.lander is not None
        key = f"{request.spec_id}/{request.task_id}"
        main = self.main()
        await self.lander.link(chain.LinkEntry(key, request.commit, main, 1), request)
        link = self.store.get("links", key) or {}
        if not link.get("ok"):
            return LandingOutcome(False, gate=link.get("gate") or "", reason=link.get("reason")
                                  or "", main_before=main)
        merged = link["merge_commit"]
        await self.lander.test(chain.TestPoint(merged, 1, (key,), 1, 1))
        run, = [e for e in await self.events()
                if isinstance(e, ev.QueueTestFinished) and e.commit == merged]
        # The verdict as the engine records it (it lands or evicts on the run's outcome).
        await self.emit(ev.GateResult(spec_id=request.spec_id, task_id=request.task_id,
                                      gate="tests", passed=run.passed, detail=run.reason))
        if not run.passed:
            return LandingOutcome(False, gate="tests", reason=run.reason, output=run.output,
                                  main_before=main)
        landed, problem = await self.lander.land_chain(
            chain.LandChain(merged, main, (key,), 1), [request], {key: link}, may_land)
        if not landed:
            return LandingOutcome(False, gate="land", reason=problem, main_before=main)
        return LandingOutcome(True, main_before=main, main_after=self.main())

    async def events(self) -> list[ev.Event]:
        return [s.event for s in await self.store.read_events(limit=100_000)]

    async def merged(self, task: str = "t") -> ev.LandingMerged:
        """The merge the queue recorded for the entry (its link) before any test ran."""
        found = [
            e for e in await self.events() if isinstance(e, ev.QueueLinked) and e.task_id == task
        ]
        assert len(found) == 1, found
        link = found[0]
        return ev.LandingMerged(spec_id=link.spec_id, task_id=task, branch="",
                                commit=link.commit, merge_commit=link.merge_commit,
                                tree=link.tree, main_before=link.base)

    def factory_state(self) -> dict[str, str]:
        """What the repository's real `.factory/` holds (but the store's own files and the
        landing scratch folder itself): names and content digests."""
        out: dict[str, str] = {}
        base = self.repo / ".factory"
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(base).as_posix()
            if rel.startswith("factory.db") or rel == "landing" or rel.startswith("landing/"):
                continue
            out[rel] = (
                hashlib.sha256(path.read_bytes()).hexdigest()
                if path.is_file()
                else ("link" if path.is_symlink() else "dir")
            )
        return out


@asynccontextmanager
async def open_yard(tmp_path: Path, backend: str, image: str | None = None) -> AsyncIterator[Yard]:
    repo = make_repo(tmp_path / "repo", FILES)
    (repo / "README.md").write_text("calc\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", "second")  # main has a parent: a target for forgeries
    store = await Store.open(repo / ".factory" / "factory.db")
    ws = Workspace(repo, repo / ".factory" / "worktrees")
    yard = Yard(repo, ws, store)
    yard.lander = ChainExecutor(
        ws,
        make_backend(backend, limits=LIMITS, image=image, root=repo),  # type: ignore[arg-type]
        TEST_COMMAND,
        LIMITS,
        repo / ".factory" / "landing",
        yard.emit,
    )
    yard.lander.gates = [DependenciesGate()]
    try:
        yield yard
    finally:
        yard.lander.close()  # its kept link worktree
        ws.close()
        try:
            await asyncio.wait_for(store.flush(), 2)
        except TimeoutError:
            # An append whose event could not be serialised leaves the store's writer
            # stalled, `flush` and `close` waiting forever: another append moves it on.
            await asyncio.wait_for(store.append(ev.Notice(message="teardown")), 5)
        await store.close()


@pytest.fixture
async def yard(tmp_path: Path) -> AsyncIterator[Yard]:
    async with open_yard(tmp_path, "bwrap") as made:
        yield made


@pytest.fixture(params=["bwrap", "docker"])
async def any_yard(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Yard]:
    # docker's fixture fails (never skips) the test when no daemon answers.
    image = request.getfixturevalue("docker_image") if request.param == "docker" else None
    async with open_yard(tmp_path, request.param, image) as made:
        yield made


async def assert_lands_what_was_recorded(
    yard: Yard, outcome: LandingOutcome, commit: str, main_before: str, task: str = "t"
) -> str:
    """Main is at exactly the merge the landing recorded before its tests (parents: main
    before and the branch), or the landing was refused and main did not move."""
    merged = await yard.merged(task)
    assert (merged.commit, merged.main_before) == (commit, main_before)
    assert git(
        yard.repo, "rev-parse", f"{merged.merge_commit}^1", f"{merged.merge_commit}^2"
    ).split() == [main_before, commit]
    assert yard.tree(merged.merge_commit) == merged.tree
    if not outcome.landed:
        assert outcome.gate == "land", (outcome.gate, outcome.reason, outcome.output)
        assert yard.main() == main_before
        return main_before
    assert outcome.main_after == merged.merge_commit == yard.main(), outcome
    assert yard.tree("main") == merged.tree
    # main is checked out: its working tree is the recorded tree, with nothing added.
    assert git(yard.repo, "status", "--porcelain", "--untracked-files=all") == ""
    return merged.merge_commit


# -- A. the landing run cannot change what lands ----------------------------------------------


async def test_tests_pointing_dot_git_at_a_fake_git_dir_land_nothing_else(any_yard: Yard) -> None:
    yard = any_yard
    parent = git(yard.repo, "rev-parse", "main~1").strip()
    hostile = f"""set +e
mkdir -p fakegit/refs/heads fakegit/objects/info
echo {parent} > fakegit/HEAD
echo {parent} > fakegit/refs/heads/main
echo {yard.repo}/.git/objects > fakegit/objects/info/alternates
printf 'gitdir: %s/fakegit\\n' "$PWD" > .git; echo "overwrite: $?"
rm -f .git; echo "rm: $?"
mv .git moved.git; echo "mv: $?"
ln -sfn fakegit .git; echo "ln: $?"
cp fakegit/HEAD .git; echo "cp: $?"
exit 0
"""
    commit = yard.branch("factory/s/t", {"calc/mul.py": MUL, "ci.sh": hostile})
    before = yard.main()
    outcome = await yard.land(commit)
    landed = await assert_lands_what_was_recorded(yard, outcome, commit, before)
    assert landed != parent and yard.main() != parent
    assert not (yard.repo / "fakegit").exists()


async def test_tests_moving_refs_with_git_cannot_land_an_untested_commit(yard: Yard) -> None:
    # Another branch, never tested (it breaks the tests), waiting for its own approval.
    untested = yard.branch(
        "factory/s/waiting", {"calc/ops.py": "def add(a, b):\n    return 0\n", "UNTESTED": "x\n"}
    )
    hostile = f"""set +e
export GIT_AUTHOR_NAME=x GIT_AUTHOR_EMAIL=x@x GIT_COMMITTER_NAME=x GIT_COMMITTER_EMAIL=x@x
git update-ref HEAD {untested}; echo "update-ref HEAD: $?"
git reset -q --hard {untested}; echo "reset: $?"
git update-ref refs/heads/main {untested}; echo "update-ref main: $?"
git --git-dir={yard.repo}/.git update-ref refs/heads/main {untested}; echo "git-dir: $?"
git -C {yard.repo} reset -q --hard {untested}; echo "-C repo: $?"
GIT_DIR={yard.repo}/.git GIT_WORK_TREE=$PWD git reset -q --soft {untested}; echo "env: $?"
echo {untested} > {yard.repo}/.git/refs/heads/main; echo "write ref: $?"
exit 0
"""
    commit = yard.branch("factory/s/t", {"calc/mul.py": MUL, "ci.sh": hostile})
    before = yard.main()
    outcome = await yard.land(commit)
    await assert_lands_what_was_recorded(yard, outcome, commit, before)
    assert not git_ok(yard.repo, "merge-base", "--is-ancestor", untested, "main")
    assert not (yard.repo / "UNTESTED").exists()


async def test_tests_moving_refs_when_main_is_not_checked_out(yard: Yard) -> None:
    """The same attack on a repository whose main is not checked out (main moves by
    update-ref, not by a fast-forward of the working tree)."""
    untested = yard.branch("factory/s/waiting", {"UNTESTED": "x\n"})
    git(yard.repo, "switch", "-q", "--detach")
    hostile = f"""set +e
git update-ref HEAD {untested}; git reset -q --hard {untested}
git --git-dir={yard.repo}/.git update-ref refs/heads/main {untested}
echo {untested} > {yard.repo}/.git/refs/heads/main
exit 0
"""
    commit = yard.branch("factory/s/t", {"calc/mul.py": MUL, "ci.sh": hostile})
    before = yard.main()
    outcome = await yard.land(commit)
    merged = await yard.merged()
    assert outcome.landed, (outcome.gate, outcome.reason, outcome.output)
    assert yard.main() == merged.merge_commit == outcome.main_after
    assert git(yard.repo, "rev-parse", "main^1", "main^2").split() == [before, commit]
    assert yard.tree("main") == merged.tree
    assert not git_ok(yard.repo, "merge-base", "--is-ancestor", untested, "main")


async def test_tests_amending_and_writing_what_the_pointer_names_change_nothing(
    any_yard: Yard,
) -> None:
    yard = any_yard
    untested = yard.branch("factory/s/waiting", {"UNTESTED": "x\n"})
    hooks = yard.repo / ".git" / "hooks"
    hostile = f"""set +e
export GIT_AUTHOR_NAME=x GIT_AUTHOR_EMAIL=x@x GIT_COMMITTER_NAME=x GIT_COMMITTER_EMAIL=x@x
echo amended >> calc/mul.py
git commit -q -a --amend -m "Factory-Agent: evil"; echo "amend: $?"
admin=$(sed -n 's/^gitdir: //p' .git)
echo "pointer names: $admin"
echo {untested} > "$admin/HEAD"; echo "admin HEAD: $?"
echo {untested} > "$admin/ORIG_HEAD"; echo "admin ORIG_HEAD: $?"
echo {untested} > "$admin/../../refs/heads/main"; echo "common ref: $?"
printf '#!/bin/sh\\ntouch {yard.repo}/HOOK_RAN\\n' > {hooks}/post-merge; echo "hook: $?"
chmod +x {hooks}/post-merge
printf '[core]\\n\\thooksPath = /tmp\\n' >> "$admin/../../config"; echo "config: $?"
exit 0
"""
    commit = yard.branch("factory/s/t", {"calc/mul.py": MUL, "ci.sh": hostile})
    before = yard.main()
    outcome = await yard.land(commit)
    await assert_lands_what_was_recorded(yard, outcome, commit, before)
    assert not git_ok(yard.repo, "merge-base", "--is-ancestor", untested, "main")
    assert (yard.repo / "calc" / "mul.py").read_text() == MUL  # the amendment did not land
    assert not (hooks / "post-merge").exists() and not (yard.repo / "HOOK_RAN").exists()
    assert "hooksPath" not in (yard.repo / ".git" / "config").read_text()
    if outcome.landed:
        assert_engine_trailers(yard.repo, "main", trailers_for("t"))


async def test_even_unsandboxed_tests_cannot_choose_the_commit_that_lands(tmp_path: Path) -> None:
    """Defence in depth, with no sandbox at all (backend `none`): the tests really do move
    the landing worktree's HEAD to an untested commit, amend it and repoint its `.git`;
    main still moves to the merge recorded before them, or not at all."""
    async with open_yard(tmp_path, "none") as yard:
        untested = yard.branch("factory/s/waiting", {"UNTESTED": "x\n"})
        hostile = f"""set -e
export GIT_AUTHOR_NAME=x GIT_AUTHOR_EMAIL=x@x GIT_COMMITTER_NAME=x GIT_COMMITTER_EMAIL=x@x
git reset -q --hard {untested}
git commit -q --allow-empty --amend -m "Factory-Agent: evil"
test "$(git rev-parse HEAD^)" = "$(git rev-parse {untested}^)"
echo forged > FORGED
mkdir fakegit && cp -R "$(sed -n 's/^gitdir: //p' .git)/." fakegit/
printf 'gitdir: %s/fakegit\\n' "$PWD" > .git
exit 0
"""
        commit = yard.branch("factory/s/t", {"calc/mul.py": MUL, "ci.sh": hostile})
        before = yard.main()
        outcome = await yard.land(commit)
        gate = yard.store.get("gates", f"{task_key(SPEC, 't')}:tests")
        assert gate is not None and gate["passed"], outcome  # the hostile tests did run
        await assert_lands_what_was_recorded(yard, outcome, commit, before)
        assert not git_ok(yard.repo, "merge-base", "--is-ancestor", untested, "main")
        assert not (yard.repo / "FORGED").exists() and not (yard.repo / "UNTESTED").exists()


@pytest.mark.parametrize("backend", ["bwrap", "docker"])
async def test_files_the_tests_change_do_not_land(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    image = request.getfixturevalue("docker_image") if backend == "docker" else None
    hostile = f"""set +e
{PY} -m unittest discover -s tests -q || true
printf 'def add(a, b):\\n    return 0\\n' > calc/ops.py
echo pwned > PWNED.txt
rm -f tests/test_ops.py README.md
mkdir -p .factory && echo injected > .factory/injected
echo '!.factory/' >> .gitignore
exit 0
"""
    async with open_yard(tmp_path, backend, image) as yard:
        commit = yard.branch("factory/s/t", {"calc/mul.py": MUL, "ci.sh": hostile})
        before = yard.main()
        outcome = await yard.land(commit)
        assert outcome.landed, (outcome.gate, outcome.reason, outcome.output)
        await assert_lands_what_was_recorded(yard, outcome, commit, before)
        assert git(yard.repo, "show", "main:calc/ops.py") == PROJECT["calc/ops.py"]
        assert (yard.repo / "calc" / "ops.py").read_text() == PROJECT["calc/ops.py"]
        assert (yard.repo / "tests" / "test_ops.py").is_file()
        assert (yard.repo / "README.md").is_file()
        assert not (yard.repo / "PWNED.txt").exists()
        assert not (yard.repo / ".factory" / "injected").exists()
        assert git(yard.repo, "show", "main:.gitignore") == PROJECT[".gitignore"]


async def test_may_land_refusal_at_the_last_moment_keeps_main(yard: Yard) -> None:
    commit = yard.branch("factory/s/t", {"calc/mul.py": MUL})
    before = yard.main()
    asked: list[tuple[str, object]] = []

    async def may_land(request: LandingRequest) -> str | None:
        tests = yard.store.get("gates", f"{task_key(SPEC, 't')}:tests")
        asked.append((request.commit, tests and tests["passed"]))
        return "the approval was withdrawn"

    outcome = await yard.land(commit, may_land=may_land)
    assert not outcome.landed
    assert (outcome.gate, outcome.reason) == ("land", "s/t: the approval was withdrawn")
    assert asked == [(commit, 1)]  # asked once, after the tests passed
    assert yard.main() == before
    merged = await yard.merged()
    assert not git_ok(yard.repo, "merge-base", "--is-ancestor", merged.merge_commit, "main")
    assert git(yard.repo, "status", "--porcelain", "--untracked-files=all") == ""


async def test_queue_may_land_refuses_an_entry_still_waiting_for_approval(yard: Yard) -> None:
    commit = yard.branch("factory/s/t", {"calc/mul.py": MUL})
    before = yard.main()
    request = yard.request(commit)
    await yard.store.append(
        ev.QueueEntered(
            spec_id=SPEC,
            task_id="t",
            branch=request.branch,
            commit=commit,
            risk="high",
            risk_reasons=["asked"],
            needs_approval=True,
        ),
        ev.LandingStarted(spec_id=SPEC, task_id="t", branch=request.branch, commit=commit),
    )
    queue = MergeQueue(yard.store, approval="always")
    outcome = await yard.land(commit, may_land=queue.may_land)
    assert not outcome.landed
    assert outcome.gate == "land" and "not approved to land (pending)" in outcome.reason
    assert yard.main() == before


SABOTAGE = ["none", "approval_revoked", "entry_recommitted"]


@pytest.mark.parametrize("sabotage", SABOTAGE)
async def test_queue_rereads_approval_when_main_moves(yard: Yard, sabotage: str) -> None:
    """Through a real MergeQueue: the entry needs approval and gets it; then, after the tests
    passed and before main moves, the store says otherwise (a person rejected it, or the
    queue's entry is now another commit). Main moves only when nothing changed."""
    other = yard.branch("factory/s/other", {"OTHER": "x\n"})
    commit = yard.branch("factory/s/t", {"calc/mul.py": MUL})
    before = yard.main()
    request = yard.request(commit)
    key = task_key(SPEC, "t")
    queue = MergeQueue(yard.store, approval="always")

    async def sabotage_after_tests(event: ev.Event) -> None:
        if not (isinstance(event, ev.GateResult) and event.gate == "tests" and event.passed):
            return
        if sabotage == "approval_revoked":
            await yard.store.append(
                ev.ApprovalDecided(
                    spec_id=SPEC, task_id="t", approved=False, by="console", reason="not this"
                )
            )
        elif sabotage == "entry_recommitted":
            await yard.store.append(
                ev.QueueEntered(
                    spec_id=SPEC,
                    task_id="t",
                    branch=request.branch,
                    commit=other,
                    risk="high",
                    needs_approval=True,
                )
            )

    yard.hooks.append(sabotage_after_tests)
    # The entry waits for a person; approved, it lands as the reconciler lands it: recorded
    # as landing, then the landing step with the queue's last-moment check.
    await yard.store.append(
        ev.QueueEntered(
            spec_id=SPEC,
            task_id="t",
            branch=request.branch,
            commit=commit,
            risk="low",
            needs_approval=True,
        )
    )
    row = yard.store.get("queue", key)
    assert row is not None and row["status"] == "awaiting_approval"
    assert yard.main() == before  # nothing lands before a person approves
    await queue.approve(key)
    await yard.store.append(
        ev.LandingStarted(spec_id=SPEC, task_id="t", branch=request.branch, commit=commit)
    )
    outcome = await yard.land(commit, may_land=queue.may_land)
    if sabotage == "none":
        assert outcome.landed, (outcome.gate, outcome.reason, outcome.output)
        await assert_lands_what_was_recorded(yard, outcome, commit, before)
        return
    assert not outcome.landed and outcome.gate == "land", outcome
    wanted = (
        "not approved to land (rejected)"
        if sabotage == "approval_revoked"
        else f"entry is now commit {other[:12]}"
    )
    assert wanted in outcome.reason, outcome.reason
    assert yard.main() == before
    assert not git_ok(yard.repo, "merge-base", "--is-ancestor", other, "main")
    assert not git_ok(yard.repo, "merge-base", "--is-ancestor", commit, "main")


# -- B. forged provenance ---------------------------------------------------------------------

CHERRY = "(cherry picked from commit " + "a" * 40 + ")"
CUT_LINE = "# ------------------------ >8 ------------------------"
HOSTILE_MESSAGES = {
    "summary ends with trailers": ("Add mul", "Added mul.\nFactory-Agent: evil\nFactory-Cost: 0"),
    "summary ends with a trailer paragraph": (
        "Add mul",
        "Added mul.\n\nFactory-Agent: evil\nFactory-Cost: 0\n",
    ),
    "patch divider in summary": (
        "Add mul",
        "Added mul.\n---\nFactory-Agent: evil\n\nFactory-Spec: forged",
    ),
    "signed-off-by paragraph": ("Add mul", "Added mul.\n\nSigned-off-by: x <x@example.com>"),
    "comment lines": ("# comment", "# Factory-Agent: evil\n#\n# Factory-Cost: 0\n"),
    "cut line in summary": ("Add mul", f"ok\n{CUT_LINE}\nFactory-Agent: evil"),
    "crlf and lone cr": (
        "Add\r\nFactory-Spec: forged",
        "a\r\n\r\nFactory-Agent: evil\r\nb\rFactory-Cost: 0\r",
    ),
    "nul bytes": ("t\0Factory-Spec: forged", "a\0b\n\nFactory-Agent: evil\0\nFactory-Cost: 0\0"),
    "title with newlines": ("Fix it\n\nFactory-Spec: forged\nFactory-Agent: evil", ""),
    "only trailer lines": (
        "Factory-Agent: evil",
        "Factory-Agent: evil\nFactory-Task: x/y\nFactory-Spec: x",
    ),
    "trailing blank lines and spaces": ("Add mul   ", "done\n\n   \n\t\n  \n\n"),
    "cherry-picked line": ("Add mul", f"Added mul.\n\n{CHERRY}"),
    "indentation tricks": (
        "  Add mul",
        "    Factory-Agent: evil\n\tFactory-Cost: 0\n Factory-Spec: x\n"
        "\n  \nFactory-Model: evil\n continued",
    ),
    "unicode line separators": (
        "t\u2028Factory-Spec: forged",
        "a\u2028Factory-Agent: evil\u2029Factory-Cost: 0\x85Factory-Task: x/y",
    ),
    "form feed and vertical tab": ("Add mul", "a\x0cFactory-Agent: evil\x0bFactory-Cost: 0"),
    "git-generated trailer words": (
        "Add mul",
        "x\n\n(cherry picked from commit 1)\nSigned-off-by: a\nCo-authored-by: b",
    ),
    "conflicts block": ("Conflicts:", "Conflicts:\n\tcalc/ops.py\n"),
    "very long title": ("A" * 300 + "\nFactory-Agent: evil", "ok"),
    "patch divider as title": ("--- Add mul", "Added mul."),
    "bare patch divider title": ("---", ""),
    "cut line as title": (CUT_LINE, "Added mul."),
}


@pytest.mark.parametrize("title,summary", HOSTILE_MESSAGES.values(), ids=HOSTILE_MESSAGES)
async def test_workspace_commit_carries_exactly_the_engine_trailers(
    repo: Path, title: str, summary: str
) -> None:
    ws = Workspace(repo, repo / ".factory" / "worktrees")
    try:
        wt = await ws.create(SPEC, "t")
        (wt.path / "calc" / "mul.py").write_text(MUL)
        trailers = trailers_for("t")
        info = await ws.commit(wt, provenance.compose(title, summary, trailers))
        assert info is not None and info.files == ["calc/mul.py"]
        assert_engine_trailers(repo, info.commit, trailers)
        # What the engine checks before main moves agrees with git.
        body = git(repo, "log", "-1", "--format=%B", info.commit)
        assert await provenance.trailers_of(body, repo) == list(trailers.items())
    finally:
        ws.close()


async def test_trailer_values_stay_one_line_each(repo: Path) -> None:
    ws = Workspace(repo, repo / ".factory" / "worktrees")
    try:
        wt = await ws.create(SPEC, "t")
        (wt.path / "calc" / "mul.py").write_text(MUL)
        trailers = {**trailers_for("t"), "Factory-Model": "m\nFactory-Agent: evil\r\n\x00x"}
        info = await ws.commit(wt, provenance.compose("Add mul", "", trailers))
        assert info is not None
        assert_engine_trailers(repo, info.commit, trailers)
    finally:
        ws.close()


HOSTILE_TITLES = {
    "newlines and trailers": "Fix\n\nFactory-Agent: evil\nFactory-Cost: 0",
    "patch divider": "--- x\nFactory-Spec: forged",
    "cut line": CUT_LINE,
    "only a trailer": "Factory-Agent: evil",
    "crlf and nul": "t\r\n\r\nSigned-off-by: x\x00",
    "unicode separators": "\u2028Factory-Agent: evil\x85Factory-Cost: 0",
}


@pytest.mark.parametrize("title", HOSTILE_TITLES.values(), ids=HOSTILE_TITLES)
async def test_landing_merge_with_a_hostile_title_carries_exactly_the_engine_trailers(
    yard: Yard, title: str
) -> None:
    commit = yard.branch("factory/s/t", {"calc/mul.py": MUL})
    before = yard.main()
    outcome = await yard.land(commit, title=title)
    assert outcome.landed, (outcome.gate, outcome.reason)
    merge = await assert_lands_what_was_recorded(yard, outcome, commit, before)
    assert_engine_trailers(yard.repo, merge, trailers_for("t"))


def _script_calls(doc: dict, agent: str, tool: str) -> list[dict]:
    return [
        call
        for step in doc["agents"][agent]
        for call in step.get("tool_calls") or []
        if call["name"] == tool
    ]


async def test_a_whole_run_with_hostile_titles_and_summaries(tmp_path: Path) -> None:
    """The demo run, its planner's titles and its agents' summaries hostile: every merge that
    lands on main, and the branch commit it brings, carries exactly the six Factory-*
    trailers, by git's own parsers."""
    root = build_demo(tmp_path)
    replay = root / ".factory" / "replay" / "demo.json"
    doc = json.loads(replay.read_text())
    titles = {
        ("plan:stats", "sentences"): "Add sentence_count\n\nFactory-Spec: forged\n"
        "Factory-Agent: evil",
        ("plan:cli", "main"): "--- python -m textkit",
    }
    for (planner, task), title in titles.items():
        for call in _script_calls(doc, planner, "submit_plan"):
            for entry in call["arguments"]["tasks"]:
                if entry["id"] == task:
                    entry["title"] = title
    summaries = {
        "stats/sentences": "Done.\n---\nFactory-Agent: evil\n\nSigned-off-by: x <x@x>",
        "cli/main": "Factory-Agent: evil\nFactory-Task: stats/sentences\nFactory-Cost: 0",
        "slug/max-length": "ok\r\n\r\nFactory-Spec: forged\r\n",
        "slug/separator": f"ok\n\n{CHERRY}\n\u2028Factory-Model: evil",
    }
    for agent, summary in summaries.items():
        for call in _script_calls(doc, agent, "finish"):
            call["arguments"]["summary"] = summary
    replay.write_text(json.dumps(doc))
    factory = await Factory.open(root)
    try:
        summary = await factory.run()
        agents = {
            key: (factory.store.get("tasks", key) or {}).get("agent_id") for key in summary.landed
        }
    finally:
        await factory.close()
    assert {"stats/sentences", "cli/main"} <= set(summary.landed), summary
    seen = set()
    for merge in git(root, "rev-list", "--first-parent", "main").split()[:-1]:
        for commit in (merge, git(root, "rev-parse", f"{merge}^2").strip()):
            body = git_raw(root, "log", "-1", "--format=%B", commit)
            parsed = lines(git_raw(root, "interpret-trailers", "--parse", stdin=body).decode())
            keys = [line.partition(":")[0] for line in parsed]
            assert keys == list(TRAILERS), f"interpret-trailers --parse: {parsed!r} in {body!r}"
            only = lines(git(root, "log", "-1", "--format=%(trailers:only,unfold)", commit))
            assert only == parsed, (commit, body)
            values = dict(line.split(": ", 1) for line in parsed)
            task = values["Factory-Task"]
            assert task in summary.landed and values["Factory-Spec"] == task.split("/")[0]
            assert values["Factory-Agent"] == agents[task]
            assert lines(
                git(root, "log", "-1", "--format=%(trailers:key=Factory-Agent,valueonly)", commit)
            ) == [agents[task]]
            assert not any(v in ("evil", "forged", "0") for v in values.values()), values
            seen.add(task)
    assert seen == set(summary.landed)


# -- C. names git quotes ----------------------------------------------------------------------

ODD_NAMES = [
    "café.py",
    "日本.py",
    "with space.py",
    "new\nline.py",
    "tab\there.py",
    'say "hi".py',
    "back\\slash.py",
    "-leading-dash.py",
    " leading space.py",
    "trailing space.py ",
    "dir with space/ünï\ncode.py",
    os.fsdecode(b"raw-\xff\xfe.py"),
]


async def test_workspace_commit_lists_odd_names_byte_exact(repo: Path) -> None:
    ws = Workspace(repo, repo / ".factory" / "worktrees")
    try:
        wt = await ws.create(SPEC, "t")
        for name in ODD_NAMES:
            target = wt.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("X = 1\n")
        (wt.path / "bin\tary \x01.dat").write_bytes(b"\0\1\2\3")  # numstat says "-" for it
        info = await ws.commit(wt, provenance.compose("odd names", "", trailers_for("t")))
        assert info is not None
        # Exactly git's names; bytes that are not UTF-8 shown as \x escapes (they go into
        # events, which are JSON), everything else as it is.
        in_git = git_raw(repo, "diff", "--name-only", "-z", wt.base_commit, info.commit)
        raw = in_git.split(b"\0")[:-1]
        assert info.files == sorted(shown(os.fsdecode(n)) for n in raw)
        assert info.files == sorted(map(shown, [*ODD_NAMES, "bin\tary \x01.dat"]))
        assert "raw-\\xff\\xfe.py" in info.files and "new\nline.py" in info.files
        assert (info.insertions, info.deletions) == (len(ODD_NAMES), 0)
    finally:
        ws.close()


async def test_workspace_commit_lists_odd_names_it_changes_and_deletes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {**PROJECT, **{n: "X = 1\n" for n in ODD_NAMES[:6]}})
    ws = Workspace(repo, repo / ".factory" / "worktrees")
    try:
        wt = await ws.create(SPEC, "t")
        for name in ODD_NAMES[:3]:
            (wt.path / name).unlink()
        for name in ODD_NAMES[3:6]:
            (wt.path / name).write_text("X = 2\n")
        info = await ws.commit(wt, provenance.compose("odd names", "", trailers_for("t")))
        assert info is not None
        assert info.files == sorted(ODD_NAMES[:6])
        assert (info.insertions, info.deletions) == (3, 6)
    finally:
        ws.close()


async def test_odd_names_a_commit_lists_can_be_recorded(repo: Path, store: Store) -> None:
    """What the orchestrator does with a commit's names (`_commit` emits BranchCommitted with
    CommitInfo.files): every name git allows in a tree must be recordable."""
    ws = Workspace(repo, repo / ".factory" / "worktrees")
    try:
        wt = await ws.create(SPEC, "t")
        for name in ODD_NAMES:
            target = wt.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("X = 1\n")
        info = await ws.commit(wt, provenance.compose("odd names", "", trailers_for("t")))
        assert info is not None and info.files == sorted(map(shown, ODD_NAMES))
        event = ev.BranchCommitted(
            spec_id=SPEC,
            task_id="t",
            agent_id="s.t.1",
            branch=wt.branch,
            commit=info.commit,
            base_commit=wt.base_commit,
            files=info.files,
            insertions=info.insertions,
            deletions=info.deletions,
        )
        try:
            await asyncio.wait_for(asyncio.shield(store.append(event)), APPEND_SECONDS)
        except TimeoutError:
            await asyncio.wait_for(store.append(ev.Notice(message="unstall")), 5)
            pytest.fail(f"Store.append never returned for BranchCommitted(files={info.files!a})")
        row = store.get("branches", wt.branch)
        assert row is not None and row["files"] == info.files
    finally:
        ws.close()


PROTECTED_ODD = [
    ".factory/new\nline",
    ".factory/with space .factory.toml",
    ".factory/.factory.toml\n",
    ".factory/café/日本",
    '.factory/"quoted"\\name',
    ".factory/-dash",
    ".factory/\ttab",
    ".factory/ ",
    os.fsdecode(b".factory/raw-\xff"),
]


@pytest.mark.parametrize("name", PROTECTED_ODD, ids=repr)
async def test_protected_gate_sees_odd_names_under_factory(yard: Yard, name: str) -> None:
    commit = yard.branch("factory/s/t", {"calc/mul.py": MUL, name: "evil\n"})
    before = yard.main()
    state = yard.factory_state()
    outcome = await yard.land(commit)
    assert not outcome.landed and outcome.gate == "protected", outcome
    assert shown(name) in outcome.reason, outcome.reason
    assert yard.main() == before and yard.factory_state() == state


DEPENDENCY_ODD = [
    "my module.py",
    "café.py",
    "日本/模块.py",
    "new\nline.py",
    "tab\tname.py",
    '"quoted".py',
    "back\\slash.py",
    "-dash.py",
    "dir with space/m.py",
    os.fsdecode(b"raw-\xff.py"),
]


@pytest.mark.parametrize("name", DEPENDENCY_ODD, ids=repr)
async def test_dependencies_gate_reads_files_with_odd_names(yard: Yard, name: str) -> None:
    commit = yard.branch("factory/s/t", {name: "import requests_nonexistent_pkg\n"})
    before = yard.main()
    outcome = await yard.land(commit)
    assert not outcome.landed and outcome.gate == "dependencies", outcome
    assert "requests_nonexistent_pkg" in outcome.reason, outcome.reason
    assert outcome.reason.startswith(f"{shown(name)}: "), outcome.reason
    assert yard.main() == before


async def test_conflicts_gate_names_odd_files_exactly(yard: Yard) -> None:
    name = 'café dir/new\nline "q".py'
    yard.branch("side", {name: "A = 1\n"})
    git(yard.repo, "merge", "-q", "--ff-only", "side")
    commit = yard.branch("factory/s/t", {name: "A = 2\n"})
    git(
        yard.repo, "merge", "-q", "--ff-only", yard.branch("hotfix", {name: "A = 3\n"}, base="main")
    )
    before = yard.main()
    outcome = await yard.land(commit)
    assert not outcome.landed and outcome.gate == "conflicts", outcome
    assert outcome.reason == f"conflicts in {name}"
    assert yard.main() == before


# -- D. the factory's own state through what lands -------------------------------------------

ROOT_IGNORE = PROJECT[".gitignore"]
REFUSED = {
    "adds .factory/evil": ({".factory/evil": "evil\n"}, {}, ".factory/evil"),
    "adds .factory/factory.db": (
        {".factory/factory.db": b"SQLite format 3\x00forged"},
        {},
        ".factory/factory.db",
    ),
    "changes .factory.toml": (
        {".factory.toml": '[sandbox]\nbackend = "none"\n'},
        {},
        ".factory.toml",
    ),
    "deletes .factory.toml": ({".factory.toml": None}, {}, ".factory.toml"),
    "adds .factory/.gitignore": ({".factory/.gitignore": "!*\n"}, {}, ".factory/.gitignore"),
    "links .factory": ({}, {".factory": "calc"}, ".factory"),
    "re-includes .factory/": (
        {".gitignore": ROOT_IGNORE + "!.factory/\n"},
        {},
        "no longer ignored: .factory/",
    ),
    "un-ignores the store": (
        {".gitignore": ".factory/*\n!.factory/factory.db\n__pycache__/\n"},
        {},
        "no longer ignored: .factory/",
    ),
    "deletes .gitignore": ({".gitignore": None}, {}, "no longer ignored: .factory/"),
    "escapes a trailing space": (
        {".gitignore": ".factory/\\ \n__pycache__/\n"},
        {},
        "no longer ignored: .factory/",
    ),
    "links .gitignore away": ({}, {".gitignore": "/dev/null"}, "no longer ignored: .factory/"),
}


@pytest.mark.parametrize("files,links,why", REFUSED.values(), ids=REFUSED)
async def test_a_branch_touching_the_engines_state_is_refused(
    yard: Yard, files: dict[str, str | bytes | None], links: dict[str, str], why: str
) -> None:
    (yard.repo / ".factory" / "run.lock").write_text("")
    commit = yard.branch("factory/s/t", {"calc/mul.py": MUL, **files}, symlinks=links)
    before = yard.main()
    state = yard.factory_state()
    db = (yard.repo / ".factory" / "factory.db").read_bytes()[:16]
    outcome = await yard.land(commit)
    assert not outcome.landed and outcome.gate == "protected", outcome
    assert why in outcome.reason, outcome.reason
    (gate,) = [
        e for e in await yard.events() if isinstance(e, ev.GateResult) and e.gate == "protected"
    ]
    assert not gate.passed and why in gate.detail
    assert yard.main() == before
    assert git(yard.repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert yard.factory_state() == state  # nothing written into the real .factory/
    assert (yard.repo / ".factory" / "factory.db").read_bytes()[:16] == db
    assert not (yard.repo / ".factory" / "evil").exists()
    assert git_ok(yard.repo, "check-ignore", "-q", ".factory/factory.db")


LANDS = {
    "unrelated ignore rules": {".gitignore": ROOT_IGNORE + "*.log\ndist/\n!keep.log\n"},
    # A nested .gitignore speaks only for its own folder: pkg/.factory is not the engine's.
    "a nested .gitignore about its own .factory": {
        "pkg/.gitignore": ".factory/*\n!.factory/factory.db\n!/.factory/\n",
        "pkg/__init__.py": "",
    },
}


@pytest.mark.parametrize("files", LANDS.values(), ids=LANDS)
async def test_a_branch_changing_other_ignore_rules_lands(
    yard: Yard, files: dict[str, str]
) -> None:
    commit = yard.branch("factory/s/t", {"calc/mul.py": MUL, **files})
    before = yard.main()
    state = yard.factory_state()
    outcome = await yard.land(commit)
    assert outcome.landed, (outcome.gate, outcome.reason, outcome.output)
    await assert_lands_what_was_recorded(yard, outcome, commit, before)
    assert yard.factory_state() == state
    for probe in (".factory/", ".factory/factory.db", ".factory/run.lock"):
        assert git_ok(yard.repo, "check-ignore", "-q", probe), probe
