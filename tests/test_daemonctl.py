"""`factory up`, `factory down` and the daemon in `factory status`, with real daemons.

What a person (or a script) relies on:

- `factory up` returns once the daemon's socket answers: the next command finds it serving,
  detached from the terminal (its own session), its pid in `.factory/daemon.pid`, its output
  in `.factory/daemon.log`; a second `factory up` says one runs and starts nothing (nor do
  two at once); `factory status` (text and --json) says which pid serves, on which socket,
  since when;
- `factory down` stops it as SIGTERM does and leaves no process, no pid file, no socket;
- a pid file whose process is gone, or whose pid now belongs to another program, is
  reported and removed, and that program is never signalled;
- a daemon that cannot start is reported with the end of its log, and one that does not
  answer in time is stopped: neither leaves a process behind;
- `factory up --watch` starts the daemon in watch mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from console import daemonctl
from console.cli import socket_path
from tests.test_cli import factory

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from agents import demo

    root = demo.build(tmp_path_factory.mktemp("daemonctl") / "demo", "none")
    # A store, as any repository has once a daemon or a run has opened it.
    assert factory("up", cwd=root).returncode == 0
    assert factory("down", cwd=root).returncode == 0
    (root / ".factory" / "daemon.log").unlink()
    return root


@pytest.fixture
def root(built: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh copy of the demo project (never run); whatever daemon a test left is
    stopped after it."""
    import shutil

    copy = tmp_path / "demo"
    shutil.copytree(built, copy, symlinks=True)
    yield copy
    for pid in daemons_of(copy):
        os.kill(pid, 15)
        wait_gone(pid)


