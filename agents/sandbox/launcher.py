"""A per-agent launcher that lives inside the agent's cgroups and starts its commands.

Moving a process into a cgroup costs a lot on some kernels (about 13 ms per command on
these machines, more than bubblewrap itself), while a child simply inherits its parent's
groups. So each sandbox starts one small launcher, moves it into the groups once, and asks
it to spawn every command; the command's stdout and stderr are pipes the engine made and
passed over a unix socket, so the engine reads and caps the output itself and signals the
command's process group directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# Runs in the launcher process: one JSON request plus two fds in, "pid" and "exit" lines out.
LAUNCHER = r"""
import json, os, socket, subprocess, sys, threading
sock = socket.socket(fileno=int(sys.argv[1]))
lock = threading.Lock()
def reply(msg):
    with lock:
        sock.sendall((json.dumps(msg) + "\n").encode())
def wait(proc, rid):
    reply({"id": rid, "exit": proc.wait()})
while True:
    msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 2)
    if not msg:
        break
    req = json.loads(msg)
    try:
        proc = subprocess.Popen(req["argv"], cwd=req["cwd"], env=req["env"],
                                stdin=subprocess.DEVNULL, stdout=fds[0], stderr=fds[1],
                                start_new_session=True)
    except OSError as exc:
        reply({"id": req["id"], "error": str(exc)})
    else:
        reply({"id": req["id"], "pid": proc.pid})
        threading.Thread(target=wait, args=(proc, req["id"]), daemon=True).start()
    finally:
        for fd in fds:
            os.close(fd)
"""


class Launcher:
    def __init__(self, proc: asyncio.subprocess.Process, sock: socket.socket,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proc = proc
        self.sock = sock
        self.reader = reader
        self.writer = writer
        self._next = 0
        self._waiting: dict[int, asyncio.Future[dict[str, object]]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._pump = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, preexec: Callable[[], None]) -> Launcher:
        ours, theirs = socket.socketpair()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", "-c", LAUNCHER, str(theirs.fileno()),
            pass_fds=(theirs.fileno(),), preexec_fn=preexec,
            stdin=asyncio.subprocess.DEVNULL,
        )
        theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        return cls(proc, ours, reader, writer)

    async def _read(self) -> None:
        while line := await self.reader.readline():
            msg = json.loads(line)
            rid = int(msg["id"])
            if "exit" in msg:
                fut = self._exits.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(int(msg["exit"]))
            else:
                waiting = self._waiting.pop(rid, None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(msg)
        for fut in [*self._waiting.values(), *self._exits.values()]:
            if not fut.done():
                fut.set_exception(ConnectionError("the sandbox launcher exited"))

    async def spawn(self, argv: Sequence[str], cwd: Path, env: Mapping[str, str],
                    stdout: int, stderr: int) -> tuple[int, asyncio.Future[int]]:
        """Start argv with the given pipe ends; returns its pid and a future exit code."""
        self._next += 1
        rid = self._next
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[dict[str, object]] = loop.create_future()
        exited: asyncio.Future[int] = loop.create_future()
        self._waiting[rid] = answer
        self._exits[rid] = exited
        request = json.dumps({"id": rid, "argv": list(argv), "cwd": str(cwd),
                              "env": dict(env)}).encode()
        socket.send_fds(self.sock, [request], [stdout, stderr])
        msg = await answer
        if "error" in msg:
            self._exits.pop(rid, None)
            raise OSError(str(msg["error"]))
        return int(msg["pid"]), exited  # type: ignore[call-overload]

    async def close(self) -> None:
        self._pump.cancel()
        self.writer.close()
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        await self.proc.wait()
        self.sock.close()


def make_pipe() -> tuple[int, int]:
    read, write = os.pipe()
    os.set_inheritable(write, True)
    return read, write


def discard_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


__all__ = ["Launcher", "discard_fds", "make_pipe", "subprocess"]
