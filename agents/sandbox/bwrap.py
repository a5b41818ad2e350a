"""The `bwrap` backend: bubblewrap, deny by default, for reads as well as writes.

Only what a toolchain needs is mounted, read-only: /usr (and the merged-/usr links), a short
list of files from /etc, and the Python installation the engine runs on. The worktree is the
only writable path besides a private /tmp (and /dev/shm); its `.git` file and
`.factory.toml` are bound read-only on top of it, and the repository's own `.git` folder is
not there at all. No network (a fresh, empty network namespace), a fresh pid namespace, no
capabilities, no nested user namespaces, kernel settings (/proc/sys) read-only, a scrubbed
environment, and pids/memory cgroups for the agent.

One sandbox per agent, set up once: bubblewrap's namespaces and mounts cost several
milliseconds each time, so its pid 1 is a launcher (agents/sandbox/launcher.py) that starts
each command inside the namespaces and cgroups already made. After each command the engine
kills whatever the command left running (the cgroup sweep) and the launcher wipes the
scratch space, so each command starts from the same state a sandbox of its own would give.
The sandbox is made again when the launcher is gone or when what it mounted changed (the
worktree or a read-only path was replaced, created or removed).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from agents.sandbox import cgroups, seccomp
from agents.sandbox.base import Limits, RunResult, SandboxContext, SandboxError, checked
from agents.sandbox.env import scrubbed_env
from agents.sandbox.identity import RunAs, hand_over
from agents.sandbox.launcher import (
    LAUNCHER,
    LAUNCHER_PATH,
    Exit,
    Launcher,
    LauncherGone,
    discard_fds,
    make_pipe,
)
from agents.sandbox.process import supervise
from agents.sandbox.quota import set_fsize

# The dynamic linker's cache, the alternatives links under /usr/bin, and user names.
ETC_FILES = ("ld.so.cache", "alternatives", "passwd", "group")


def toolchain_paths() -> list[Path]:
    """The Python the engine runs on (and its virtual environment), to mount read-only."""
    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(),
             Path(sys.executable).resolve().parent.parent}
    return sorted(p for p in paths if not str(p).startswith("/usr"))


SETUID_BITS = stat.S_ISUID | stat.S_ISGID


def _strip(path: str, root: Path, found: list[str]) -> None:
    """Clear the setuid/setgid bits of one regular file, if it has them."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode) and mode & SETUID_BITS:
        os.chmod(path, stat.S_IMODE(mode) & ~SETUID_BITS)
        found.append(os.path.relpath(path, root))


def strip_setuid(root: Path) -> list[str]:
    """Clear setuid/setgid bits a command set in the worktree.

    Inside the sandbox they grant nothing (no capabilities, no_new_privs), but the worktree
    lives on the host's disk, where a root-owned setuid file would be a way up for anyone.
    Only the worktree's own `.git` is skipped (a pointer file, or metadata bound read-only);
    a `.git` directory a command made further down is walked like any other.
    """
    found: list[str] = []
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.path != str(root / ".git"):
                        stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    _strip(entry.path, root, found)
    return found


# inotify(7), which the standard library does not wrap.
_IN_MODIFY, _IN_ATTRIB, _IN_MOVED_FROM, _IN_MOVED_TO = 0x2, 0x4, 0x40, 0x80
_IN_CREATE, _IN_DELETE, _IN_DELETE_SELF, _IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
_IN_Q_OVERFLOW, _IN_IGNORED = 0x4000, 0x8000
_IN_ONLYDIR, _IN_DONT_FOLLOW, _IN_ISDIR = 0x1000000, 0x2000000, 0x40000000
# Writes and deletions too: the quota meter re-measures exactly the paths touched.
_IN_WATCH = (_IN_MODIFY | _IN_ATTRIB | _IN_CREATE | _IN_DELETE | _IN_MOVED_TO
             | _IN_MOVED_FROM | _IN_MOVE_SELF | _IN_DELETE_SELF | _IN_ONLYDIR
             | _IN_DONT_FOLLOW)
_IN_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


