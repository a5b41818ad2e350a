"""Per-agent quotas on what a worktree may hold: bytes, files, and the size of one write.

A worktree lives on the host's disk, so one command (or one tool call) could otherwise fill
it with gigabytes or with hundreds of thousands of files, and the engine's commit would
then read them all. The quota is enforced at every place the worktree grows:

- each write of a file tool is checked before anything is written;
- while a command runs, the worktree is measured every `POLL_SECONDS` and the command is
  stopped once over; one file can never outgrow the whole quota between two looks, because
  commands run with RLIMIT_FSIZE at the disk quota (the kernel refuses the write);
- after each command it is measured again.

Scratch space (/tmp, /dev/shm) is a tmpfs of at most the disk quota in both backends, wiped
after each command and charged to the agent's memory cgroup.

A measure is a walk beneath the worktree's handle (no link followed) that stops as soon as
the count passes the quota, so it costs at most `files + 1` entries however large the tree;
it runs on a worker thread, never on the engine's loop.
"""

from __future__ import annotations

import asyncio
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from agents.beneath import Beneath, PathDenied, WalkCut, Written

POLL_SECONDS = 0.5
# A measure that takes longer than this is cut (a very slow disk): what was counted stands.
MEASURE_SECONDS = 20.0


@dataclass(frozen=True)
class Quota:
    disk_bytes: int = 2 * 1024**3
    files: int = 100_000
    write_bytes: int = 10 * 1024**2


@dataclass(frozen=True)
class Over:
    """Which quota a worktree is over, and by how much."""

    limit: str  # "disk", "files" or "write"
    used: int
    allowed: int

    @property
    def message(self) -> str:
        if self.limit == "disk":
            return (f"the worktree holds more than its disk quota of {_mb(self.allowed)} "
                    f"({_mb(self.used)} or more)")
        if self.limit == "files":
            return (f"the worktree holds more than its quota of {self.allowed:,} files and "
                    "folders")
        return f"one write of {_mb(self.used)} is more than the {_mb(self.allowed)} allowed"


def quota_of(disk_mb: int, files: int, write_mb: float) -> Quota:
    """The `[sandbox] quota_*` settings as a Quota."""
    return Quota(disk_mb * 1024**2, files, int(write_mb * 1024**2))


def _mb(n: int) -> str:
    return f"{n / 1024**2:.1f} MB" if n >= 1024**2 else f"{n:,} bytes"


class QuotaExceeded(Exception):
    def __init__(self, over: Over) -> None:
        super().__init__(over.message)
        self.over = over


