"""End to end in real terminals (tmux): an observing console beside a steering one, and both
outliving a restart of their daemon (`factory up`, `factory down`, `factory up`).

What a person relies on, with the demo's six branches waiting for approval:

- `factory console --observe` attaches read-only: its header says `observing: daemon PID`,
  an approval made in the other console shows up in it, and its own approve key is refused
  with "this console observes: read-only" (the daemon's state keeps the entry waiting);
- when the daemon stops (`factory down`) both consoles say so and keep running; when it is
  started again (`factory up`) both attach to the new daemon by themselves, show what was
  changed there (`factory approve`, run just after the restart), and go on following it: an
  approval made afterwards from the first console shows in the observer;
- both still quit cleanly afterwards.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from console.cli import socket_path
from tests.console.conftest import ENTRIES
from tests.console.test_tmux_attach import daemon_queue, exit_status
from tests.console.test_tmux_e2e import (
    EXIT_MARK,
    Terminal,
    _factory_command,
    approve_in_inbox,
    header,
    inbox_keys,
)

pytestmark = pytest.mark.slow

READ_ONLY = "this console observes: read-only"


def first_line(screen: str) -> str:
    return screen.splitlines()[0] if screen else ""


def test_an_observer_and_a_console_outlive_a_daemon_restart(demo_root: Path,
                                                             tmp_path: Path) -> None:
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.fail("tmux is not installed: this end-to-end test needs it "
                    "(apt-get install tmux, or `make sysdeps`)")
    factory = _factory_command()
    sock = socket_path(demo_root)
    pid_file = demo_root / ".factory" / "daemon.pid"
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "XDG_CONFIG_HOME": str(tmp_path / "xdg")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([factory, *args], cwd=demo_root, text=True, capture_output=True,
                              env={**os.environ, **env}, timeout=120)
        assert done.returncode == 0, f"factory {' '.join(args)}: {done.stdout}{done.stderr}"
        return done

    def up() -> int:
        run("up", "--approval", "always")
        return int(pid_file.read_text())

    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())

    def console(*options: str) -> str:
        return (f"cd {shlex.quote(str(demo_root))} && env {assignments} "
                f"{shlex.quote(factory)} console {' '.join(options)}; "
                f"echo \"{EXIT_MARK}$?]\"; sleep 600")

    name = f"factory-observe-{uuid.uuid4().hex[:10]}"
    steer = Terminal(tmux, name, f"{name}-steer")
    watch = Terminal(tmux, name, f"{name}-watch")
    try:
        pid = up()
        steer.start(console())
        watch.start(console("--observe"))
        for term, says in ((steer, "attached"), (watch, "observing")):
            term.wait_for(lambda s: header(s).get("approvals") == ENTRIES, 60,
                          f"the header to show {ENTRIES} approvals")
            term.wait_for(lambda s, says=says: f"{says}: daemon {pid}" in first_line(s), 10,
                          f"the header to say {says}: daemon {pid}")

        # An approval in the steering console shows in the observer.
        steer.keys("5")
        key = approve_in_inbox(steer, 0, ENTRIES)
        watch.wait_for(lambda s: header(s).get("approvals") == ENTRIES - 1, 10,
                       f"the observer's header to show {ENTRIES - 1} approvals")
        watch.keys("5")
        inbox = watch.wait_for(lambda s: len(inbox_keys(s)) == ENTRIES - 1, 10,
                               f"{ENTRIES - 1} entries in the observer's inbox")
        assert key not in inbox_keys(inbox), inbox
        # The observer's approve key is refused, and nothing changes.
        watch.keys("a")
        watch.wait_for(READ_ONLY, 10, "the observer to refuse its approve key")
        queue = daemon_queue(sock)
        pending = sorted(k for k, q in queue.items() if q["approval"] == "pending")
        assert len(pending) == ENTRIES - 1, queue
        assert header(watch.screen()).get("approvals") == ENTRIES - 1, watch.last

        # The daemon stops: both consoles say so, and keep running.
        run("down")
        for term in (steer, watch):
            term.wait_for(lambda s: "DETACHED" in first_line(s) and
                          "reconnecting" in first_line(s), 15,
                          "the header to say the console is detached and reconnecting")

        # It starts again, and something changes there at once: both consoles attach to the
        # new daemon by themselves and show it.
        again = up()
        assert again != pid
        run("approve", pending[0])
        for term, says in ((steer, "attached"), (watch, "observing")):
            term.wait_for(lambda s, says=says: f"{says}: daemon {again}" in first_line(s), 20,
                          f"the header to say {says}: daemon {again} (reconnected)")
            term.wait_for(lambda s: header(s).get("approvals") == ENTRIES - 2, 10,
                          f"the header to show {ENTRIES - 2} approvals after the restart")
            term.wait_for(lambda s: len(inbox_keys(s)) == ENTRIES - 2, 10,
                          f"{ENTRIES - 2} entries in the inbox after the restart")
            assert pending[0] not in inbox_keys(term.last), term.last
        # And they follow it from then on: an approval made in the first shows in the other.
        later = approve_in_inbox(steer, 0, ENTRIES - 2)
        watch.wait_for(lambda s: header(s).get("approvals") == ENTRIES - 3 and
                       later not in inbox_keys(s), 10,
                       f"{later}'s approval in the observer after the restart")
        watch.wait_for(lambda s: READ_ONLY not in s, 15, "the first refusal to go away")
        watch.keys("a")  # still read-only on the new daemon
        watch.wait_for(READ_ONLY, 10, "the observer to refuse its approve key again")
        assert sum(q["approval"] == "pending" for q in daemon_queue(sock).values()) == \
            ENTRIES - 3

        for term in (steer, watch):
            term.keys("q")
            assert exit_status(term, 30) == "0", f"the console exited badly:\n{term.last}"
    finally:
        subprocess.run([factory, "down"], cwd=demo_root, capture_output=True,
                       env={**os.environ, **env}, timeout=60)
        watch.kill()
        steer.kill()