class SetuidGuard:
    """`strip_setuid` that looks only where the worktree changed since the last check.

    A full walk costs a stat per file (about 10 us here: 20 ms on every command for a
    2000-file worktree). inotify reports every file created, moved in or chmod-ed in a
    watched directory, and the system call that makes a change queues its event, so once a
    command and everything it started are dead, one non-blocking read holds them all. A new
    directory is walked in full (files may have appeared in it before its watch); whatever
    the bookkeeping cannot follow (a watched directory moved, the event queue overflowed, no
    inotify or no watch left) means a full walk and fresh watches, as before.

    The paths touched since the last `take_touched` are kept for the quota meter (None when
    a full walk was needed: then it measures everything too).
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.fd: int | None = None
        self.dirs: dict[int, Path] = {}
        self.touched: set[Path] | None = None

    def take_touched(self) -> set[Path] | None:
        touched, self.touched = self.touched, set()
        return touched

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd = None
        self.dirs.clear()

    def reset(self) -> list[str]:
        """A full walk that also (re)places the watches."""
        self.close()
        self.touched = None
        fd = _libc().inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return strip_setuid(self.root)
        self.fd = fd
        found: list[str] = []
        try:
            self._watch(self.root, found)
        except OSError:
            self.close()  # out of watches, say: full walks from now on
            return strip_setuid(self.root)
        return found

    def _watch(self, top: Path, found: list[str]) -> None:
        """Watch every directory from top down, then look at what is already there."""
        assert self.fd is not None
        stack = [top]
        while stack:
            folder = stack.pop()
            wd = _libc().inotify_add_watch(self.fd, os.fsencode(folder), _IN_WATCH)
            if wd < 0:
                err = ctypes.get_errno()
                if err in (errno.ENOENT, errno.ENOTDIR):
                    continue  # gone (or replaced) since it was listed
                raise OSError(err, os.strerror(err), str(folder))
            self.dirs[wd] = folder
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.path != str(self.root / ".git"):
                            stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        _strip(entry.path, self.root, found)

    def _events(self) -> list[tuple[Path, str, int]] | None:
        """Everything queued since the last read; None when only a full walk will do."""
        assert self.fd is not None
        events: list[tuple[Path, str, int]] = []
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return events
            offset = 0
            while offset < len(data):
                wd, mask, _, size = _IN_EVENT.unpack_from(data, offset)
                name = os.fsdecode(data[offset + _IN_EVENT.size:
                                        offset + _IN_EVENT.size + size].rstrip(b"\0"))
                offset += _IN_EVENT.size + size
                if mask & (_IN_Q_OVERFLOW | _IN_MOVE_SELF) or \
                        (mask & _IN_MOVED_FROM and mask & _IN_ISDIR):
                    return None  # lost events, or paths under a moved directory changed
                if mask & _IN_IGNORED:
                    self.dirs.pop(wd, None)
                elif wd in self.dirs and name:
                    events.append((self.dirs[wd], name, mask))
                elif mask & _IN_DELETE_SELF and wd in self.dirs \
                        and self.dirs[wd] == self.root:
                    return None

    def check(self) -> list[str]:
        """Clear the bits wherever something changed; the files it cleared."""
        if self.fd is None:
            return self.reset()
        events = self._events()
        if events is None:
            return self.reset()
        found: list[str] = []
        if self.touched is not None:
            self.touched.update(folder / name for folder, name, _ in events)
        try:
            for folder, name, mask in events:
                path = folder / name
                if mask & _IN_DELETE:
                    continue
                if not mask & _IN_ISDIR:
                    _strip(str(path), self.root, found)
                elif mask & (_IN_CREATE | _IN_MOVED_TO) and path != self.root / ".git":
                    self._watch(path, found)
        except OSError:
            return found + self.reset()
        return found


MountKey = tuple[tuple[str, int, int], ...]


def _identity(path: Path) -> tuple[str, int, int]:
    """Which file a path names now: a bind mount keeps the one it was made from."""
    try:
        st = os.stat(path)
    except OSError:
        try:
            st = os.lstat(path)
        except OSError:
            return (str(path), -1, -1)
    return (str(path), st.st_dev, st.st_ino)


@functools.cache
def _supports(binary: str, option: str) -> bool:
    """Whether this bubblewrap knows an option (older ones lack --disable-userns)."""
    try:
        text = subprocess.run([binary, "--help"], capture_output=True, text=True,
                              timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return option in text


class BwrapSandbox:
    name = "bwrap"

    def __init__(self, ctx: SandboxContext, limits: Limits, binary: str,
                 ro_paths: list[Path], run_as: RunAs | None = None) -> None:
        self.ctx = ctx
        self.limits = limits
        self.binary = binary
        self.ro_paths = ro_paths
        self.run_as = run_as
        # One pids+memory group per agent, made once: its ceilings bind every command the
        # agent runs, and nothing a command leaves behind outlives it.
        self.group = cgroups.create(re.sub(r"[^a-zA-Z0-9_.:-]", "-", ctx.agent_id)[:40],
                                    memory_mb=limits.memory_mb,
                                    max_processes=limits.max_processes)
        self.launcher: Launcher | None = None
        # The sandbox's own processes (bubblewrap and the launcher, by host pid): the
        # only ones the sweep after each command leaves alive.
        self.keep: frozenset[int] = frozenset()
        self.mounted: MountKey = ()
        self.oom_seen = 0  # the group's OOM-kill count when the last command ended
        self.setuid = SetuidGuard(ctx.worktree)
        # One command at a time: the sweep after a command ends everything but the sandbox.
        self.lock = asyncio.Lock()

    def mount_key(self) -> MountKey:
        return tuple(_identity(p) for p in [self.ctx.worktree, *self.ctx.read_only])

    def command(self, info_fd: int, program_fd: int, block_fd: int | None = None,
                seccomp_fd: int | None = None) -> list[str]:
        """bubblewrap's command line, up to the `--` after which the launcher comes.

        bubblewrap reports the sandbox's pid 1 (the launcher) on info_fd and copies the
        launcher's program from program_fd. With a command user (run_as), it waits on
        block_fd until the engine has written its user namespace's map (see identity.py),
        and reads from seccomp_fd the filter that keeps commands from making user namespaces
        of their own (what --disable-userns does otherwise).
        """
        worktree = self.ctx.worktree.resolve()
        args = [self.binary, "--unshare-all", "--unshare-user", "--die-with-parent",
                "--new-session", "--as-pid-1", "--cap-drop", "ALL", "--clearenv",
                "--info-fd", str(info_fd)]
        if self.run_as is not None and block_fd is not None:
            args += ["--userns-block-fd", str(block_fd)]
            # The launcher's own: start commands as the command user, signal them, and
            # empty the scratch space they leave (their files, whatever their modes).
            for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_FOWNER", "CAP_KILL"):
                args += ["--cap-add", cap]
            if seccomp_fd is not None:
                args += ["--seccomp", str(seccomp_fd)]
        if self.run_as is not None and block_fd is not None:
            pass  # --disable-userns cannot go with --userns-block-fd: seccomp does it
        elif _supports(self.binary, "--disable-userns"):
            args.append("--disable-userns")
        args += ["--ro-bind", "/usr", "/usr"]
        for link in ("bin", "lib", "lib32", "lib64", "libx32", "sbin"):
            path = Path("/") / link
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                args += ["--ro-bind", str(path), str(path)]
        # Made explicitly: bubblewrap would make /etc for the files below with mode 0700,
        # out of the command user's reach.
        args += ["--perms", "0755", "--dir", "/etc"]
        for name in ETC_FILES:
            if (Path("/etc") / name).exists():
                args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        # Commands run as uid 0 of a user namespace that maps it to the host's uid: when
        # that is root, writable kernel settings (core_pattern, which runs a program as root
        # on the host) would accept their writes.
        args += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys",
                 "--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger"]
        # /dev itself read-only; /dev/shm and message queues are scratch space, like /tmp.
        # Both are at most the disk quota in size (the memory cgroup bounds them too).
        size = [] if self.ctx.meter is None else \
            ["--size", str(self.ctx.meter.quota.disk_bytes)]
        args += ["--dev", "/dev", "--perms", "1777", *size, "--tmpfs", "/dev/shm",
                 "--mqueue", "/dev/mqueue", "--remount-ro", "/dev",
                 "--perms", "1777", *size, "--tmpfs", "/tmp"]
        # The folders that lead to the mounts below, made traversable: bubblewrap would
        # make them with their source's mode, and a worktree under the 0700 `.factory/` (or
        # a toolchain under /root) would be out of the command user's reach.
        targets = [p for p in self.ro_paths if p.exists()] + [worktree]
        args += _mount_points(targets)
        for path in self.ro_paths:
            if path.exists():
                args += ["--ro-bind", str(path), str(path)]
        args += ["--bind", str(worktree), str(worktree)]
        for path in self.ctx.read_only:
            if path.exists() or path.is_symlink():
                args += ["--ro-bind", str(path), str(path)]
        # The launcher's program and environment; each command gets the env the engine sends.
        args += ["--ro-bind-data", str(program_fd), LAUNCHER_PATH,
                 "--setenv", "PATH", "/usr/bin:/bin"]
        # The sandbox's own root (where bwrap made the mount points) is read-only too.
        args += ["--remount-ro", "/", "--chdir", "/", "--"]
        return args

    async def _start(self) -> Launcher:
        if self.launcher is not None:
            await self.launcher.close()
            self.launcher = None
        self.group.kill_all()  # whatever an earlier sandbox of this agent left
        mounted = self.mount_key()
        info_read, info_write = os.pipe()
        program_read, program_write = os.pipe()
        block_read, block_write = os.pipe() if self.run_as is not None else (-1, -1)
        seccomp_read = -1
        if self.run_as is not None:
            seccomp_read, seccomp_write = os.pipe()
            with os.fdopen(seccomp_write, "wb") as program:
                program.write(seccomp.no_user_namespaces())
        os.set_blocking(info_read, False)
        reported: list[dict[str, object]] = []

        async def started() -> None:
            """Read bubblewrap's report; with a command user, write its namespace's map
            (root and the command user, each to itself) and let it go on."""
            try:
                reported.append(await _read_info(info_read))
                if self.run_as is not None:
                    _write_map(int(str(reported[0]["child-pid"])), self.run_as)
                    os.write(block_write, b"1")
            except BaseException:
                # bubblewrap's sandbox process would wait on the block fd for ever, holding
                # its stderr open: end everything it started.
                self.group.kill_all()
                raise

        fsize = None if self.ctx.meter is None else self.ctx.meter.quota.disk_bytes

        def preexec() -> None:
            self.group.join()
            set_fsize(fsize)

        try:
            with os.fdopen(program_write, "wb") as program:  # far less than a pipe holds
                program.write(LAUNCHER.encode())
            passed = (info_write, program_read) + \
                ((block_read, seccomp_read) if self.run_as is not None else ())
            launcher = await Launcher.start(
                self.command(info_write, program_read, block_read, seccomp_read), preexec,
                pass_fds=passed, started=started,
                user=str(self.run_as) if self.run_as is not None else "-")
        except (OSError, ValueError) as exc:
            raise LauncherGone(f"bubblewrap did not report its sandbox: {exc}") from exc
        finally:
            discard_fds(info_read, info_write, program_read,
                        *((block_read, block_write, seccomp_read)
                          if self.run_as is not None else ()))
        info = reported[0]
        inner = int(str(info["child-pid"]))
        try:
            launcher.watch(inner)
        except OSError as exc:
            await launcher.close()
            raise LauncherGone(f"the sandbox's launcher exited: {exc}") from exc
        self.launcher, self.mounted = launcher, mounted
        self.setuid.reset()  # a full walk, and watches from here on
        self.keep = frozenset({launcher.proc.pid, inner})
        self.oom_seen = self.group.oom_kills()
        return launcher

    async def _ready(self) -> Launcher:
        """The running sandbox, made (again) when it is gone, was not wiped or mounts stale
        paths."""
        launcher = self.launcher
        if launcher is not None and await launcher.settle() \
                and self.mounted == self.mount_key():
            return launcher
        return await self._start()

    def _sweep(self) -> None:
        """Kill whatever runs in the agent's cgroup besides the sandbox itself."""
        count = self.group.task_count()
        # The sandbox's own processes are single-threaded: no more tasks, nothing else.
        if count is not None and count <= len(self.keep):
            return
        self.group.kill_all(keep=self.keep)

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
        wall = min(timeout, limits.wall_seconds) if timeout else limits.wall_seconds
        async with self.lock:
            started = time.perf_counter()
            try:
                launcher = await self._ready()
            except LauncherGone as exc:
                return RunResult(None, "", str(exc), time.perf_counter() - started,
                                 "denied", f"could not start the sandbox: {exc}")
            try:
                result = await self._run(launcher, argv, cwd, full_env, limits, wall)
            except LauncherGone:
                # The request never reached it (it died since the last command): the
                # command has not run, so it can run once in a new sandbox.
                try:
                    launcher = await self._start()
                except LauncherGone as exc:
                    return RunResult(None, "", str(exc), time.perf_counter() - started,
                                     "denied", f"could not start the sandbox: {exc}")
                result = await self._run(launcher, argv, cwd, full_env, limits, wall)
            stripped = self.setuid.check()
            result = await checked(result, self.ctx.meter, self.setuid.take_touched())
        if stripped:
            return RunResult(result.exit_code, result.stdout, result.stderr, result.duration,
                             "denied", "removed the setuid/setgid bit from "
                             + ", ".join(stripped[:5]))
        return result

    async def _run(self, launcher: Launcher, argv: Sequence[str], cwd: Path,
                   env: Mapping[str, str], limits: Limits, wall: float) -> RunResult:
        """One command in the running sandbox. Raises LauncherGone only when the request
        could not be sent (the command did not start)."""
        started = time.perf_counter()
        out_read, out_write = make_pipe()
        err_read, err_write = make_pipe()
        try:
            exited = await launcher.spawn(argv, cwd.resolve(), env, out_write, err_write)
        except LauncherGone:
            discard_fds(out_read, err_read)
            raise
        except OSError as exc:
            discard_fds(out_read, err_read)
            return RunResult(None, "", str(exc), time.perf_counter() - started, "denied",
                             f"could not start {argv[0]!r}: {exc}")
        finally:
            discard_fds(out_write, err_write)
        loop = asyncio.get_running_loop()
        transports = []
        outcome: list[Exit | BaseException] = []
        try:
            streams = []
            for fd in (out_read, err_read):
                reader = asyncio.StreamReader(limit=1 << 20)
                transport, _ = await loop.connect_read_pipe(
                    lambda r=reader: asyncio.StreamReaderProtocol(r),  # type: ignore[misc]
                    os.fdopen(fd, "rb", 0))
                transports.append(transport)
                streams.append(reader)
            result = await supervise(streams[0], streams[1], _exit_code(exited, outcome),
                                     limits, wall, started, self._sweep, self.ctx.meter)
        except BaseException:
            self._sweep()  # supervise did not get to it (cancelled, say)
            raise
        finally:
            for transport in transports:
                transport.close()
        oom, self.oom_seen = self.oom_seen, self.group.oom_kills()
        if self.oom_seen > oom:
            return RunResult(None, result.stdout, result.stderr, result.duration, "memory",
                             f"killed at the {limits.memory_mb} MB memory limit")
        problem = outcome[0] if outcome else None
        if isinstance(problem, LauncherGone):
            return RunResult(None, result.stdout, result.stderr, result.duration, "denied",
                             "the sandbox ended while the command ran")
        if isinstance(problem, BaseException):
            return RunResult(None, "", str(problem), result.duration, "denied",
                             f"could not start {argv[0]!r}: {problem}")
        return result

    async def close(self) -> None:
        if self.launcher is not None:
            await self.launcher.close()
            self.launcher = None
        self.group.remove()
        self.setuid.close()


