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
    tools (which charge each write), so both see the same figures.
    """

    def __init__(self, root: Path, quota: Quota) -> None:
        self.root = root
        self.quota = quota
        self.bytes = 0
        self.files = 0
        self.measured = False

    def over(self) -> Over | None:
        q = self.quota
        if self.bytes > q.disk_bytes:
            return Over("disk", self.bytes, q.disk_bytes)
        if self.files > q.files:
            return Over("files", self.files, q.files)
        return None

    def measure(self) -> Over | None:
        """Count the worktree again (blocking: call it on a thread, see `measure_async`)."""
        q = self.quota
        total = files = 0
        try:
            with Beneath(self.root) as tree:
                for _, _, entry in tree.walk("", skip=lambda _: False,
                                             max_entries=q.files + 1,
                                             deadline=time.monotonic() + MEASURE_SECONDS):
                    files += 1
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # gone meanwhile
                    if stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
                        total += info.st_size
                    if total > q.disk_bytes:
                        break
        except WalkCut as cut:
            if "entries" in cut.reason:
                files = q.files + 1
        except (PathDenied, OSError):
            return self.over()  # the worktree is gone: nothing more to hold
        self.bytes, self.files, self.measured = total, files, True
        return self.over()

    async def measure_async(self) -> Over | None:
        return await asyncio.to_thread(self.measure)

    def charge(self, effect: Written) -> None:
        """Account for a write before it happens; raises QuotaExceeded to refuse it."""
        if not self.measured:
            self.measure()
        new_bytes = self.bytes + effect.bytes_delta
        new_files = self.files + effect.files_delta
        q = self.quota
        if effect.bytes_delta > 0 and new_bytes > q.disk_bytes:
            raise QuotaExceeded(Over("disk", new_bytes, q.disk_bytes))
        if effect.files_delta > 0 and new_files > q.files:
            raise QuotaExceeded(Over("files", new_files, q.files))
        self.bytes, self.files = new_bytes, new_files

    def check_write(self, size: int) -> None:
        if size > self.quota.write_bytes:
            raise QuotaExceeded(Over("write", size, self.quota.write_bytes))


def fsize_limit(meter: DiskMeter | None) -> int | None:
    """RLIMIT_FSIZE for commands: no single file may outgrow the whole disk quota."""
    return meter.quota.disk_bytes if meter is not None else None


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


__all__ = ["DiskMeter", "Over", "Quota", "QuotaExceeded", "fsize_limit", "poll", "quota_of",
           "set_fsize"]
