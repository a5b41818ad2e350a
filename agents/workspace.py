"""Git worktrees and branches for tasks, and the engine's commits on them.

Agents never commit: when an agent finishes, the engine commits its worktree through git
itself (`git add -A`, then `git commit` onto the task's branch), so every ignore rule,
attribute filter, file mode and link is handled exactly as git handles it, and special
files (FIFOs, sockets) are left out by git rather than read. Before git reads anything,
the worktree is measured against the agent's quota, so a commit never reads more than the
quota allows; every git call has a time limit. Names come back NUL-separated (`-z`), never
quoted.

Worktrees are still laid out in-process (`create`: the files of a trusted commit, and the
records `git worktree add` would write).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import git
from git.index.fun import write_cache
from git.index.typ import IndexEntry
from git.objects.fun import tree_entries_from_data

from agents.errors import FactoryError
from agents.gitcmd import GitError, git_bytes, shown
from agents.gitcmd import git as run_git
from agents.ids import id_problem
from agents.sandbox.quota import DiskMeter

TREE_MODE = 0o040000
_STAT_TIME = struct.Struct(">LL")
# How long one git step of a commit may take (staging a large worktree, say).
COMMIT_SECONDS = 300.0
_counter = itertools.count()


class WorkspaceError(FactoryError):
    """A worktree or branch problem that concerns one task and must not stop the others."""


@dataclass(frozen=True)
class Worktree:
    path: Path
    branch: str
    base_commit: str


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
        # Git objects never change, so what was read once can be kept.
        self._object_cache: dict[bytes, bytes] = {}
        self._tree_cache: dict[bytes, list[tuple[bytes, int, str]]] = {}
        # Concurrent `git worktree add`s read each other's half-written records and fail.
        self.add_lock = asyncio.Lock()

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

        Made in-process, exactly as `git worktree add -b` lays it out (the branch ref, the
        record under .git/worktrees, the `.git` pointer, the files and an index with their
        stat data): it saves a git process and most of the per-agent fixed cost.
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
            if path.exists():
                raise WorkspaceError(f"cannot create worktree {path}: the path already exists")
            if self.branch_exists(branch):
                raise WorkspaceError(
                    f"cannot create branch {branch}: a branch of that name exists")
            admin = self.common_dir / "worktrees" / path.name
            if admin.exists():
                raise WorkspaceError(f"cannot create worktree {path}: git already records a "
                                     f"worktree named {path.name} (run `git worktree prune`)")
            try:
                self._add_worktree(path, admin, branch, base)
            except (OSError, ValueError) as exc:
                shutil.rmtree(path, ignore_errors=True)
                raise WorkspaceError(f"cannot create worktree for {branch}: {exc}") from exc
        return Worktree(path, branch, base)

    def _add_worktree(self, path: Path, admin: Path, branch: str, base: str) -> None:
        self._set_ref(f"refs/heads/{branch}", base, None)
        path.mkdir(parents=True)
        entries = []
        commit = self._read(bytes.fromhex(base))
        tree = bytes.fromhex(commit.split(b"\n", 1)[0].split(b" ")[1].decode())
        for rel, binsha, mode in self._tree_files(tree, ""):
            target = path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            data = self._read(binsha)
            if mode == 0o120000:
                os.symlink(data.decode(), target)
            else:
                target.write_bytes(data)
                if mode == 0o100755:
                    os.chmod(target, 0o755)
            st = os.lstat(target)
            entries.append(IndexEntry((
                mode, binsha, 0, rel,
                _STAT_TIME.pack(int(st.st_ctime), st.st_ctime_ns % 1_000_000_000),
                _STAT_TIME.pack(int(st.st_mtime), st.st_mtime_ns % 1_000_000_000),
                st.st_dev & 0xFFFFFFFF, st.st_ino & 0xFFFFFFFF, st.st_uid, st.st_gid,
                st.st_size & 0xFFFFFFFF,
            )))
        # The record is assembled aside and renamed into .git/worktrees in one step, so a
        # git process listing worktrees never meets it half written.
        staging = self.common_dir / "factory-trash" / f"new-{path.name}-{next(_counter)}"
        staging.mkdir(parents=True)
        (staging / "HEAD").write_text(f"ref: refs/heads/{branch}\n")
        (staging / "commondir").write_text("../..\n")
        (staging / "gitdir").write_text(f"{path}/.git\n")
        entries.sort(key=lambda e: e.path.encode())
        with open(staging / "index", "wb") as stream:
            write_cache(entries, stream)
        admin.parent.mkdir(exist_ok=True)
        os.rename(staging, admin)
        pointer = path / ".git.factory-tmp"
        pointer.write_text(f"gitdir: {admin}\n")
        os.replace(pointer, path / ".git")

    def _tree_files(self, tree: bytes, prefix: str) -> list[tuple[str, bytes, int]]:
        out: list[tuple[str, bytes, int]] = []
        for binsha, mode, name in self._entries(tree):
            rel = f"{prefix}{name}"
            if mode == TREE_MODE:
                out.extend(self._tree_files(binsha, rel + "/"))
            elif mode != 0o160000:  # submodules are not checked out
                out.append((rel, binsha, mode))
        return out

    async def clean_view(self, name: str) -> Path:
        """A detached checkout of main's head under `.factory/views/`: its tracked files only,
        as git checks them out. What the planner (and any reader of the project) sees, never
        the person's working tree with its ignored files (a `.env`, say)."""
        path = self.worktrees_dir.parent / "views" / f"{name}-{os.getpid()}-{next(_counter)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        async with self.add_lock:
            await run_git("worktree", "add", "-q", "--detach", str(path), self.main_head(),
                          cwd=self.root)
        return path

    def attach(self, spec_id: str, task_id: str, base: str) -> Worktree | None:
        """The existing worktree of an interrupted task, if it survived."""
        path = self.worktree_path(spec_id, task_id)
        admin = self._admin_dir(path)
        if admin is not None and (admin / "index").is_file() and \
                self.branch_exists(branch_name(spec_id, task_id)):
            return Worktree(path, branch_name(spec_id, task_id), base)
        return None  # missing, or its creation was cut short

    def _admin_dir(self, path: Path) -> Path | None:
        try:
            text = (path / ".git").read_text()
        except OSError:
            return None
        if not text.startswith("gitdir:"):
            return None
        return Path(text.split(":", 1)[1].strip())

    def remove(self, path: Path) -> None:
        """Delete a worktree and git's record of it (what `git worktree remove` does).

        git reads every `.git/worktrees/*` entry when it adds a worktree, so the record is
        first moved out of that folder in one rename: a concurrent `git worktree add` sees
        it whole or not at all, never half deleted.
        """
        admin = self._admin_dir(path)
        if admin is not None and (admin / "locked").exists():
            raise WorkspaceError(f"worktree {path} is locked ({(admin / 'locked').read_text()})")
        trash = self.common_dir / "factory-trash"
        trash.mkdir(exist_ok=True)
        if admin is not None and admin.parent == self.common_dir / "worktrees":
            moved = trash / f"{admin.name}-{os.getpid()}-{next(_counter)}"
            try:
                os.rename(admin, moved)
            except FileNotFoundError:
                moved = None  # type: ignore[assignment]
            if moved is not None:
                shutil.rmtree(moved, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)

    async def discard(self, spec_id: str, task_id: str) -> None:
        """Remove a task's worktree and branch so that a retry starts clean."""
        path = self.worktree_path(spec_id, task_id)
        if path.exists():
            self.remove(path)
        async with self.add_lock:  # prune must not judge a worktree that is being added
            await run_git("worktree", "prune", cwd=self.root)
        branch = branch_name(spec_id, task_id)
        if self.branch_exists(branch):
            await run_git("branch", "-D", branch, cwd=self.root)

    def orphans(self, active: set[Path]) -> list[Path]:
        """Worktree folders that no running task owns (left by a crash or by hand)."""
        if not self.worktrees_dir.is_dir():
            return []
        return sorted(
            p for p in self.worktrees_dir.iterdir() if p.is_dir() and p.resolve() not in active
        )

    # -- commits ---------------------------------------------------------------------------

    def _read(self, binsha: bytes) -> bytes:
        found = self._object_cache.get(binsha)
        if found is None:
            found = self.repo.odb.stream(binsha).read()
            if len(self._object_cache) > 20_000:
                self._object_cache.clear()
            self._object_cache[binsha] = found
        return found

    def _entries(self, tree: bytes) -> list[tuple[bytes, int, str]]:
        """A tree's entries, parsed (and their names checked) once per tree: every agent of
        a run starts from the same base, and trees never change."""
        found = self._tree_cache.get(tree)
        if found is None:
            found = tree_entries_from_data(self._read(tree))
            if len(self._tree_cache) > 5_000:
                self._tree_cache.clear()
            self._tree_cache[tree] = found
        return found

    async def changes(self, base: str, head: str) -> tuple[list[str], int, int]:
        """(paths, insertions, deletions) between two commits, as git counts them."""
        out = await git_bytes("diff", "--numstat", "-z", "--no-renames", base, head,
                              cwd=self.root)
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

    async def commit(self, wt: Worktree, message: str,
                     meter: DiskMeter | None = None) -> CommitInfo | None:
        """Commit everything the agent changed onto its branch; None when nothing changed.

        Raises WorkspaceError when the worktree is over its quota or git refuses (a tracked
        file replaced by a FIFO, say), with git's reason.
        """
        head = self.ref_sha(f"refs/heads/{wt.branch}")
        if head is not None and head != wt.base_commit:
            # Committed already, and the record of it was lost to a crash: reuse it.
            files, insertions, deletions = await self.changes(wt.base_commit, head)
            return CommitInfo(head, files, insertions, deletions)
        if meter is not None:
            over = await meter.measure_async()
            if over is not None:
                raise WorkspaceError(f"not committed: {over.message}")
        try:
            await run_git("add", "-A", cwd=wt.path, timeout=COMMIT_SECONDS)
            # The message exactly as composed (no clean-up of '#' lines), never signed (a
            # prompt nobody answers), no hook, no automatic gc in the middle of a run.
            await run_git("-c", "commit.gpgSign=false", "-c", "gc.auto=0", "commit", "-q",
                          "--no-verify", "--cleanup=verbatim", "-F", "-", cwd=wt.path,
                          stdin=message.encode(), timeout=COMMIT_SECONDS)
        except GitError as exc:
            if "nothing to commit" in exc.stdout + exc.stderr or \
                    "nothing added to commit" in exc.stdout + exc.stderr:
                return None
            raise WorkspaceError(f"git refused the commit: {exc.stderr.strip() or exc}") \
                from None
        sha = self.ref_sha(f"refs/heads/{wt.branch}")
        if sha is None or sha == wt.base_commit:
            raise WorkspaceError(f"git committed, but {wt.branch} did not move")
        files, insertions, deletions = await self.changes(wt.base_commit, sha)
        return CommitInfo(sha, files, insertions, deletions)

    def _set_ref(self, ref: str, new: str, old: str | None) -> None:
        """Move a loose ref from old (None: must not exist) to new, under git's lock-file
        protocol."""
        path = self.common_dir / ref
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.with_name(path.name + ".lock")
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise WorkspaceError(f"{ref} is locked by another git process ({lock})") from None
        try:
            current = self.ref_sha(ref)
            if current != old:
                raise WorkspaceError(f"{ref} moved to {current} while the agent worked")
            os.write(fd, f"{new}\n".encode())
        except BaseException:
            os.close(fd)
            os.unlink(lock)
            raise
        os.close(fd)
        os.replace(lock, path)
