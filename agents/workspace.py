"""Git worktrees and branches for tasks, and the engine's commits on them.

Agents never commit: when an agent finishes, the engine writes the blobs, trees and commit
object in-process (gitpython's object database) from `git status`, and moves the task's
branch. That keeps the per-agent fixed cost (worktree, commit, clean-up) close to a bare
`git worktree add`.
"""

from __future__ import annotations

import difflib
import os
import shutil
import stat
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import git
from git.objects.fun import tree_entries_from_data, tree_to_stream
from gitdb import IStream

from agents.errors import FactoryError
from agents.gitcmd import GitError
from agents.gitcmd import git as run_git

TREE_MODE = 0o040000
AUTHOR = "Factory <factory@localhost>"


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


def trailer_block(trailers: dict[str, str]) -> str:
    return "\n".join(f"{key}: {value}" for key, value in trailers.items())


def _tree_sort_key(entry: tuple[bytes, int, str]) -> bytes:
    name = entry[2].encode()
    return name + b"/" if entry[1] == TREE_MODE else name


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
        """A fresh worktree on a fresh branch from main's head (or base)."""
        path = self.worktree_path(spec_id, task_id)
        branch = branch_name(spec_id, task_id)
        base = base or self.main_head()
        if path.exists():
            raise WorkspaceError(f"cannot create worktree {path}: the path already exists")
        if self.branch_exists(branch):
            raise WorkspaceError(f"cannot create branch {branch}: a branch of that name exists")
        self.worktrees_dir.mkdir(parents=True, exist_ok=True)
        try:
            await run_git("worktree", "add", "-q", "-b", branch, str(path), base, cwd=self.root)
        except GitError as exc:
            raise WorkspaceError(f"cannot create worktree for {branch}: {exc.stderr.strip()}") \
                from exc
        return Worktree(path, branch, base)

    def attach(self, spec_id: str, task_id: str, base: str) -> Worktree | None:
        """The existing worktree of an interrupted task, if it survived."""
        path = self.worktree_path(spec_id, task_id)
        if (path / ".git").is_file():
            return Worktree(path, branch_name(spec_id, task_id), base)
        return None

    def _admin_dir(self, path: Path) -> Path | None:
        try:
            text = (path / ".git").read_text()
        except OSError:
            return None
        if not text.startswith("gitdir:"):
            return None
        return Path(text.split(":", 1)[1].strip())

    def remove(self, path: Path) -> None:
        """Delete a worktree and git's record of it (what `git worktree remove` does)."""
        admin = self._admin_dir(path)
        if admin is not None and (admin / "locked").exists():
            raise WorkspaceError(f"worktree {path} is locked ({(admin / 'locked').read_text()})")
        shutil.rmtree(path, ignore_errors=True)
        if admin is not None and admin.parent == self.common_dir / "worktrees":
            shutil.rmtree(admin, ignore_errors=True)

    async def discard(self, spec_id: str, task_id: str) -> None:
        """Remove a task's worktree and branch so that a retry starts clean."""
        path = self.worktree_path(spec_id, task_id)
        if path.exists():
            self.remove(path)
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

    async def changed_paths(self, path: Path) -> tuple[list[str], list[str]]:
        """(written, deleted) paths of a worktree relative to its HEAD, untracked included."""
        out = await run_git(
            "status", "--porcelain", "-z", "--untracked-files=all", "--no-renames",
            "--ignore-submodules", cwd=path,
        )
        written, deleted = [], []
        for entry in out.split("\0"):
            if len(entry) < 4:
                continue
            code, name = entry[:2], entry[3:]
            (deleted if "D" in code else written).append(name)
        return written, deleted

    def _store(self, kind: bytes, data: bytes) -> bytes:
        return self.repo.odb.store(IStream(kind, len(data), BytesIO(data))).binsha

    def _read(self, binsha: bytes) -> bytes:
        return self.repo.odb.stream(binsha).read()

    def _rewrite_tree(self, tree: bytes | None, changes: dict[str, tuple[bytes, int] | None]) \
            -> bytes | None:
        entries: dict[str, tuple[bytes, int]] = {}
        if tree is not None:
            for binsha, mode, name in tree_entries_from_data(self._read(tree)):
                entries[name] = (binsha, mode)
        nested: dict[str, dict[str, tuple[bytes, int] | None]] = {}
        for rel, change in changes.items():
            head, sep, rest = rel.partition("/")
            if sep:
                nested.setdefault(head, {})[rest] = change
            elif change is None:
                entries.pop(head, None)
            else:
                entries[head] = change
        for name, sub in nested.items():
            old = entries.get(name)
            new = self._rewrite_tree(old[0] if old and old[1] == TREE_MODE else None, sub)
            if new is None:
                entries.pop(name, None)
            else:
                entries[name] = (new, TREE_MODE)
        if not entries:
            return None
        items = sorted(((s, m, n) for n, (s, m) in entries.items()), key=_tree_sort_key)
        buf = BytesIO()
        tree_to_stream(items, buf.write)
        return self._store(b"tree", buf.getvalue())

    def _blob_for(self, file: Path) -> tuple[bytes, int]:
        st = file.lstat()
        if stat.S_ISLNK(st.st_mode):
            return self._store(b"blob", os.readlink(file).encode()), 0o120000
        mode = 0o100755 if st.st_mode & stat.S_IXUSR else 0o100644
        return self._store(b"blob", file.read_bytes()), mode

    def _old_text(self, tree: bytes, rel: str) -> list[str]:
        current: bytes | None = tree
        parts = rel.split("/")
        for i, part in enumerate(parts):
            if current is None:
                return []
            found = None
            for binsha, mode, name in tree_entries_from_data(self._read(current)):
                if name == part:
                    found = (binsha, mode)
                    break
            if found is None:
                return []
            if i == len(parts) - 1:
                return self._read(found[0]).decode("utf-8", "replace").splitlines()
            current = found[0] if found[1] == TREE_MODE else None
        return []

    async def commit(self, wt: Worktree, message: str) -> CommitInfo | None:
        """Commit everything the agent changed onto its branch; None when nothing changed."""
        head = self.ref_sha(f"refs/heads/{wt.branch}")
        if head is not None and head != wt.base_commit:
            # Committed already, and the record of it was lost to a crash: reuse it.
            files = (await run_git("diff", "--name-only", wt.base_commit, head,
                                   cwd=self.root)).split()
            return CommitInfo(head, files, 0, 0)
        written, deleted = await self.changed_paths(wt.path)
        if not written and not deleted:
            return None
        base_commit = self.repo.odb.stream(bytes.fromhex(wt.base_commit)).read()
        base_tree = bytes.fromhex(base_commit.split(b"\n", 1)[0].split(b" ")[1].decode())
        changes: dict[str, tuple[bytes, int] | None] = dict.fromkeys(deleted)
        insertions = deletions = 0
        for rel in written:
            file = wt.path / rel
            if not file.exists() and not file.is_symlink():
                changes[rel] = None
                continue
            changes[rel] = self._blob_for(file)
        for rel, change in changes.items():
            old = self._old_text(base_tree, rel)
            new = (wt.path / rel).read_text("utf-8", "replace").splitlines() \
                if change is not None and change[1] != 0o120000 else []
            for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new).get_opcodes():
                if tag != "equal":
                    deletions += i2 - i1
                    insertions += j2 - j1
        tree = self._rewrite_tree(base_tree, changes)
        if tree is None:
            tree = self._store(b"tree", b"")
        now = int(time.time())
        body = (
            f"tree {tree.hex()}\nparent {wt.base_commit}\n"
            f"author {AUTHOR} {now} +0000\ncommitter {AUTHOR} {now} +0000\n\n{message}"
        )
        if not body.endswith("\n"):
            body += "\n"
        sha = self._store(b"commit", body.encode()).hex()
        await run_git(
            "update-ref", "-m", "factory: commit task", f"refs/heads/{wt.branch}", sha,
            wt.base_commit, cwd=self.root,
        )
        return CommitInfo(sha, sorted(changes), insertions, deletions)
