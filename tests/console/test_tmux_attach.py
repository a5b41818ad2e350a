"""End to end: `factory console` in a real terminal (tmux) attached to a real `factory daemon`.

What a person relies on, with the demo's six branches waiting for approval:

- `factory console` in a repository whose daemon runs attaches to it by itself, and a key
  press there (`a` in the inbox) reaches the daemon's engine: the header and the entry change
  on screen, and the daemon's own state has the approval;
- quitting the console (`q`) detaches it: the command exits 0 and the daemon goes on serving;
- a second console opened later shows the same state, the first one's approval included;
- when the daemon stops, an attached console says so in its header and still quits cleanly;
- SIGTERM stops the daemon with status 0 and removes its socket.

Every wait polls the screen (or the daemon's output) with a timeout, and a wait that times out
shows what it last saw.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from console.attached import AttachedClient
from console.cli import socket_path
from tests.console.conftest import ENTRIES
from tests.console.test_tmux_e2e import (
    EXIT_MARK,
    POLL,
    QUEUE_HEADING,
    Terminal,
    _factory_command,
    approve_in_inbox,
    header,
    inbox_keys,
    queue_state,
    wait_until,
)

pytestmark = pytest.mark.slow


def daemon_queue(path: Path) -> dict[str, dict[str, Any]]:
    """The queue as the daemon serving `path` has it now (a client of its own, then gone)."""

    async def read() -> dict[str, dict[str, Any]]:
        client = await AttachedClient.connect(path)
        try:
            return (await client.snapshot()).tables["queue"]
        finally:
            await client.close()

    return asyncio.run(read())


def connections(path: Path) -> int:
    """How many connections the daemon listening at `path` holds now (Linux: accepted unix
    sockets carry their listener's path in /proc/net/unix, in state 03, connected)."""
    lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    return sum(f[5] == "03" and f[-1] == str(path) for f in map(str.split, lines) if len(f) == 8)


def wait_serving(proc: subprocess.Popen[bytes], out: Path, err: Path, timeout: float) -> str:
    """The daemon's 'serving ... on ...' line, once it has printed it."""
    deadline = time.monotonic() + timeout
    while True:
        text = out.read_text(errors="replace")
        line = next((x for x in text.splitlines() if x.startswith("serving ")), None)
        if line is not None:
            return line
        if proc.poll() is not None or time.monotonic() > deadline:
            state = (f"exited with status {proc.returncode}" if proc.returncode is not None
                     else f"said nothing in {timeout:.0f}s")
            raise AssertionError(f"factory daemon {state}; stdout:\n{text}\nstderr:\n"
                                 f"{err.read_text(errors='replace')}")
        time.sleep(POLL)


def exit_status(term: Terminal, timeout: float) -> str:
    """Wait for the console's command to end in this pane; its exit status."""
    done = term.wait_for(EXIT_MARK, timeout, "the factory console to exit")
    status = re.search(re.escape(EXIT_MARK) + r"(\d+)\]", done)
    assert status is not None, f"no exit status on screen:\n{done}"
    return status.group(1)


def test_consoles_attach_to_a_daemon_and_come_and_go(demo_root: Path, tmp_path: Path) -> None:
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.fail("tmux is not installed: this end-to-end test needs it "
                    "(apt-get install tmux, or `make sysdeps`)")
    factory = _factory_command()
    sock = socket_path(demo_root)
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    out, err = tmp_path / "daemon.out", tmp_path / "daemon.err"
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    # No --root and no --attach: the console finds the repository from its folder and attaches
    # because the daemon's socket answers. After it, the shell prints its exit status.
    console = (f"cd {shlex.quote(str(demo_root))} && env {assignments} "
               f"{shlex.quote(factory)} console; echo \"{EXIT_MARK}$?]\"; sleep 600")
    name = f"factory-attach-{uuid.uuid4().hex[:10]}"
    first = Terminal(tmux, name, f"{name}-1")
    second = Terminal(tmux, name, f"{name}-2")
    with out.open("wb") as stdout, err.open("wb") as stderr:
        daemon = subprocess.Popen([factory, "daemon", "--root", str(demo_root)],
                                  stdout=stdout, stderr=stderr, cwd=tmp_path,
                                  env={**os.environ, **env})
    try:
        line = wait_serving(daemon, out, err, 60)
        assert f"on {sock}" in line, line
        assert sock.is_socket()

        # The first console attaches and shows the daemon's state: every entry waits.
        first.start(console)
        first.wait_for(lambda s: header(s).get("approvals") == ENTRIES, 60,
                       f"the header to show {ENTRIES} approvals")
        # It holds a connection to the daemon (the start-up probe's has gone by now), and
        # its header says where the engine runs.
        wait_until(first, lambda: connections(sock), 1, "the daemon's connections")
        assert f"attached: daemon {daemon.pid}" in first.last.splitlines()[0], first.last
        # `a` approves the first entry through the daemon: the header and the inbox change.
        first.keys("5")
        key = approve_in_inbox(first, 0, ENTRIES)
        first.keys("4")
        first.wait_for(QUEUE_HEADING, 10)
        first.wait_for(lambda s: queue_state(s, key) == "queued", 10,
                       f"{key} to be queued (approved) in the queue pane")

        # q detaches: the console exits cleanly, the daemon goes on serving, and its own
        # state has the approval (so it was made through the daemon, not beside it).
        first.keys("q")
        assert exit_status(first, 30) == "0", f"the console exited badly:\n{first.last}"
        assert daemon.poll() is None, (f"quitting the console stopped the daemon (status "
                                       f"{daemon.returncode}):\n{err.read_text()}")
        wait_until(first, lambda: connections(sock), 0, "the daemon's connections")
        queue = daemon_queue(sock)
        assert queue[key]["approval"] == "approved", queue[key]
        assert queue[key]["status"] == "queued", queue[key]
        assert sum(q["approval"] == "pending" for q in queue.values()) == ENTRIES - 1

        # A second console, opened afterwards, shows the same state.
        second.start(console)
        second.wait_for(lambda s: header(s).get("approvals") == ENTRIES - 1, 60,
                        f"the second console's header to show {ENTRIES - 1} approvals")
        wait_until(second, lambda: connections(sock), 1, "the daemon's connections")
        second.keys("4")
        second.wait_for(lambda s: queue_state(s, key) == "queued", 10,
                        f"{key} queued (approved) in the second console's queue pane")
        second.keys("5")
        inbox = second.wait_for(lambda s: len(inbox_keys(s)) == ENTRIES - 1, 10,
                                f"{ENTRIES - 1} entries in the second console's inbox")
        assert key not in inbox_keys(inbox), f"{key} is in the second inbox:\n{inbox}"

        # SIGTERM stops the daemon cleanly; the console still attached says so and quits.
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, err.read_text()
        assert not sock.exists(), "a clean stop removes the socket"
        assert "stopping" in out.read_text(), out.read_text()
        second.wait_for(lambda s: "DETACHED" in s.splitlines()[0] if s else False, 10,
                        "the second console's header to say it is detached")
        second.keys("q")
        assert exit_status(second, 30) == "0", f"the console exited badly:\n{second.last}"
    finally:
        if daemon.poll() is None:
            daemon.kill()
        daemon.wait()
        second.kill()
        first.kill()