def daemons_of(root: Path) -> list[int]:
    """Every live `factory daemon` process of root (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = daemonctl.cmdline(int(entry.name))
            if argv is not None and daemonctl.is_daemon_of(argv, root) and "--root" in argv:
                found.append(int(entry.name))
    return found


def wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while daemonctl.cmdline(pid) is not None:
        assert time.monotonic() < deadline, f"pid {pid} still runs"
        time.sleep(0.05)


def status(root: Path) -> dict[str, object]:
    done = factory("status", "--json", cwd=root)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["daemon"]  # type: ignore[no-any-return]


def test_up_serves_at_once_and_down_leaves_nothing(root: Path) -> None:
    pid_file = root / ".factory" / "daemon.pid"
    up = factory("up", cwd=root)
    assert up.returncode == 0, up.stderr
    # Returned: the socket answers now, for the daemon its pid file names.
    info = daemonctl.hello(socket_path(root))
    assert info is not None and info["root"] == str(root.resolve())
    pid = int(pid_file.read_text())
    assert info["pid"] == pid and f"pid {pid}" in up.stdout
    assert daemons_of(root) == [pid]
    assert os.getsid(pid) == pid  # its own session: closing this terminal does not stop it
    assert "serving" in (root / ".factory" / "daemon.log").read_text()

    shown = status(root)
    assert shown["running"] is True and shown["kind"] == "daemon" and shown["pid"] == pid
    assert shown["socket"] == str(socket_path(root))
    assert isinstance(shown["since"], float) and time.time() - 120 < shown["since"] <= time.time()
    text = factory("status", cwd=root)
    assert f"daemon: running, pid {pid} since " in text.stdout, text.stdout

    again = factory("up", cwd=root)
    assert again.returncode == 0, again.stderr
    assert f"a daemon already runs for {root}: pid {pid}" in again.stdout
    assert daemons_of(root) == [pid]
    as_json = json.loads(factory("up", "--json", cwd=root).stdout)
    assert as_json["pid"] == pid and as_json["started"] is False

    down = factory("down", cwd=root)
    assert down.returncode == 0, down.stderr
    assert f"daemon stopped (pid {pid})" in down.stdout
    assert daemonctl.cmdline(pid) is None  # down returned after it exited
    assert not pid_file.exists() and not socket_path(root).exists()
    assert "stopping: the store keeps every committed step" in \
        (root / ".factory" / "daemon.log").read_text()
    assert status(root)["running"] is False
    assert "daemon: not running" in factory("status", cwd=root).stdout
    twice = factory("down", cwd=root)
    assert twice.returncode == 0 and "no daemon runs" in twice.stdout


def test_two_ups_at_once_start_one_daemon(root: Path) -> None:
    command = [sys.executable, "-m", "console.cli", "up", "--json"]
    ups = [subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in ups]
    assert all(p.returncode == 0 for p in ups)
    assert sorted(r["started"] for r in results) == [False, True]
    assert results[0]["pid"] == results[1]["pid"] and daemons_of(root) == [results[0]["pid"]]
    assert factory("down", cwd=root).returncode == 0
    assert daemons_of(root) == []


def test_a_stale_pid_file_of_a_gone_process_is_reported_and_removed(root: Path) -> None:
    pid_file = root / ".factory" / "daemon.pid"
    gone = subprocess.Popen(["true"])
    gone.wait()
    pid_file.write_text(f"{gone.pid}\n")
    shown = status(root)
    assert shown["running"] is False and f"pid {gone.pid} is not running" in str(shown["stale"])
    assert "stale pid file" in factory("status", cwd=root).stdout
    down = factory("down", cwd=root)
    assert down.returncode == 0, down.stderr
    assert f"removed a stale pid file: pid {gone.pid} is not running" in down.stdout
    assert not pid_file.exists()

    pid_file.write_text(f"{gone.pid}\n")  # `up` clears one too, and starts the daemon
    up = factory("up", cwd=root)
    assert up.returncode == 0, up.stderr
    assert "removed a stale pid file" in up.stderr and "daemon started" in up.stdout
    assert int(pid_file.read_text()) != gone.pid
    assert factory("down", cwd=root).returncode == 0


def test_a_pid_reused_by_another_program_is_never_signalled(root: Path) -> None:
    pid_file = root / ".factory" / "daemon.pid"
    other = subprocess.Popen(["sleep", "60"])
    try:
        pid_file.write_text(f"{other.pid}\n")
        shown = status(root)
        assert shown["running"] is False
        assert f"pid {other.pid} is now another program (sleep 60)" in str(shown["stale"])
        down = factory("down", cwd=root)
        assert down.returncode == 0, down.stderr
        assert "is now another program" in down.stdout
        assert other.poll() is None  # untouched
        assert not pid_file.exists()
    finally:
        other.kill()
        other.wait()


def test_a_daemon_that_cannot_start_is_reported_with_its_log(root: Path) -> None:
    store = root / ".factory" / "factory.db"
    store.write_bytes(b"this is not a database" * 100)
    up = factory("up", cwd=root)
    assert up.returncode == 2
    assert "the daemon stopped as it started" in up.stderr
    assert "factory.db" in up.stderr  # the daemon's own error, from the end of its log
    assert daemons_of(root) == [] and not (root / ".factory" / "daemon.pid").exists()


def test_a_daemon_that_does_not_answer_in_time_is_stopped(root: Path) -> None:
    up = factory("up", "--wait", "0.05", cwd=root)
    assert up.returncode == 2
    assert "the daemon did not answer" in up.stderr and "within 0.05 s; stopped it" in \
        up.stderr
    assert daemons_of(root) == [] and not socket_path(root).exists()
    assert factory("up", cwd=root).returncode == 0  # nothing left in the way
    assert factory("down", cwd=root).returncode == 0


def test_up_watch_starts_the_daemon_in_watch_mode(root: Path) -> None:
    up = factory("up", "--watch", cwd=root)
    assert up.returncode == 0, up.stderr
    (pid,) = daemons_of(root)
    assert "--watch" in (daemonctl.cmdline(pid) or [])
    assert factory("down", cwd=root).returncode == 0


def test_a_consoles_own_engine_is_not_taken_for_a_daemon(root: Path, tmp_path: Path) -> None:
    """A console with no daemon to attach to starts an engine of its own, which stops when
    it quits: `factory up` must not call that a running daemon (it would be gone with the
    console), nor `factory down` stop it from under the console."""
    from tests.test_notify import Pty

    env = {**os.environ, "TERM": "xterm-256color", "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    console = Pty([sys.executable, "-m", "console.cli", "console"], root, env)
    try:
        console.wait_for(b"engine: pid", 0, 60, "the console's own engine")
        (engine,) = daemons_of(root)
        shown = status(root)
        assert shown["kind"] == "console" and shown["pid"] == engine
        assert shown["console"] == console.process.pid
        assert "the engine of a console" in factory("status", cwd=root).stdout
        up = factory("up", cwd=root)
        assert up.returncode == 2 and "stops when that console quits" in up.stderr
        down = factory("down", cwd=root)
        assert down.returncode == 2 and "not a daemon `factory down` stops" in down.stderr
        assert daemons_of(root) == [engine]
        os.write(console.master, b"q")  # quitting the console stops its engine
        console.process.wait(60)
        wait_gone(engine)
    finally:
        console.close()
    assert status(root)["running"] is False
