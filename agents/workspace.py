"""Git worktrees and branches for tasks, and the engine's commits on them.

Everything that changes the repository goes through git itself: a task's worktree is made by
`git worktree add -b` and taken away by `git worktree remove`, and when an agent finishes the
engine commits its worktree with `git add -A`, then `git commit` onto the task's branch. So
every ignore rule, attribute filter (LFS, eol), file mode and link of the user's repository is
handled exactly as git handles it, special files (FIFOs, sockets) are left out by git rather
than read, and the engine writes no git object, index or worktree record of its own. It only
reads: refs in-process (cheaper than a git process for a question asked on every commit), and
a worktree's records when it resumes one. Before git reads an agent's worktree, the worktree
is measured against the agent's quota, so a commit never reads more than the quota allows;
every git call has a time limit. Names come back NUL-separated (`-z`), never quoted.

Adds and removes of worktrees take turns (`add_lock`): git 2.39 still fails when they overlap.
An add reads every record under `.git/worktrees` and stops at one another add has half
written ("failed to read .git/worktrees/x/commondir"), and a remove that empties
`.git/worktrees` deletes the folder under an add about to make its record there ("could not
create directory of '.git/worktrees/y'").
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import git

from agents.errors import FactoryError
from agents.gitcmd import GIT_ENV, GIT_TIMEOUT, shown
from agents.ids import id_problem
from agents.sandbox.quota import DiskMeter

# How long one git step of a commit may take (staging a large worktree, say).
COMMIT_SECONDS = 300.0
# What `git worktree add` keeps in a record's `locked` file until it is done (in the C
# locale GIT_ENV sets): one still there was left by an add cut short.
ADDING = "initializing"
_counter = itertools.count()
_T = TypeVar("_T")


class _Turns(asyncio.Lock):
    """`add_lock`: one `git worktree add` or `remove` at a time. A turn ends with git
    forgetting the records of folders `remove` set aside during it (in the loop, before the
    lock passes on: nothing else may run meanwhile), so none outlives the turn."""

    def __init__(self, at_end: Callable[[], None]) -> None:
        super().__init__()
        self._at_end = at_end

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self._at_end()
        finally:
            self.release()


class WorkspaceError(FactoryError):
    """A worktree or branch problem that concerns one task and must not stop the others."""


@dataclass(frozen=True)
class Worktree:
    path: Path
    branch: str
    base_commit: str  # what the branch's changes are counted from
    # For a revision, the refused commit it starts from (a commit after it is the
    # revision's); else empty: the branch was cut at base_commit.
    since: str = ""


@dataclass(frozen=True)
class CommitInfo:
    commit: str
    files: list[str]
    insertions: int
    deletions: int


def branch_name(spec_id: str, task_id: str) -> str:
    return f"factory/{spec_id}/{task_id}"


class Workspace:
    """One target repository: its main branch, the task worktrees and their branches."""

    def __init__(self, root: Path, worktrees_dir: Path, main_branch: str = "main") -> None:
        self.root = root.resolve()
        self.worktrees_dir = worktrees_dir.resolve()
        self.main_branch = main_branch
        try:
            self.repo = git.Repo(self.root)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
            raise FactoryError(f"{root}: not a git repository (run `git init` first)") from exc
        self.common_dir = Path(self.repo.common_dir).resolve()
        # Worktrees whose folder `remove` took away during a turn: git forgets their records
        # when it ends.
        self._set_aside: set[Path] = set()
        # Held for every `git worktree add` and `remove` of this repository (the module's
        # docstring says why), by the landing's scratch worktrees too.
        self.add_lock: asyncio.Lock = _Turns(self._forget_set_aside)

    def close(self) -> None:
        self.repo.close()

    # -- refs ------------------------------------------------------------------------------

    def ref_sha(self, ref: str) -> str | None:
        """Resolve a ref by reading refs in-process (no subprocess on the hot path)."""
        try:
            return git.SymbolicReference.dereference_recursive(self.repo, ref)
        except (ValueError, OSError):
            return None

    def main_head(self) -> str:
        sha = self.ref_sha(f"refs/heads/{self.main_branch}")
        if sha is None:
            raise FactoryError(
                f"{self.root}: branch {self.main_branch!r} has no commits; commit something first"
            )
        return sha

    def branch_exists(self, branch: str) -> bool:
        return self.ref_sha(f"refs/heads/{branch}") is not None

    # -- worktrees -------------------------------------------------------------------------

    def worktree_path(self, spec_id: str, task_id: str) -> Path:
        return self.worktrees_dir / f"{spec_id}--{task_id}"

    async def create(self, spec_id: str, task_id: str, base: str | None = None) -> Worktree:
        """A fresh worktree on a fresh branch from main's head (or base).

        Made by `git worktree add -b`, so the checkout is git's own: smudge filters (LFS),
        eol conversion, file modes and links as the repository asks, and the branch, the
        record under `.git/worktrees` and the index written by git. Raises WorkspaceError,
        with git's reason, when git refuses.
        """
        for value, what in ((spec_id, "spec id"), (task_id, "task id")):
            problem = id_problem(value)
            if problem is not None:  # a store written before ids were checked, say
                raise WorkspaceError(f"cannot create a worktree for {what} {value!r}: "
                                     f"{problem}")
        path = self.worktree_path(spec_id, task_id)
        branch = branch_name(spec_id, task_id)
        base = base or self.main_head()
        async with self.add_lock:
            if path.exists() or path.is_symlink():
                raise WorkspaceError(f"cannot create worktree {path}: the path already exists")
            if self.branch_exists(branch):
                raise WorkspaceError(
                    f"cannot create branch {branch}: a branch of that name exists")
            done = await _to_the_end(_git_sync, "worktree", "add", "-q", "-b", branch,
                                     str(path), base, cwd=self.root)
            if done.returncode != 0:
                # git takes away a worktree it could not finish, but keeps the branch it
                # made for it: a retry must find neither.
                if self.ref_sha(f"refs/heads/{branch}") == base:
                    await _to_the_end(_git_sync, "branch", "-D", branch, cwd=self.root)
                raise WorkspaceError(f"cannot create worktree for {branch}: "
                                     f"{_said(done)}")
        return Worktree(path, branch, base)

    async def clean_view(self, name: str) -> Path:
        """A detached checkout of main's head under `.factory/views/`: its tracked files only,
        as git checks them out. What the planner (and any reader of the project) sees, never
        the person's working tree with its ignored files (a `.env`, say)."""
        path = self.worktrees_dir.parent / "views" / f"{name}-{os.getpid()}-{next(_counter)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        async with self.add_lock:
            done = await _to_the_end(_git_sync, "worktree", "add", "-q", "--detach",
                                     str(path), self.main_head(), cwd=self.root)
        if done.returncode != 0:
            raise WorkspaceError(f"cannot check out a view of {self.main_branch}: "
                                 f"{_said(done)}")
        return path

    def attach(self, spec_id: str, task_id: str, base: str, since: str = "") \
            -> Worktree | None:
        """The existing worktree of an interrupted task, if git finished making it and it
        survived on its branch (None: missing, or its `git worktree add` was cut short).

        Read from git's records (no process): the `.git` pointer, the record it names, which
        must point back and be on the task's branch, and no `initializing` mark left."""
        path = self.worktree_path(spec_id, task_id)
        branch = branch_name(spec_id, task_id)
        admin = self._admin_dir(path)
        if admin is None or _lock_reason(admin) == ADDING:
            return None
        try:
            points_back = Path((admin / "gitdir").read_text().strip()) == path / ".git"
            head = (admin / "HEAD").read_text().strip()
        except OSError:
            return None
        if points_back and head == f"ref: refs/heads/{branch}" and \
                (admin / "index").is_file() and self.branch_exists(branch):
            return Worktree(path, branch, base, since)
        return None

    async def reopen(self, spec_id: str, task_id: str, base: str, main: str) \
            -> tuple[Worktree, bool, list[str]]:
        """The task's branch checked out again, for a revision of refused work, with main
        merged in when main has moved past the branch (so the agent sees, and its tests
        meet, what the queue met).

        The merge is git's (`merge --no-commit`): a clean merge is staged, a conflicted one
        leaves git's markers and its unmerged index for the agent to resolve; the agent's
        commit then records the merge (git commits with MERGE_HEAD). Returns the worktree,
        whether main was merged in, and the paths that conflict. Raises WorkspaceError
        when git refuses."""
        path = self.worktree_path(spec_id, task_id)
        branch = branch_name(spec_id, task_id)
        head = self.ref_sha(f"refs/heads/{branch}")
        if head is None:
            raise WorkspaceError(f"cannot revise {branch}: the branch is gone")
        await self.remove_async(path)  # a reopen cut short: start it again
        async with self.add_lock:
            done = await _to_the_end(_git_sync, "worktree", "add", "-q", str(path), branch,
                                     cwd=self.root)
        if done.returncode != 0:
            raise WorkspaceError(f"cannot check out {branch} again: {_said(done)}")
        contained = await asyncio.to_thread(_git_sync, "merge-base", "--is-ancestor", main,
                                            head, cwd=self.root)
        if contained.returncode == 0:
            return Worktree(path, branch, base, head), False, []
        merged = await asyncio.to_thread(
            _git_sync, "-c", "merge.conflictStyle=merge", "merge", "--no-commit", "--no-ff",
            "-q", main, cwd=path, timeout=COMMIT_SECONDS)
        conflicts = await self._unmerged(path)
        if merged.returncode != 0 and not conflicts:
            await asyncio.to_thread(_git_sync, "merge", "--abort", cwd=path)
            raise WorkspaceError(f"cannot merge {self.main_branch} into {branch}: "
                                 f"{_said(merged)}")
        return Worktree(path, branch, main, head), True, conflicts


    def _admin_dir(self, path: Path) -> Path | None:
        """The record a worktree's `.git` pointer names (None: no pointer)."""
        try:
            text = (path / ".git").read_text()
        except (OSError, UnicodeDecodeError):
            return None
        if not text.startswith("gitdir:"):
            return None
        return Path(text.split(":", 1)[1].strip())

    def remove(self, path: Path) -> None:
        """Take a worktree away with git's record of it: `git worktree remove --force`.

        Raises WorkspaceError if a person locked it (`git worktree lock`). Callers do not
        await this, so it cannot wait for its turn: while an add holds `add_lock` (git must
        not meet a record half deleted), only the folder goes at once, in one rename (git
        then sees a worktree whose folder is missing, a state it handles), and git forgets
        the record when that turn ends. A folder git will not take away (half gone: no
        `.git` pointer, or one that does not point back) is deleted, then git forgets
        whatever record it had. What cannot be deleted at all (a folder an agent made
        unreadable to the engine) is left for the next run's sweep. `remove_async` does the
        same without holding up the event loop while git works.
        """
        if self.add_lock.locked():
            self._set_aside_now(path)
        else:
            self._remove_now(path)

    async def remove_async(self, path: Path) -> None:
        """`remove` in its turn, git running in a thread (deleting many files takes a while)."""
        async with self.add_lock:
            await _to_the_end(self._remove_now, path)

    def _remove_now(self, path: Path) -> None:
        said = self._git_remove(path)
        if said is None:
            return
        if "locked working tree" in said:
            raise WorkspaceError(f"cannot remove worktree {path}: {said}")
        if not (path.exists() or path.is_symlink()):
            return  # git accepts a missing folder: it had no record of this one either
        if not self._disposable(path):
            raise WorkspaceError(f"cannot remove worktree {path}: {said}")
        # Not a worktree git takes away as it is: the folder goes first, then git, which
        # accepts a missing folder, forgets its record ("not a working tree": it had none).
        if path.is_symlink():
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            self._git_remove(path)

    def _git_remove(self, path: Path) -> str | None:
        """Run `git worktree remove --force`; git's message when it refused, else None."""
        done = _git_sync("worktree", "remove", "--force", str(path), cwd=self.root)
        if done.returncode != 0 and f"lock reason: {ADDING}\n".encode() in done.stderr:
            # git's own mark of an add that never finished (a crash), not a person's lock.
            done = _git_sync("worktree", "remove", "--force", "--force", str(path),
                             cwd=self.root)
        return None if done.returncode == 0 else _said(done)

    def _set_aside_now(self, path: Path) -> None:
        """The folder out of the way in one rename (a dot-name no task has, in the same
        folder: swept as an orphan if a crash leaves it), its record left for git."""
        if not self._disposable(path):
            raise WorkspaceError(f"cannot remove {path}: not a folder of the engine's")
        admin = self._admin_dir(path)
        reason = _lock_reason(admin) if admin is not None else None
        if reason is not None and reason != ADDING:
            raise WorkspaceError(f"cannot remove worktree {path}: it is locked ({reason})")
        aside = path.with_name(f".{path.name}.removed-{os.getpid()}-{next(_counter)}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            pass  # already gone: only the record is left
        else:
            if aside.is_symlink():
                aside.unlink()
            else:
                shutil.rmtree(aside, ignore_errors=True)
        self._set_aside.add(path)

    def _disposable(self, path: Path) -> bool:
        """Whether the engine may delete path itself, when git will not: only what it made in
        its own folder (worktrees, views, landing scratch), never the repository itself."""
        return path.parent.resolve().is_relative_to(self.worktrees_dir.parent)

    def _forget_set_aside(self) -> None:
        """git forgets the records of folders `remove` set aside (at the end of the turn
        they were set aside in, before the next add or remove starts)."""
        for path in list(self._set_aside):
            self._set_aside.discard(path)
            self._git_remove(path)

    async def discard(self, spec_id: str, task_id: str) -> None:
        """Take a task's worktree and branch away so that a retry starts clean, whatever an
        interrupted attempt left: a worktree, a record whose folder is gone, an add cut
        short."""
        await self.remove_async(self.worktree_path(spec_id, task_id))
        branch = branch_name(spec_id, task_id)
        if self.branch_exists(branch):
            done = await asyncio.to_thread(_git_sync, "branch", "-D", branch, cwd=self.root)
            if done.returncode != 0:
                raise WorkspaceError(f"cannot delete branch {branch}: {_said(done)}")

    def orphans(self, active: set[Path]) -> list[Path]:
        """Worktree folders that no running task owns (left by a crash or by hand)."""
        if not self.worktrees_dir.is_dir():
            return []
        return sorted(
            p for p in self.worktrees_dir.iterdir() if p.is_dir() and p.resolve() not in active
        )

    # -- commits ---------------------------------------------------------------------------

    async def changes(self, base: str, head: str) -> tuple[list[str], int, int]:
        """(paths, insertions, deletions) between two commits, as git counts them."""
        done = await asyncio.to_thread(_git_sync, "diff", "--numstat", "-z", "--no-renames",
                                       base, head, cwd=self.root)
        if done.returncode != 0:
            raise WorkspaceError(f"cannot compare {base} with {head}: {_said(done)}")
        return _numstat(done.stdout)

    async def commit(self, wt: Worktree, message: str,
                     meter: DiskMeter | None = None) -> CommitInfo | None:
        """Commit everything the agent changed onto its branch; None when nothing changed.

        `git add -A`, then `git commit`; what changed is counted by git from the index
        `git add` wrote (the very tree the commit records), at the same time as the commit,
        so counting costs no extra wait. Raises WorkspaceError when the worktree is over its
        quota or git refuses (a tracked file replaced by a FIFO, say), with git's reason.
        """
        head = self.ref_sha(f"refs/heads/{wt.branch}")
        if head is not None and head != (wt.since or wt.base_commit):
            # Committed already, and the record of it was lost to a crash: reuse it.
            files, insertions, deletions = await self.changes(wt.base_commit, head)
            return CommitInfo(head, files, insertions, deletions)
        if meter is not None:
            over = await meter.measure_async()
            if over is not None:
                raise WorkspaceError(f"not committed: {over.message}")
        # The paths a merge the engine started left conflicted (the agent cannot stage, so
        # they are unmerged until git add below).
        conflicted = await self._unmerged(wt.path) if wt.since else []
        if wt.since and not conflicted and await self._untouched(wt.path):
            return None  # the revision changed nothing (main merged in is not a change)
        added = await asyncio.to_thread(_git_sync, "add", "-A", cwd=wt.path,
                                        timeout=COMMIT_SECONDS)
        if added.returncode != 0:
            raise WorkspaceError(f"git refused the commit: {_said(added)}")
        if conflicted:
            await self._no_markers_left(wt, conflicted)
        # The message exactly as composed (no clean-up of '#' lines), never signed (a prompt
        # nobody answers), no hook, no automatic gc in the middle of a run.
        committed, counted = await asyncio.gather(
            asyncio.to_thread(_git_sync, "-c", "commit.gpgSign=false", "-c", "gc.auto=0",
                              "commit", "-q", "--no-verify", "--cleanup=verbatim", "-F", "-",
                              cwd=wt.path, stdin=message.encode(), timeout=COMMIT_SECONDS),
            # Reads the index only (`--cached`: no refresh, nothing written), so it can run
            # beside the commit.
            asyncio.to_thread(_git_sync, "diff-index", "--cached", "--numstat", "-z",
                              "--no-renames", wt.base_commit, cwd=wt.path,
                              timeout=COMMIT_SECONDS))
        if committed.returncode != 0:
            both = committed.stdout + committed.stderr
            if b"nothing to commit" in both or b"nothing added to commit" in both:
                return None
            raise WorkspaceError(f"git refused the commit: {_said(committed)}")
        sha = self.ref_sha(f"refs/heads/{wt.branch}")
        if sha is None or sha == (wt.since or wt.base_commit):
            raise WorkspaceError(f"git committed, but {wt.branch} did not move")
        if counted.returncode != 0:
            files, insertions, deletions = await self.changes(wt.base_commit, sha)
        else:
            files, insertions, deletions = _numstat(counted.stdout)
        return CommitInfo(sha, files, insertions, deletions)


    async def _untouched(self, path: Path) -> bool:
        """Whether the worktree holds nothing beyond what the index has (what a revision
        found: the refused commit, and main's merge staged by git)."""
        done = await asyncio.to_thread(_git_sync, "status", "--porcelain=v1", "-z",
                                       "--untracked-files=all", cwd=path)
        if done.returncode != 0:
            return False  # let add and commit say what is wrong
        # Each record: XY, a space, the path; Y is the worktree's side ("?" untracked).
        return all(record[1:2] == b" " for record in done.stdout.split(b"\0") if record)

    async def _unmerged(self, path: Path) -> list[str]:
        done = await asyncio.to_thread(_git_sync, "diff", "--name-only", "-z",
                                       "--diff-filter=U", cwd=path)
        return [p.decode(errors="replace") for p in done.stdout.split(b"\0") if p]

    async def _no_markers_left(self, wt: Worktree, conflicted: list[str]) -> None:
        """A conflicted merge must not be committed with git's markers still in it: git's
        own check (`diff --check`, every whitespace rule off, so only leftover markers
        count) over the paths that conflicted."""
        done = await asyncio.to_thread(
            _git_sync, "-c", "core.whitespace=-blank-at-eol,-blank-at-eof,-space-before-tab,"
            "-indent-with-non-tab,-tab-in-indent,-cr-at-eol", "diff", "--cached", "--check",
            wt.since, "--", *conflicted, cwd=wt.path, timeout=COMMIT_SECONDS)
        left = [line for line in done.stdout.decode(errors="replace").splitlines()
                if "conflict marker" in line]
        if left:
            raise WorkspaceError("not committed: conflict markers left in "
                                 + ", ".join(line.split(": ")[0] for line in left[:5]))


def _numstat(out: bytes) -> tuple[list[str], int, int]:
    """(paths, insertions, deletions) from git's `--numstat -z` output (no renames)."""
    files: list[str] = []
    insertions = deletions = 0
    for record in out.split(b"\0"):
        if not record:
            continue
        added, removed, path = record.split(b"\t", 2)
        files.append(shown(os.fsdecode(path)))  # recorded in events: JSON-safe
        insertions += int(added) if added.isdigit() else 0  # "-" for binary files
        deletions += int(removed) if removed.isdigit() else 0
    return sorted(files), insertions, deletions


def _lock_reason(admin: Path) -> str | None:
    """What a worktree record's `locked` file says (None: not locked)."""
    try:
        return (admin / "locked").read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError:
        return ""


def _git_sync(*args: str, cwd: Path, stdin: bytes | None = None,
              timeout: float = GIT_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """A git command run to its end, blocking: in the loop for `remove` (which its callers do
    not await), in a thread for the rest (`asyncio.to_thread`: a little cheaper than an
    asyncio subprocess). A git that cannot start or overruns its time limit is a failure,
    like any other, with a message. Output stays bytes (`-z` paths are not always UTF-8)."""
    try:
        return subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV},
                              input=stdin, stdin=None if stdin is not None else
                              subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, -9, b"", f"killed after {timeout:g} s".encode())
    except OSError as exc:
        return subprocess.CompletedProcess(args, 127, b"", f"cannot run git: {exc}".encode())


def _said(done: subprocess.CompletedProcess[bytes]) -> str:
    """What git said (its message for a failure), as text."""
    for stream in (done.stderr, done.stdout):
        text = stream.decode("utf-8", "replace").strip()
        if text:
            return text
    return f"git exited with {done.returncode}"


async def _to_the_end(fn: Callable[..., _T], *args: object, **kwargs: object) -> _T:
    """fn in a thread, waited for to its end even when the caller is cancelled meanwhile: a
    git worktree command must be done before its turn passes to the next."""
    job = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        await asyncio.wait([job])
        raise
