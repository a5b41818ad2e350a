"""The launcher: a small process inside an agent's sandbox that starts each of its commands.

Setting up a sandbox is what costs (bubblewrap's namespaces and mounts, several
milliseconds of kernel work, and moving a process into a cgroup, about 13 ms on cgroup v1),
while forking inside one that is already set up costs a fraction of a millisecond. So each
agent gets one sandbox, whose pid 1 is this launcher, and every command is a child of it:
commands inherit the namespaces, the mounts and the agent's cgroups for free.

The engine talks to the launcher over a SOCK_SEQPACKET socket, one JSON message each way
per command. The request carries the write ends of the command's stdout and stderr pipes,
so the engine reads and caps the output itself. The engine does not wait for an answer
before reading: the one answer comes when the command is over, or at once if it could not
start.

When a command's process exits, the launcher kills everything else in the sandbox (as pid 1
of the sandbox's pid namespace, `kill(-1)` reaches every process but itself), reaps it all,
and wipes the scratch space (/tmp, /dev/shm, POSIX message queues, SysV IPC) before it
reports the exit: the next command starts from the same empty state a sandbox of its own
would give it. If it cannot wipe, it says so and exits, and the engine makes a new sandbox.
The engine does not rely on this for its limits: it checks the agent's cgroup after every
command and kills whatever is there besides the sandbox itself.

Commands run with the launcher's uid, so the launcher keeps them from reaching it: it is not
dumpable (no ptrace, /proc/1/mem, fd or environ for anyone without CAP_SYS_PTRACE, which
commands never have), and as pid 1 it only receives the signals it handles (SIGCHLD).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Largest request (argv + env as JSON) the launcher accepts; execve refuses far less anyway
# (a single argument may not exceed 128 KiB).
MAX_REQUEST = 1 << 21

# Where the sandbox shows the launcher's program (read-only), so that `ps` shows a path.
LAUNCHER_PATH = "/run/factory-launcher.py"

# Runs as the sandbox's pid 1 under `python -I -S`: argv[1] is the socket's fd, argv[2] the
# largest request, argv[3] the command user as "uid:gid" ("-": commands run as the launcher).
LAUNCHER = r"""
import contextlib, ctypes, json, os, selectors, signal, socket, stat, subprocess, sys

libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE, 0
    sys.exit("launcher: cannot make itself undumpable")
sock = socket.socket(fileno=int(sys.argv[1]))
MAX = int(sys.argv[2])
USER = None if sys.argv[3] == "-" else tuple(int(n) for n in sys.argv[3].split(":"))
SCRATCH = [p for p in ("/tmp", "/dev/shm", "/dev/mqueue") if os.path.isdir(p)]
wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda *_: None)
signal.signal(signal.SIGINT, signal.SIG_DFL)  # as pid 1: commands cannot send it either
running = {}  # pid -> (request id, Popen)

def send(msg):
    sock.send(json.dumps(msg).encode())

def shape(path):
    st = os.lstat(path)
    return st.st_mode, st.st_uid, st.st_gid, st.st_ino, st.st_dev

# What is in the scratch space before any command ran: only what bubblewrap made for mount
# points below it (the directories above a worktree under /tmp); it stays.
def skeleton(path, dev, found):
    with os.scandir(path) as entries:
        for entry in entries:
            found.add(entry.path)
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode) and st.st_dev == dev:
                skeleton(entry.path, dev, found)
    return found

def remove(path, st, dev):
    # Never across a mount: a renamed mount-point directory may hold the worktree.
    if st.st_dev != dev:
        raise OSError(f"{path} is another mount")
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    # Even if a command took the permissions away (CAP_FOWNER when commands run as another
    # user; then only "other" bits apply to the launcher: it is about to go anyway).
    os.chmod(path, 0o777)
    with os.scandir(path) as entries:
        for entry in entries:
            remove(entry.path, entry.stat(follow_symlinks=False), dev)
    os.rmdir(path)

def clear(path, dev):
    with os.scandir(path) as entries:
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            if entry.path not in KEEP:
                remove(entry.path, st, dev)
            elif stat.S_ISDIR(st.st_mode) and st.st_dev == dev:
                clear(entry.path, dev)

DROPS = (("shm", lambda i: libc.shmctl(i, 0, None)),  # IPC_RMID
         ("sem", lambda i: libc.semctl(i, 0, 0)),
         ("msg", lambda i: libc.msgctl(i, 0, None)))

def ipc_ids():
    found = []
    for kind, drop in DROPS:
        with open(f"/proc/sysvipc/{kind}") as table:
            found += [(kind, drop, int(line.split()[1]))
                      for line in table.readlines()[1:] if line.strip()]
    return found

def drop_ipc(found):
    for kind, drop, ipc_id in found:
        if drop(ipc_id) != 0:
            raise OSError(ctypes.get_errno(), f"cannot remove SysV {kind} {ipc_id}")

