"""Per-agent process and memory ceilings through Linux control groups.

A process-count rlimit does not bind root, and a pid namespace does not cap how many
processes exist, so fork bombs are stopped by a `pids` cgroup; memory bombs by a `memory`
cgroup, whose OOM counter also tells a memory kill from any other SIGKILL. Both cgroup v2
(one unified tree) and v1 (one tree per controller) are handled. Groups are created under
the engine's own, so the engine's limits still apply to everything it starts.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
_counter = itertools.count()


def _own_paths() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path."""
    out: dict[str, str] = {}
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            out[name] = path
    return out


@dataclass
class CgroupLimits:
    """The cgroup directories that confine one agent's sandbox and every command in it."""

    dirs: list[Path]
    memory_dir: Path | None
    v2: bool

    def task_count(self) -> int | None:
        """How many tasks (threads included) the pids controller counts in the group: one
        small read, where listing the processes takes one per group."""
        try:
            return int(_read(self.dirs[0] / "pids.current"))  # v1: pids comes first
        except (OSError, ValueError):
            return None

    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def oom_kills(self) -> int:
        """How many processes the kernel killed for memory in this group so far."""
        if self.memory_dir is None:
            return 0
        name = "memory.events" if self.v2 else "memory.oom_control"
        try:
            for line in _read(self.memory_dir / name).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            return 0
        return 0

    def join(self) -> None:
        """Move the calling process into the groups (run in the child before exec)."""
        pid = str(os.getpid())
        for procs in self.procs_files():
            procs.write_text(pid)

    def pids(self) -> set[int]:
        """Every process in the groups (ones that just exited may still be listed)."""
        found: set[int] = set()
        for procs in self.procs_files():
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in procs.read_text().split())
        return found

    def kill_all(self, keep: Collection[int] = ()) -> None:
        """SIGKILL everything still alive in the groups (what a command left behind), except
        the processes in `keep` (the sandbox's own).

        Processes that have already exited may stay listed for a moment while the kernel
        reaps them; they are not waited for.
        """
        for attempt in range(200):
            others = self.pids().difference(keep)
            if not others:
                return
            alive = [pid for pid in others if _alive(pid)]
            if not alive:
                return
            for pid in alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.0005 if attempt < 20 else 0.01)

    def remove(self) -> None:
        self.kill_all()
        for d in self.dirs:
            for _ in range(20):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


def _read(path: Path) -> str:
    """A small control file, read with the fewest system calls (this is on every command's
    path)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096).decode()
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat[stat.rfind(")") + 2:stat.rfind(")") + 3]
    return state not in ("Z", "X")


def available() -> str | None:
    """None when pids and memory cgroups can be made here, else why not."""
    try:
        group = create("probe", memory_mb=64, max_processes=8)
    except OSError as exc:
        return f"cannot create cgroups under {ROOT}: {exc.strerror or exc}"
    group.remove()
    return None


def create(tag: str, *, memory_mb: int, max_processes: int) -> CgroupLimits:
    own = _own_paths()
    name = f"factory-{tag}-{os.getpid()}-{next(_counter)}"
    if (ROOT / "cgroup.controllers").exists():
        parent = ROOT / own.get("", "/").lstrip("/")
        # A v2 group may only hold processes if it is a leaf: make a sibling tree for ours.
        d = parent / name
        d.mkdir()
        (d / "pids.max").write_text(str(max_processes))
        (d / "memory.max").write_text(str(memory_mb * 1024 * 1024))
        with contextlib.suppress(OSError):
            (d / "memory.swap.max").write_text("0")
        return CgroupLimits([d], d, True)
    pids = ROOT / "pids" / own.get("pids", "/").lstrip("/") / name
    memory = ROOT / "memory" / own.get("memory", "/").lstrip("/") / name
    made: list[Path] = []
    try:
        pids.mkdir()
        made.append(pids)
        (pids / "pids.max").write_text(str(max_processes))
        memory.mkdir()
        made.append(memory)
        (memory / "memory.limit_in_bytes").write_text(str(memory_mb * 1024 * 1024))
        with contextlib.suppress(OSError):
            (memory / "memory.memsw.limit_in_bytes").write_text(str(memory_mb * 1024 * 1024))
    except OSError:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return CgroupLimits([pids, memory], memory, False)