class DiskMeter:
    """What one agent's worktree holds, against its quota.

    One meter per agent, shared by its sandbox (which measures around commands) and its file
    tools (which charge each write), so both see the same figures. It keeps the size of
    every entry it counted, so that after a command only the paths the command touched need
    a look (`update`, fed by the bwrap backend's inotify watches); a full measure is the
    fallback whenever what changed is not known.
    """

    def __init__(self, root: Path, quota: Quota) -> None:
        self.root = root
        self.quota = quota
        self.bytes = 0
        self.files = 0
        self.measured = False
        self.sizes: dict[str, int] = {}  # relative path -> bytes counted (0 for a folder)
        self.folders: set[str] = set()
        # Whether sizes holds every entry (a measure cut at the quota does not).
        self.complete = False

    def over(self) -> Over | None:
        q = self.quota
        if self.bytes > q.disk_bytes:
            return Over("disk", self.bytes, q.disk_bytes)
        if self.files > q.files:
            return Over("files", self.files, q.files)
        return None

    def _count(self, tree: Beneath, rel: str, sizes: dict[str, int], folders: set[str]) -> bool:
        """Add what is below rel (a folder) to sizes; False when cut at the quota."""
        q = self.quota
        total = sum(sizes.values())
        try:
            for path, _, entry in tree.walk(rel, skip=lambda _: False,
                                            max_entries=q.files + 1,
                                            deadline=time.monotonic() + MEASURE_SECONDS):
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone meanwhile
                if stat.S_ISDIR(info.st_mode):
                    folders.add(path)
                    size = 0
                else:
                    size = info.st_size if stat.S_ISREG(info.st_mode) or \
                        stat.S_ISLNK(info.st_mode) else 0
                sizes[path] = size
                total += size
                if total > q.disk_bytes or len(sizes) > q.files:
                    return False
        except WalkCut:
            return False
        return True

    def _set(self, sizes: dict[str, int], folders: set[str], complete: bool) -> None:
        self.sizes, self.folders, self.complete = sizes, folders, complete
        self.bytes, self.files = sum(sizes.values()), len(sizes)
        if not complete and self.over() is None:
            self.files = self.quota.files + 1  # cut by entries or time: count it as full
        self.measured = True

    def measure(self) -> Over | None:
        """Count the whole worktree again (blocking: call it on a thread, see
        `measure_async`)."""
        sizes: dict[str, int] = {}
        folders: set[str] = set()
        try:
            with Beneath(self.root) as tree:
                complete = self._count(tree, "", sizes, folders)
        except (PathDenied, OSError):
            return self.over()  # the worktree is gone: nothing more to hold
        self._set(sizes, folders, complete)
        return self.over()

    async def measure_async(self) -> Over | None:
        return await asyncio.to_thread(self.measure)

    def update(self, touched: set[Path] | None) -> Over | None:
        """Look again only at the paths touched since the last look (None: not known, so
        all of them). Blocking, like measure."""
        if touched is None or not self.complete:
            return self.measure()
        sizes, folders = dict(self.sizes), set(self.folders)
        root = str(self.root).rstrip("/") + "/"
        recounted: set[str] = set()
        try:
            with Beneath(self.root) as tree:
                for path in sorted(touched, key=lambda p: len(p.parts)):
                    text = str(path)
                    if not text.startswith(root):
                        continue
                    rel = text[len(root):]
                    parts = rel.split("/")
                    if any("/".join(parts[:n]) in recounted for n in range(1, len(parts))):
                        continue  # inside a folder counted afresh above
                    try:
                        info = tree.lstat(rel)
                    except PathDenied:
                        info = None  # a link or a file where a folder was: gone for us
                    if info is None or (rel in folders) != stat.S_ISDIR(info.st_mode):
                        sizes.pop(rel, None)
                        if rel in folders:
                            folders.discard(rel)
                            prefix = rel + "/"
                            for key in [k for k in sizes if k.startswith(prefix)]:
                                del sizes[key]
                            folders.difference_update(
                                [f for f in folders if f.startswith(prefix)])
                    if info is None:
                        continue
                    if stat.S_ISDIR(info.st_mode):
                        # New, or made again (removed and re-created within one command:
                        # its contents came before any watch): counted afresh.
                        if rel in folders:
                            prefix = rel + "/"
                            for key in [k for k in sizes if k.startswith(prefix)]:
                                del sizes[key]
                            folders.difference_update(
                                [f for f in folders if f.startswith(prefix)])
                        folders.add(rel)
                        sizes[rel] = 0
                        recounted.add(rel)
                        if not self._count(tree, rel, sizes, folders):
                            self._set(sizes, folders, False)
                            return self.over()
                    elif stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
                        sizes[rel] = info.st_size
                    else:
                        sizes[rel] = 0
        except (PathDenied, OSError):
            return self.measure()
        self._set(sizes, folders, True)
        return self.over()

    async def update_async(self, touched: set[Path] | None) -> Over | None:
        return await asyncio.to_thread(self.update, touched)

    def charge(self, effect: Written) -> None:
        """Account for a write before it happens; raises QuotaExceeded to refuse it."""
        if not self.measured:
            self.measure()
        old = self.sizes.get(effect.rel)
        folders = [f for f in effect.folders if f not in self.sizes]
        new_files = self.files + (1 if old is None else 0) + len(folders)
        new_bytes = self.bytes - (old or 0) + effect.size
        q = self.quota
        if new_bytes > self.bytes and new_bytes > q.disk_bytes:
            raise QuotaExceeded(Over("disk", new_bytes, q.disk_bytes))
        if new_files > self.files and new_files > q.files:
            raise QuotaExceeded(Over("files", new_files, q.files))
        for folder in folders:
            self.sizes[folder] = 0
            self.folders.add(folder)
        self.sizes[effect.rel] = effect.size
        self.bytes, self.files = new_bytes, new_files

    def check_write(self, size: int) -> None:
        if size > self.quota.write_bytes:
            raise QuotaExceeded(Over("write", size, self.quota.write_bytes))


def set_fsize(limit: int | None) -> None:
    """In a child before exec: cap the size of any file it writes."""
    if limit is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


async def poll(meter: DiskMeter, stop: asyncio.Event, found: list[Over]) -> None:
    """Measure every POLL_SECONDS while a command runs; on going over, record it and set
    `stop` (the supervisor then kills the command)."""
    while True:
        await asyncio.sleep(POLL_SECONDS)
        over = await meter.measure_async()
        if over is not None:
            found.append(over)
            stop.set()
            return


__all__ = ["DiskMeter", "Over", "Quota", "QuotaExceeded", "poll", "quota_of",
           "set_fsize"]
