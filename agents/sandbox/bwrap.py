"""The `bwrap` backend: bubblewrap, deny by default, for reads as well as writes.

Only what a toolchain needs is mounted, read-only: /usr (and the merged-/usr links), a short
list of files from /etc, and the Python installation the engine runs on. The worktree is the
only writable path besides a private /tmp; its `.git` file and `.factory.toml` are bound
read-only on top of it, and the repository's own `.git` folder is not there at all. No
network (a fresh, empty network namespace), a fresh pid namespace, no capabilities, kernel
settings (/proc/sys) read-only, a scrubbed environment, and pids/memory cgroups per command.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from agents.sandbox import cgroups
from agents.sandbox.base import Limits, RunResult, SandboxContext, SandboxError
from agents.sandbox.env import scrubbed_env
from agents.sandbox.launcher import Launcher, discard_fds, make_pipe
from agents.sandbox.process import supervise

# The dynamic linker's cache, the alternatives links under /usr/bin, and user names.
ETC_FILES = ("ld.so.cache", "alternatives", "passwd", "group")


def toolchain_paths() -> list[Path]:
    """The Python the engine runs on (and its virtual environment), to mount read-only."""
    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(),
             Path(sys.executable).resolve().parent.parent}
    return sorted(p for p in paths if not str(p).startswith("/usr"))


def strip_setuid(root: Path) -> list[str]:
    """Clear setuid/setgid bits a command set in the worktree.

    Inside the sandbox they grant nothing (no capabilities, no_new_privs), but the worktree
    lives on the host's disk, where a root-owned setuid file would be a way up for anyone.
    """
    found: list[str] = []
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != ".git":
                        stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    mode = entry.stat(follow_symlinks=False).st_mode
                    if mode & (stat.S_ISUID | stat.S_ISGID):
                        os.chmod(entry.path, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))
                        found.append(os.path.relpath(entry.path, root))
    return found


class BwrapSandbox:
    name = "bwrap"

    def __init__(self, ctx: SandboxContext, limits: Limits, binary: str,
                 ro_paths: list[Path]) -> None:
        self.ctx = ctx
        self.limits = limits
        self.binary = binary
        self.ro_paths = ro_paths
        # One pids+memory group per agent, made once: its ceilings bind every command the
        # agent runs, and nothing a command leaves behind outlives it.
        self.group = cgroups.create(ctx.agent_id.replace("/", "-")[:40],
                                    memory_mb=limits.memory_mb,
                                    max_processes=limits.max_processes)
        self.launcher: Launcher | None = None

    def command(self, argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> list[str]:
        worktree = self.ctx.worktree.resolve()
        args = [self.binary, "--unshare-all", "--die-with-parent", "--new-session",
                "--cap-drop", "ALL", "--clearenv",
                "--ro-bind", "/usr", "/usr"]
        for link in ("bin", "lib", "lib32", "lib64", "libx32", "sbin"):
            path = Path("/") / link
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                args += ["--ro-bind", str(path), str(path)]
        for name in ETC_FILES:
            if (Path("/etc") / name).exists():
                args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        # Commands run as uid 0 of a user namespace that maps it to the host's uid: when
        # that is root, writable kernel settings (core_pattern, which runs a program as root
        # on the host) would accept their writes.
        args += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys",
                 "--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger",
                 "--dev", "/dev", "--tmpfs", "/tmp"]
        for path in self.ro_paths:
            if path.exists():
                args += ["--ro-bind", str(path), str(path)]
        args += ["--bind", str(worktree), str(worktree)]
        for path in self.ctx.read_only:
            if path.exists() or path.is_symlink():
                args += ["--ro-bind", str(path), str(path)]
        for key, value in env.items():
            args += ["--setenv", key, value]
        # The sandbox's own root (where bwrap made the mount points) is read-only too.
        args += ["--remount-ro", "/", "--chdir", str(cwd.resolve()), "--", *argv]
        return args

    async def run(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        limits: Limits | None = None,
    ) -> RunResult:
        limits = limits or self.limits
        full_env = scrubbed_env(self.ctx.env_allow, extra=env)
        command = self.command(argv, cwd, full_env)
        group = self.group
        kills = group.oom_kills()
        if self.launcher is None or self.launcher.proc.returncode is not None:
            # Started once, inside the agent's groups: commands inherit them for free.
            # (Started again if a memory kill took it down.)
            self.launcher = await Launcher.start(group.join)
        wall = min(timeout, limits.wall_seconds) if timeout else limits.wall_seconds
        started = time.perf_counter()
        out_read, out_write = make_pipe()
        err_read, err_write = make_pipe()
        try:
            pid, exited = await self.launcher.spawn(command, cwd, {"PATH": "/usr/bin:/bin"},
                                                    out_write, err_write)
        except (OSError, ConnectionError) as exc:
            discard_fds(out_read, out_write, err_read, err_write)
            return RunResult(None, "", str(exc), time.perf_counter() - started, "denied",
                             f"could not start the sandbox: {exc}")
        discard_fds(out_write, err_write)
        loop = asyncio.get_running_loop()
        transports = []
        try:
            streams = []
            for fd in (out_read, err_read):
                reader = asyncio.StreamReader(limit=1 << 20)
                transport, _ = await loop.connect_read_pipe(
                    lambda r=reader: asyncio.StreamReaderProtocol(r),  # type: ignore[misc]
                    os.fdopen(fd, "rb", 0))
                transports.append(transport)
                streams.append(reader)
            result = await supervise(pid, streams[0], streams[1], exited, limits, wall,
                                     started)
        finally:
            for transport in transports:
                transport.close()
            group.kill_all(keep=self.launcher.proc.pid)
        stripped = strip_setuid(self.ctx.worktree)
        if stripped:
            return RunResult(result.exit_code, result.stdout, result.stderr, result.duration,
                             "denied", "removed the setuid/setgid bit from "
                             + ", ".join(stripped[:5]))
        if group.oom_kills() > kills:
            return RunResult(None, result.stdout, result.stderr, result.duration, "memory",
                             f"killed at the {limits.memory_mb} MB memory limit")
        if result.stop == "exit" and result.exit_code == 1 and \
                result.stderr.startswith("bwrap:"):
            return RunResult(1, result.stdout, result.stderr, result.duration, "denied",
                             result.stderr.strip())
        return result

    async def close(self) -> None:
        if self.launcher is not None:
            await self.launcher.close()
        self.group.remove()


class BwrapBackend:
    name = "bwrap"
    confines = True

    def __init__(self, limits: Limits | None = None, env_allow: Sequence[str] = (),
                 ro_paths: Sequence[Path] | None = None) -> None:
        binary = shutil.which("bwrap")
        if binary is None:
            raise SandboxError("bubblewrap is not installed (apt-get install bubblewrap)")
        self.binary = binary
        self.limits = limits or Limits()
        self.env_allow = list(env_allow)
        self.ro_paths = list(ro_paths) if ro_paths is not None else toolchain_paths()
        reason = cgroups.available()
        if reason is not None:
            raise SandboxError(f"bwrap needs pids and memory cgroups for its limits: {reason}")

    async def open(self, ctx: SandboxContext) -> BwrapSandbox:
        if not ctx.env_allow:
            ctx.env_allow = self.env_allow
        return BwrapSandbox(ctx, self.limits, self.binary, self.ro_paths)