def _mount_points(targets: Sequence[Path]) -> list[str]:
    """`--perms 0755 --dir` for every folder above the targets that the sandbox does not
    have yet (its root holds only /usr, the links and /tmp at this point), shallow first."""
    made = {Path("/"), Path("/usr"), Path("/tmp"), Path("/dev"), Path("/proc"), Path("/etc")}
    made.update(Path("/") / link for link in ("bin", "lib", "lib32", "lib64", "libx32",
                                               "sbin"))
    folders: set[Path] = set()
    for target in targets:
        if any(target.is_relative_to(m) and m != Path("/") for m in
               (Path("/usr"), Path("/proc"), Path("/dev"))):
            continue
        folders.update(p for p in target.parents if p not in made)
    args: list[str] = []
    for folder in sorted(folders, key=lambda p: (len(p.parts), str(p))):
        args += ["--perms", "0755", "--dir", str(folder)]
    return args


async def _read_info(fd: int) -> dict[str, object]:
    """bubblewrap's JSON report on its info fd (non-blocking), once all of it is there (it
    comes in several writes)."""
    loop = asyncio.get_running_loop()
    data = b""
    deadline = loop.time() + 30
    while True:
        ready = loop.create_future()
        loop.add_reader(fd, lambda f=ready: f.done() or f.set_result(None))
        try:
            await asyncio.wait_for(ready, max(deadline - loop.time(), 0))
        finally:
            loop.remove_reader(fd)
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            raise OSError("bubblewrap exited before reporting its sandbox")
        data += chunk
        try:
            return json.loads(data)  # type: ignore[no-any-return]
        except ValueError:
            continue  # the rest is still on its way