def wipe_ipc():
    found = ipc_ids()
    if not found:
        return
    if USER is None:
        drop_ipc(found)
        return
    # Only their owner (the command user) may remove them: a child becomes it to do so.
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(USER[1])
            os.setuid(USER[0])
            drop_ipc(found)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise OSError("cannot remove the SysV IPC objects a command left")

def wipe():
    for path in SCRATCH:
        if shape(path) != BASELINE[path]:
            raise OSError(f"{path} was changed")
        clear(path, BASELINE[path][4])
    wipe_ipc()

def finish(rid, status):
    # Everything the command left, then the scratch space; only then is it over.
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    code = os.waitstatus_to_exitcode(status)
    msg = {"id": rid, "exit": code if code >= 0 else 128 - code, "clean": True}
    try:
        wipe()
    except Exception as exc:
        msg.update(clean=False, why=f"cannot wipe the sandbox: {exc}")
    send(msg)
    if not msg["clean"]:
        sys.exit(1)

def reap():
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        entry = running.pop(pid, None)
        if entry is not None:
            rid, proc = entry
            proc.returncode = 0  # reaped here: Popen must never wait for it
            finish(rid, status)

def start(req, fds):
    rid = req["id"]
    if running:
        send({"id": rid, "error": "another command is still running"})
        return
    try:
        if USER is None:
            who = {"cwd": req["cwd"]}
        else:
            # Into the folder as the command user (the launcher itself may not enter a
            # folder of theirs): the launcher is single-threaded, so preexec_fn is safe.
            cwd = req["cwd"]
            who = {"user": USER[0], "group": USER[1], "extra_groups": [],
                   "preexec_fn": lambda: os.chdir(cwd)}
            if not os.path.isabs(cwd):
                raise ValueError(f"not an absolute folder: {cwd}")
        proc = subprocess.Popen(req["argv"], env=req["env"], stdin=subprocess.DEVNULL,
                                stdout=fds[0], stderr=fds[1], start_new_session=True, **who)
    except subprocess.SubprocessError as exc:  # the chdir in preexec_fn
        send({"id": rid, "error": f"cannot enter {req['cwd']}: no such folder, or the command "
              f"user may not enter it ({exc})"})
    except (OSError, ValueError) as exc:
        send({"id": rid, "error": str(exc)})
    else:
        running[proc.pid] = (rid, proc)

BASELINE = {p: shape(p) for p in SCRATCH}
KEEP = set()
for p in SCRATCH:
    skeleton(p, BASELINE[p][4], KEEP)
selector = selectors.DefaultSelector()
selector.register(sock, selectors.EVENT_READ)
selector.register(wake_r, selectors.EVENT_READ)
send({"ready": True})
while True:
    events = selector.select()
    with contextlib.suppress(BlockingIOError):
        while os.read(wake_r, 4096):
            pass
    reap()
    if any(key.fileobj is sock for key, _ in events):
        msg, fds, flags, _ = socket.recv_fds(sock, MAX, 2, socket.MSG_CMSG_CLOEXEC)
        if not msg:
            break
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) != 2:
                sys.exit("launcher: a malformed request")
            start(json.loads(msg), fds)
        finally:
            for fd in fds:
                os.close(fd)
