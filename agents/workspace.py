"""Git worktrees and branches for tasks, and the engine's commits on them.

Agents never commit: when an agent finishes, the engine writes the blobs, trees and commit
object in-process (gitpython's object database) from `git status`, and moves the task's
branch. That keeps the per-agent fixed cost (worktree, commit, clean-up) close to a bare
`git worktree add`.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import itertools
import os
import shutil
import stat
import struct
import time
import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import git
from git.index import IndexFile
from git.index.fun import write_cache
from git.index.typ import IndexEntry
from git.objects.fun import tree_entries_from_data, tree_to_stream

from agents.errors import FactoryError
from agents.gitcmd import git as run_git

TREE_MODE = 0o040000
_STAT_TIME = struct.Struct(">LL")
_counter = itertools.count()
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


def _mode_of(st_mode: int) -> int:
    if stat.S_ISLNK(st_mode):
        return 0o120000
    return 0o100755 if st_mode & stat.S_IXUSR else 0o100644


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
        # Objects are written in-process (gitpython's odb shells out to `git hash-object`).
        self._objects = self.common_dir / "objects"
        # Git objects never change, so what was read once can be kept.
        self._object_cache: dict[bytes, bytes] = {}
        self._tree_cache: dict[bytes, list[tuple[bytes, int, str]]] = {}
        self._ignores: dict[Path, list[str]] = {}
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

    def changed_paths(self, path: Path) -> tuple[dict[str, tuple[bytes, int]], list[str]]:
        """What changed in a worktree since checkout: ({path: (blob, mode)}, deleted).

        This is `git status` done in-process: the worktree's index holds each checked-out
        file's size and mtime; files whose stat differs (or that the index does not know)
        are hashed and compared with the index's blob. It saves a git process per commit.
        """
        admin = self._admin_dir(path)
        if admin is None:
            raise WorkspaceError(f"{path}: not a worktree of {self.root}")
        index = IndexFile(self.repo, str(admin / "index")).entries
        known = {key[0]: entry for key, entry in index.items() if key[1] == 0}
        seen: set[str] = set()
        written: dict[str, tuple[bytes, int]] = {}
        for dirpath, dirnames, filenames in os.walk(path):
            rel_dir = os.path.relpath(dirpath, path)
            dirnames[:] = [d for d in dirnames if not (rel_dir == "." and d == ".git")
                           and not self._ignored(path, rel_dir, d, True)]
            for name in filenames:
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                if rel_dir == "." and name == ".git":
                    continue
                entry = known.get(rel)
                st = os.lstat(os.path.join(dirpath, name))
                if entry is not None:
                    seen.add(rel)
                    mtime = entry.mtime[0] * 1_000_000_000 + entry.mtime[1]
                    if entry.size == st.st_size and mtime == st.st_mtime_ns and \
                            entry.mode == _mode_of(st.st_mode):
                        continue
                elif self._ignored(path, rel_dir, name, False):
                    continue
                blob = self._blob_for(Path(dirpath) / name, st)
                if entry is None or blob != (entry.binsha, entry.mode):
                    written[rel] = blob
        deleted = sorted(set(known) - seen)
        return written, deleted

    def _ignored(self, root: Path, rel_dir: str, name: str, is_dir: bool) -> bool:
        """Untracked files that .gitignore covers are not part of the agent's work."""
        if name in ("__pycache__", ".pytest_cache") or name.endswith(".pyc"):
            return True
        patterns = self._ignore_patterns(root)
        rel = name if rel_dir == "." else f"{rel_dir}/{name}"
        from fnmatch import fnmatch

        for pattern in patterns:
            dir_only = pattern.endswith("/")
            pat = pattern.rstrip("/")
            if dir_only and not is_dir:
                continue
            if fnmatch(rel, pat.lstrip("/")) or ("/" not in pat and fnmatch(name, pat)):
                return True
        return False

    def _ignore_patterns(self, root: Path) -> list[str]:
        cache = self._ignores.get(root)
        if cache is None:
            cache = []
            file = root / ".gitignore"
            if file.is_file():
                cache = [line.strip() for line in file.read_text().splitlines()
                         if line.strip() and not line.startswith(("#", "!"))]
            self._ignores[root] = cache
        return cache

    def _store(self, kind: bytes, data: bytes) -> bytes:
        """Write a loose object (zlib of "<kind> <size>\\0<data>", named by its SHA-1)."""
        raw = kind + b" " + str(len(data)).encode() + b"\0" + data
        binsha = hashlib.sha1(raw).digest()
        hexsha = binsha.hex()
        folder = self._objects / hexsha[:2]
        target = folder / hexsha[2:]
        if target.exists():
            return binsha
        folder.mkdir(exist_ok=True)
        tmp = folder / f"tmp_obj_{os.getpid()}_{next(_counter)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            os.write(fd, zlib.compress(raw, 1))
        finally:
            os.close(fd)
        os.replace(tmp, target)
        return binsha

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

    def _rewrite_tree(self, tree: bytes | None, changes: dict[str, tuple[bytes, int] | None]) \
            -> bytes | None:
        entries: dict[str, tuple[bytes, int]] = {}
        if tree is not None:
            for binsha, mode, name in self._entries(tree):
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

    def _blob_for(self, file: Path, st: os.stat_result) -> tuple[bytes, int]:
        if stat.S_ISLNK(st.st_mode):
            return self._store(b"blob", os.readlink(file).encode()), 0o120000
        return self._store(b"blob", file.read_bytes()), _mode_of(st.st_mode)

    def _old_text(self, tree: bytes, rel: str) -> list[str]:
        current: bytes | None = tree
        parts = rel.split("/")
        for i, part in enumerate(parts):
            if current is None:
                return []
            found = None
            for binsha, mode, name in self._entries(current):
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
        written, deleted = self.changed_paths(wt.path)
        if not written and not deleted:
            return None
        base_commit = self._read(bytes.fromhex(wt.base_commit))
        base_tree = bytes.fromhex(base_commit.split(b"\n", 1)[0].split(b" ")[1].decode())
        changes: dict[str, tuple[bytes, int] | None] = dict.fromkeys(deleted)
        changes.update(written)
        insertions = deletions = 0
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
        self._set_ref(f"refs/heads/{wt.branch}", sha, wt.base_commit)
        return CommitInfo(sha, sorted(changes), insertions, deletions)

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