def _write_map(pid: int, run_as: RunAs) -> None:
    """The sandbox's user namespace: root and the command user, each mapped to itself.

    bubblewrap needs root mapped to set up mounts as root (worktrees under a 0700 folder);
    the launcher then starts commands as the command user, who maps to the same unprivileged
    uid on the host. Nothing else of the host's users exists inside.
    """
    Path(f"/proc/{pid}/uid_map").write_text(f"0 0 1\n{run_as.uid} {run_as.uid} 1\n")
    Path(f"/proc/{pid}/gid_map").write_text(f"0 0 1\n{run_as.gid} {run_as.gid} 1\n")


async def _exit_code(exited: asyncio.Future[Exit],
                     outcome: list[Exit | BaseException]) -> int | None:
    """The command's exit code; None (and why, in `outcome`) when it did not start or its
    sandbox went away under it."""
    try:
        result = await exited
    except OSError as exc:
        outcome.append(exc)
        return None
    outcome.append(result)
    return result.code


class BwrapBackend:
    name = "bwrap"
    confines = True

    def __init__(self, limits: Limits | None = None, env_allow: Sequence[str] = (),
                 ro_paths: Sequence[Path] | None = None, run_as: RunAs | None = None) -> None:
        binary = shutil.which("bwrap")
        if binary is None:
            raise SandboxError("bubblewrap is not installed (apt-get install bubblewrap)")
        self.binary = binary
        self.limits = limits or Limits()
        self.env_allow = list(env_allow)
        self.ro_paths = list(ro_paths) if ro_paths is not None else toolchain_paths()
        self.run_as = run_as
        if run_as is not None and not _supports(binary, "--userns-block-fd"):
            raise SandboxError("this bubblewrap cannot start commands as another user "
                               "(it lacks --userns-block-fd; 0.5 or newer has it)")
        reason = cgroups.available()
        if reason is not None:
            raise SandboxError(f"bwrap needs pids and memory cgroups for its limits: {reason}")

    async def open(self, ctx: SandboxContext) -> BwrapSandbox:
        if not ctx.env_allow:
            ctx.env_allow = self.env_allow
        await asyncio.to_thread(hand_over, ctx.worktree, self.run_as)
        return BwrapSandbox(ctx, self.limits, self.binary, self.ro_paths, self.run_as)