"""


class LauncherGone(ConnectionError):
    """The launcher (and so its sandbox) is not there any more."""


@dataclass(frozen=True)
class Exit:
    code: int  # 128 + n for a command killed by signal n, as a shell reports it
    clean: bool  # the launcher emptied the sandbox afterwards; if not, it has exited
    why: str = ""


class Launcher:
    """The engine's end of one sandbox's launcher."""

    def __init__(self, proc: asyncio.subprocess.Process, sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        self._next = 0
        self._exits: dict[int, asyncio.Future[Exit]] = {}
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.clean = True  # False once a command's exit came without the wipe
        self.pidfd: int | None = None  # the launcher itself (the sandbox's pid 1), by pidfd
        self._last: asyncio.Future[Exit] | None = None  # the latest command's exit
        self.stderr = bytearray()
        self._pumps = [asyncio.ensure_future(self._read()),
                       asyncio.ensure_future(self._read_stderr())]

    @classmethod
    async def start(cls, prefix: Sequence[str], preexec: Callable[[], None],
                    pass_fds: Sequence[int] = (), timeout: float = 30.0,
                    started: Callable[[], Awaitable[None]] | None = None,
                    user: str = "-") -> Launcher:
        """Start `prefix + [python, LAUNCHER_PATH]` (the sandbox around it, which shows
        LAUNCHER there) and wait until it answers. Raises LauncherGone with whatever the
        sandbox said on stderr if it does not.

        `started` runs once the process exists, before the wait (bubblewrap's report, the
        user namespace's map); `user` is the command user ("uid:gid", or "-").
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # A request is one message: room for the largest one, argv and env included.
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_REQUEST + 4096)
        ours.setblocking(False)
        try:
            proc = await asyncio.create_subprocess_exec(
                *prefix, sys.executable, "-I", "-S", LAUNCHER_PATH, str(theirs.fileno()),
                str(MAX_REQUEST), user, pass_fds=(theirs.fileno(), *pass_fds),
                preexec_fn=preexec,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
        except (OSError, subprocess.SubprocessError) as exc:
            ours.close()  # no bubblewrap, say, or the cgroup refused the process
            raise LauncherGone(f"the sandbox did not start: {exc}") from exc
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        launcher = cls(proc, ours)
        try:
            if started is not None:
                await asyncio.wait_for(started(), timeout)
            await asyncio.wait_for(asyncio.shield(launcher._ready), timeout)
        except (OSError, ValueError, TimeoutError) as exc:
            await launcher.close()
            said = launcher.stderr.decode("utf-8", "replace").strip()
            raise LauncherGone(said or f"the sandbox did not start: {exc or 'timed out'}") \
                from None
        return launcher

    def watch(self, pid: int) -> None:
        """Hold the launcher's process (host pid, which bubblewrap reports) by a pidfd: its
        death shows at once, and it can be killed without a pid-reuse race."""
        self.pidfd = os.pidfd_open(pid)

    @property
    def usable(self) -> bool:
        """Running, and clean after its last command."""
        if not self.clean or self.proc.returncode is not None or self._pumps[0].done():
            return False
        if self.pidfd is None:
            return True
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return not poller.poll(0)  # readable once the process has exited

    async def settle(self, timeout: float = 10.0) -> bool:
        """Wait until the latest command is over (its runner may have been cancelled before
        the launcher reported it); then whether the launcher can take the next one."""
        last = self._last
        if last is not None and not last.done():
            with contextlib.suppress(TimeoutError, OSError):  # how it ended is not ours
                await asyncio.wait_for(asyncio.shield(last), timeout)
            if not last.done():
                return False
        return self.usable

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await loop.sock_recv(self.sock, 65536):
                msg = json.loads(data)
                if msg.get("ready"):
                    if not self._ready.done():
                        self._ready.set_result(None)
                    continue
                done = self._exits.pop(int(msg["id"]), None)
                if "error" in msg:
                    if done is not None and not done.done():
                        done.set_exception(OSError(str(msg["error"])))
                        done.exception()  # its runner may be gone (cancelled)
                    continue
                exit = Exit(int(msg["exit"]), bool(msg["clean"]), str(msg.get("why", "")))
                self.clean = self.clean and exit.clean
                if done is not None and not done.done():
                    done.set_result(exit)
        except (OSError, ValueError, KeyError):
            pass
        finally:
            gone = LauncherGone("the sandbox's launcher exited")
            for fut in [self._ready, *self._exits.values()]:
                if not fut.done():
                    fut.set_exception(gone)
                    fut.exception()  # nobody may be waiting: asyncio must not complain
            self._exits.clear()

    async def _read_stderr(self) -> None:
        """Keep what bubblewrap or the launcher say (the last few KiB): why a start failed."""
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(4096):
            self.stderr += chunk
            del self.stderr[:-4096]

    async def _send(self, data: bytes, fds: Sequence[int]) -> None:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.sock.sendmsg([data], ancillary)
                return
            except BlockingIOError:
                writable = loop.create_future()
                loop.add_writer(self.sock, writable.set_result, None)
                try:
                    await writable
                finally:
                    loop.remove_writer(self.sock)
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise LauncherGone("the sandbox's launcher exited") from exc

    async def spawn(self, argv: Sequence[str], cwd: Path, env: Mapping[str, str],
                    stdout: int, stderr: int) -> asyncio.Future[Exit]:
        """Ask for argv to be started with the given pipe ends; returns its future Exit.

        The future raises OSError when the program could not start (no such program or
        directory...) and LauncherGone when the launcher exits first; spawn itself raises
        LauncherGone when there is no launcher to ask, OSError for an oversized request.
        """
        if not self.usable:
            raise LauncherGone("the sandbox's launcher exited")
        data = json.dumps({"id": self._next + 1, "argv": list(argv), "cwd": str(cwd),
                           "env": dict(env)}).encode()
        if len(data) > MAX_REQUEST:
            raise OSError(f"the command and its environment exceed {MAX_REQUEST} bytes")
        self._next += 1
        exited: asyncio.Future[Exit] = asyncio.get_running_loop().create_future()
        self._exits[self._next] = exited
        self._last = exited
        try:
            await self._send(data, [stdout, stderr])
        except BaseException:
            self._exits.pop(self._next, None)
            raise
        return exited

    async def close(self) -> None:
        if self.pidfd is not None:
            # The sandbox's pid 1 first: bubblewrap then reaps it and exits, so no zombie is
            # left to whatever reaps orphans on the host.
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), 5)
            os.close(self.pidfd)
            self.pidfd = None
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self.sock.close()


def make_pipe() -> tuple[int, int]:
    """A pipe for a command's output; the write end goes to the launcher over the socket."""
    return os.pipe()


def discard_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


__all__ = ["LAUNCHER", "LAUNCHER_PATH", "Exit", "Launcher", "LauncherGone", "discard_fds",
           "make_pipe"]
