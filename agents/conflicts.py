"""Conflict forecasting: which open branches would conflict with each other if both landed.

Only pairs whose changed paths overlap are merged at all; with thousands of branches almost
every pair is disjoint, and a disjoint pair cannot produce a content conflict. The pairs that
do overlap are merged by ONE `git merge-tree --write-tree --stdin` process (git 2.38+), so a
refresh costs one process however many pairs moved. Results are cached on both heads, which
makes calling `refresh` on every branch movement cheap: only pairs with a new head are merged
again.

merge-tree writes the merged trees and blobs it builds. Those would pile up as garbage in the
repository, so every run points GIT_OBJECT_DIRECTORY at a throw-away directory and reads the
real objects through GIT_ALTERNATE_OBJECT_DIRECTORIES: new objects land in the scratch
directory only, which is deleted when the run ends.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents import events as ev
from agents.errors import FactoryError
from agents.gitcmd import GIT_ENV
from agents.overlap import same_line_hunks, same_lines

Emit = Callable[[ev.Event], Awaitable[object]]
Pair = tuple[str, str]
Heads = tuple[str, str]

# merge-tree's per-merge status in --stdin mode (note: the reverse of its exit codes).
_CONFLICTED, _CLEAN = "0", "1"
_SCRATCH_PREFIX = "merge-"
_MERGE_TREE = ("merge-tree", "--write-tree", "-z", "--name-only", "--no-messages")


class ConflictError(FactoryError):
    """merge-tree could not merge a pair at all (unknown commit, unrelated histories...)."""


@dataclass(frozen=True)
class BranchInfo:
    """An open branch as the forecaster needs it: its head and the paths it changed relative
    to its merge base with main."""

    name: str
    head: str
    files: Sequence[str]


@dataclass(frozen=True)
class _Merge:
    conflicts: bool
    tree: str
    files: list[str]


def overlapping_pairs(files_by_branch: Mapping[str, Iterable[str]]) -> list[Pair]:
    """Pairs of branches (a < b, sorted) that touch a common path.

    Branches are indexed by path, so the cost follows the number of paths and of overlapping
    pairs, not the square of the number of branches: with ~2,000 mostly disjoint branches
    that is the difference between milliseconds and millions of set intersections.

    A path one branch changes that is a parent directory of a path another changes counts as
    an overlap too: a file replacing a directory (or the reverse) conflicts in git although
    the two path lists share no entry.
    """
    by_path: dict[str, list[str]] = defaultdict(list)
    paths_of: dict[str, set[str]] = {}
    for branch, files in files_by_branch.items():
        paths = set(files)
        paths_of[branch] = paths
        for path in paths:
            by_path[path].append(branch)
    pairs: set[Pair] = set()
    for branches in by_path.values():
        if len(branches) > 1:
            ordered = sorted(branches)
            for i, a in enumerate(ordered):
                for b in ordered[i + 1:]:
                    pairs.add((a, b))
    for branch, paths in paths_of.items():
        parents: set[str] = set()
        for path in paths:
            cut = path.rfind("/")
            while cut > 0:
                path = path[:cut]
                if path in parents:
                    break
                parents.add(path)
                cut = path.rfind("/")
        for parent in parents:
            for other in by_path.get(parent, ()):
                if other != branch:
                    pairs.add((branch, other) if branch < other else (other, branch))
    return sorted(pairs)


def _parse_stdin_output(out: bytes, count: int) -> list[_Merge]:
    """Split `merge-tree --stdin -z --name-only --no-messages` output into its merges.

    Each merge is `<status>NUL<tree>NUL<path>NUL...NUL` (the empty field ends the block).
    The status field is the per-merge verdict; the conflicted-file list is never used to
    decide whether a merge was clean, since some conflicts list no file.
    """
    fields = out.decode("utf-8", "surrogateescape").split("\0")
    merges: list[_Merge] = []
    i = 0
    for _ in range(count):
        if i + 1 >= len(fields):
            raise ValueError(f"merge-tree printed {len(merges)} of {count} merges")
        status, tree = fields[i], fields[i + 1]
        if status not in (_CONFLICTED, _CLEAN):
            raise ValueError(f"merge-tree status {status!r}")
        i += 2
        files: list[str] = []
        while i < len(fields) and fields[i]:
            files.append(fields[i])
            i += 1
        if i >= len(fields):
            raise ValueError("merge-tree output ended inside a merge")
        i += 1
        merges.append(_Merge(status == _CONFLICTED, tree, files))
    if any(fields[i:]):
        raise ValueError("merge-tree printed more merges than it was asked for")
    return merges


def _alternates_entry(path: Path) -> str:
    """GIT_ALTERNATE_OBJECT_DIRECTORIES is colon-separated; a path with a colon or a leading
    quote must be C-quoted or git splits it."""
    text = str(path)
    if ":" not in text and not text.startswith('"'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class ConflictForecaster:
    """Keeps the `conflicts` projection current for a set of open branches.

    The forecaster remembers which pairs it has reported and at which heads; that memory is
    what turns "refresh on every branch movement" into "merge only what moved" and what tells
    it which pairs to close. `remember` seeds it from the projection after a restart.

    scratch_objects belongs to the forecaster: leftovers of a crashed run found there at start
    are deleted.
    """

    def __init__(self, root: Path, emit: Emit, scratch_objects: Path) -> None:
        self.root = root.resolve()
        self.emit = emit
        self.scratch_objects = scratch_objects.resolve()
        self.scratch_objects.mkdir(parents=True, exist_ok=True)
        for stale in self.scratch_objects.glob(f"{_SCRATCH_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        # Number of merge-tree processes started: how a benchmark or a test sees the batching.
        self.runs = 0
        self._objects: Path | None = None
        # Pair -> heads of the last verdict emitted for it; these pairs are open in the store.
        self._open: dict[Pair, Heads] = {}
        # Pair -> heads merge-tree could not merge; not retried (nor re-reported) until a
        # head moves, because the same heads fail the same way.
        self._failed: dict[Pair, Heads] = {}
        # Two refreshes interleaving would both see a pair as new and report it twice.
        self._lock = asyncio.Lock()

    def remember(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Seed from `conflicts` projection rows so a restarted factory does not re-merge and
        re-report pairs whose heads have not moved since it stopped."""
        for row in rows:
            if row.get("status") in ("conflict", "clean"):
                a, b = sorted((row["a"], row["b"]))
                heads = (row["a_head"], row["b_head"]) if a == row["a"] else (
                    row["b_head"], row["a_head"])
                self._open[(a, b)] = heads

    # -- refresh ---------------------------------------------------------------------------

    async def refresh(self, branches: Mapping[str, BranchInfo]) -> list[ev.ConflictChecked]:
        """Bring the forecast in line with the open branches (keyed by branch name).

        Returns the verdicts emitted by this call. Pairs that were reported before and are no
        longer open, or no longer overlap, are closed.
        """
        async with self._lock:
            return await self._refresh(branches)

    async def _refresh(self, branches: Mapping[str, BranchInfo]) -> list[ev.ConflictChecked]:
        pairs = overlapping_pairs({name: info.files for name, info in branches.items()})
        wanted: dict[Pair, Heads] = {
            (a, b): (branches[a].head, branches[b].head) for a, b in pairs}
        closed: list[ev.ConflictClosed] = []
        for pair in sorted(set(self._open) - set(wanted)):
            a, b = pair
            gone = [name for name in pair if name not in branches]
            reason = (f"{' and '.join(gone)} no longer open" if gone
                      else "changed paths no longer overlap")
            closed.append(ev.ConflictClosed(a=a, b=b, reason=reason))
        for pair in set(self._failed) - set(wanted):
            del self._failed[pair]
        todo = [(pair, heads) for pair, heads in wanted.items()
                if self._open.get(pair) != heads and self._failed.get(pair) != heads]

        results, failures = await self._merge_all(sorted({heads for _, heads in todo}))
        checked: list[ev.ConflictChecked] = []
        notices: list[ev.Notice] = []
        for (a, b), heads in todo:
            merge = results.get(heads)
            if merge is None:
                notices.append(ev.Notice(level="warning", message=(
                    f"cannot forecast conflicts between {a} and {b}: {failures[heads]}")))
                continue
            same: list[str] = []
            if not merge.conflicts:  # git merges them: do they change the same lines?
                shared = sorted(set(branches[a].files) & set(branches[b].files))
                same = sorted(await same_lines(self.root, heads[0], heads[1], shared))
            checked.append(ev.ConflictChecked(
                a=a, b=b, a_head=heads[0], b_head=heads[1],
                conflicts=merge.conflicts or bool(same), files=merge.files or same,
                same_lines=bool(same)))
        # Concurrent appends share the store's batched transaction instead of one each.
        await asyncio.gather(*(self.emit(e) for e in [*closed, *checked, *notices]))
        for e in closed:
            self._open.pop((e.a, e.b), None)
        for e in checked:
            self._open[(e.a, e.b)] = (e.a_head, e.b_head)
            self._failed.pop((e.a, e.b), None)
        for pair, heads in todo:
            if heads in failures:
                self._failed[pair] = heads
        return checked

    async def _merge_all(
        self, merges: list[Heads]
    ) -> tuple[dict[Heads, _Merge], dict[Heads, str]]:
        """Merge every pair of heads in one merge-tree process.

        merge-tree --stdin gives up on the whole batch when one merge cannot run (an unknown
        commit, unrelated histories), and says which only on stderr. The batch is then split
        in halves until the bad merges are isolated, so one broken branch costs a few extra
        processes instead of hiding every other verdict.
        """
        results: dict[Heads, _Merge] = {}
        failures: dict[Heads, str] = {}
        if not merges:
            return results, failures
        objects = await self._objects_dir()
        scratch = Path(tempfile.mkdtemp(prefix=_SCRATCH_PREFIX, dir=self.scratch_objects))
        try:
            pending = [merges]
            while pending:
                batch = pending.pop()
                code, out, err = await self._git(
                    *_MERGE_TREE, "--stdin", scratch=scratch, objects=objects,
                    stdin="".join(f"{a} {b}\n" for a, b in batch).encode())
                parsed: list[_Merge] | None = None
                if code == 0:
                    try:
                        parsed = _parse_stdin_output(out, len(batch))
                    except ValueError as exc:
                        err = f"unexpected merge-tree output: {exc}"
                if parsed is not None:
                    results.update(zip(batch, parsed, strict=True))
                elif len(batch) == 1:
                    failures[batch[0]] = err.strip() or f"merge-tree exited with {code}"
                else:
                    half = len(batch) // 2
                    pending += [batch[half:], batch[:half]]
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)
        return results, failures

    # -- hunks -----------------------------------------------------------------------------

    async def hunks(self, a_head: str, b_head: str) -> dict[str, str]:
        """The conflicted files of a pair as the merge leaves them, conflict markers included,
        for the console to show. A pair git merges cleanly but whose branches change the same
        lines (`refresh` records it as a conflict too) gets, per such file, both branches'
        changes to it between the same markers (`same_line_hunks`). Empty when the pair
        merges cleanly and changes no line in common.

        The merge is redone rather than kept from `refresh`: keeping every merged tree would
        defeat the scratch store's clean-up, and one pair costs two processes.
        """
        objects = await self._objects_dir()
        scratch = Path(tempfile.mkdtemp(prefix=_SCRATCH_PREFIX, dir=self.scratch_objects))
        try:
            code, out, err = await self._git(*_MERGE_TREE, a_head, b_head,
                                             scratch=scratch, objects=objects)
            if code == 0:
                return await same_line_hunks(self.root, a_head, b_head)
            fields = [f for f in out.decode("utf-8", "surrogateescape").split("\0") if f]
            # An unknown commit also exits with 1, but prints no tree.
            if code != 1 or not fields:
                raise ConflictError(
                    f"cannot merge {a_head} with {b_head}: {err.strip() or f'exit {code}'}")
            tree, *files = fields
            return await self._read_files(tree, files, scratch, objects)
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    async def _read_files(
        self, tree: str, files: list[str], scratch: Path, objects: Path
    ) -> dict[str, str]:
        """Read the merged blobs with one `cat-file --batch`, before the scratch store (which
        holds them) is deleted. Paths missing from the tree (a side deleted them) or that are
        not blobs are left out."""
        request = "".join(f"{tree}:{path}\n" for path in files).encode("utf-8", "surrogateescape")
        code, out, err = await self._git("cat-file", "--batch", scratch=scratch,
                                         objects=objects, stdin=request)
        if code != 0:
            raise ConflictError(f"cannot read merged tree {tree}: {err.strip()}")
        found: dict[str, str] = {}
        pos = 0
        for path in files:
            end = out.index(b"\n", pos)
            header = out[pos:end].split()
            pos = end + 1
            if len(header) != 3:  # "<name> missing" / "ambiguous"
                continue
            size = int(header[2])
            if header[1] == b"blob":
                found[path] = out[pos:pos + size].decode("utf-8", "replace")
            pos += size + 1
        return found

    # -- git -------------------------------------------------------------------------------

    async def _objects_dir(self) -> Path:
        if self._objects is None:
            code, out, err = await self._git("rev-parse", "--path-format=absolute",
                                             "--git-common-dir")
            if code != 0:
                raise ConflictError(f"{self.root}: not a git repository: {err.strip()}")
            self._objects = Path(out.decode().strip()) / "objects"
        return self._objects

    async def _git(
        self,
        *args: str,
        scratch: Path | None = None,
        objects: Path | None = None,
        stdin: bytes | None = None,
    ) -> tuple[int, bytes, str]:
        """Run git and hand back its exit code, which merge-tree uses as its verdict."""
        env = {**os.environ, **GIT_ENV}
        if scratch is not None and objects is not None:
            env["GIT_OBJECT_DIRECTORY"] = str(scratch)
            env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = _alternates_entry(objects)
        if args[0] == "merge-tree":
            self.runs += 1
        proc = await asyncio.create_subprocess_exec(
            "git", *args,
            cwd=str(self.root),
            env=env,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(stdin)
        return proc.returncode or 0, out, err.decode("utf-8", "replace")
