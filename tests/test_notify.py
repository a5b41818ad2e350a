"""Notifications: what a person relies on when nobody watches the screen.

- `[notify] command` runs once for each event a person is wanted for (a question, an entry
  waiting for approval, the queue paused, tests quarantined, a run ended), in order, with
  the notification as one valid JSON document on its stdin: the event as recorded, and a
  title and message cleaned of every control character;
- only the configured events notify, and nothing else does (an entry that needs no
  approval, a notice);
- a command that fails, hangs or is missing becomes a warning notice in the store; the
  engine's appends never wait for it, a hung command is stopped with everything it started,
  and the next notification still goes out;
- a real daemon (`factory up --run` on the demo) runs the command for the demo's question
  and for the run's end, and a failing command does not stop the run;
- an attached console rings its terminal: the bell always, a desktop notification (OSC 9)
  where the terminal is known to show one, never raw control characters from an agent's
  text inside it (the bytes the real `factory console` writes to a pseudo-terminal).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents import events as ev
from agents import notify
from agents.config import ConfigError, NotifyConfig, parse_config
from agents.store import Store
from agents.store.store import StoredEvent
from console.alerts import desktop_osc, ring_sequence
from tests.test_cli import factory

HOSTILE = "Keep it?\x1b]0;pwned\x07\x1b]52;c;Y2xpcA==\x07\r\x9b2J\u202e; 9;4;1"
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

RECORDER = """\
import json, os, sys
data = sys.stdin.read()
json.loads(data)  # one valid document, or this command fails
with open(sys.argv[1], "a") as out:
    out.write(data if data.endswith("\\n") else data + "\\n")
sys.exit(int(os.environ.get("RECORDER_EXIT", "0")))
"""


def recorder(tmp_path: Path, exit_status: int = 0) -> tuple[str, Path]:
    """A notify command that appends what it reads to a file (then exits as told)."""
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    out = tmp_path / "notifications.jsonl"
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} " \
              f"{shlex.quote(str(out))}"
    if exit_status:
        command = f"RECORDER_EXIT={exit_status} {command}"
    return command, out


def received(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines()]


async def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


async def notices(store: Store) -> list[str]:
    return [e.event.message for e in await store.read_events(0, 10_000)
            if isinstance(e.event, ev.Notice)]


WANTED = [
    ev.RunStarted(run_id="r1", specs=["s"], concurrency=1, sandbox="none"),
    ev.QuestionAsked(spec_id="slug", task_id="max-length", agent_id="a1", question_id="q1",
                     task_key="slug/max-length", question=HOSTILE, options=["yes", "no"]),
    ev.QueueEntered(spec_id="slug", task_id="sep", branch="factory/slug/sep", commit="c1",
                    risk="low"),
    ev.QueueEntered(spec_id="slug", task_id="max-length", branch="factory/slug/max-length",
                    commit="c2", risk="high", needs_approval=True),
    ev.ApprovalRequested(spec_id="slug", task_id="sep", commit="c1", gate="dependencies",
                         reasons=["dependencies: declares a new runtime dependency httpx"]),
    ev.QueuePaused(main="0123456789abcdef", reason="tests/test_x.py::test_y failed"),
    ev.TestsQuarantined(main="0123456789abcdef", tests=["t1", "t2", "t3", "t4"]),
    ev.Notice(level="info", message="not for a person's attention"),
    ev.RunFinished(run_id="r1", status="done"),
]
NOTIFIED = ["question_asked", "queue_entered", "approval_requested", "queue_paused",
            "tests_quarantined", "run_finished"]


@pytest.fixture
async def open_store(tmp_path: Path) -> Any:
    store = await Store.open(tmp_path / "store" / "factory.db")
    try:
        yield store
    finally:
        await store.close()


async def test_the_command_reads_each_notification_as_json(open_store: Store,
                                                           tmp_path: Path) -> None:
    command, out = recorder(tmp_path)
    notifier = notify.Notifier(open_store, NotifyConfig(command=command), tmp_path)
    notifier.start()
    try:
        for event in WANTED:  # batches of one, and one batch of several
            await open_store.append(event)
        await open_store.append(*WANTED[1:])
        got = await wait_for(lambda: len(received(out)) >= 2 * len(NOTIFIED)
                             and received(out), 30, "every notification twice")
    finally:
        await notifier.close()
    assert [n["kind"] for n in got] == NOTIFIED * 2
    stored: dict[int, StoredEvent] = {e.id: e for e in await open_store.read_events(0, 1000)}
    for note in got:
        event = stored[note["event_id"]]
        assert note["event"] == event.event.model_dump(mode="json")  # the event as recorded
        assert note["ts"] == pytest.approx(event.ts)
        assert note["root"] == str(tmp_path)
        for text in (note["title"], note["message"]):
            assert text and not CONTROL.search(text), text
    question = got[0]
    assert question["event"]["question"] == HOSTILE  # raw in the event, escaped by JSON
    assert question["title"] == "Question from slug/max-length"
    assert question["message"].startswith("Keep it?␛]0;pwned␇")
    assert got[1]["message"] == "slug/max-length (high risk) waits for a person to approve it"
    assert got[2]["title"] == "Approval wanted: slug/sep"
    assert "declares a new runtime dependency httpx" in got[2]["message"]
    assert "t1, t2, t3 and 1 more" in got[4]["message"]
    assert got[5]["title"] == "Run done"
    assert await notices(open_store) == ["not for a person's attention"] * 2


async def test_only_the_configured_events_notify(open_store: Store, tmp_path: Path) -> None:
    command, out = recorder(tmp_path)
    config = NotifyConfig(command=command, events=["run_finished"])
    notifier = notify.Notifier(open_store, config, tmp_path)
    notifier.start()
    try:
        await open_store.append(*WANTED)
        await wait_for(lambda: received(out), 30, "the run's end")
        await open_store.append(WANTED[1])
        await asyncio.sleep(1.0)
    finally:
        await notifier.close()
    assert [n["kind"] for n in received(out)] == ["run_finished"]


async def test_a_failing_command_is_a_notice(open_store: Store, tmp_path: Path) -> None:
    command, out = recorder(tmp_path)
    failing = f"{command}; echo webhook down >&2; exit 3"
    notifier = notify.Notifier(open_store, NotifyConfig(command=failing), tmp_path)
    notifier.start()
    try:
        await open_store.append(WANTED[-1])
        said = await _notice_with(open_store, "exit status 3")
    finally:
        await notifier.close()
    assert len(received(out)) == 1  # it was told, then failed
    assert "[notify] command, for run_finished" in said and "webhook down" in said

    missing = notify.Notifier(open_store, NotifyConfig(command="no-such-notifier --x"),
                              tmp_path)
    missing.start()
    try:
        await open_store.append(WANTED[-1])
        said = await _notice_with(open_store, "command not found")
    finally:
        await missing.close()
    assert "exit status 127 (command not found)" in said


async def _notice_with(store: Store, text: str) -> str:
    async def find() -> str | None:
        return next((n for n in await notices(store) if text in n), None)

    deadline = time.monotonic() + 30
    while (found := await find()) is None:
        assert time.monotonic() < deadline, f"no notice saying {text!r}: {await notices(store)}"
        await asyncio.sleep(0.05)
    return found


async def test_a_hung_command_never_holds_the_engine(open_store: Store,
                                                     tmp_path: Path) -> None:
    """While the command hangs, appends return at once; after the timeout it is stopped
    with the process it started, a notice says so, and the next notification goes out."""
    pids = tmp_path / "pids"
    command, out = recorder(tmp_path)
    hang = (f"if [ ! -e {shlex.quote(str(pids))} ]; then sleep 60 & echo $! > "
            f"{shlex.quote(str(pids))}; wait; fi; {command}")
    notifier = notify.Notifier(open_store, NotifyConfig(command=hang, timeout_seconds=1.5),
                               tmp_path)
    notifier.start()
    try:
        await open_store.append(WANTED[-1])
        await wait_for(pids.exists, 30, "the command to hang")
        started = time.monotonic()
        for _ in range(20):
            await open_store.append(ev.Notice(message="the engine goes on"))
        assert time.monotonic() - started < 1.0
        await open_store.append(WANTED[1])  # queued behind the hung one
        said = await _notice_with(open_store, "still running after 1.5 s; stopped")
        assert "[notify] command, for run_finished" in said
        sleeper = int(pids.read_text())
        await wait_for(lambda: not _alive(sleeper), 10, "the hung command's child to be gone")
        got = await wait_for(lambda: received(out), 30, "the next notification")
    finally:
        await notifier.close()
    assert [n["kind"] for n in got] == ["question_asked"]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_notify_configuration_is_strict(tmp_path: Path) -> None:
    path = tmp_path / ".factory.toml"
    config = parse_config('[notify]\ncommand = "notify-send x"\nevents = ["run_finished"]\n',
                          path)
    assert config.notify.command == "notify-send x"
    assert config.notify.events == ["run_finished"]
    for text, key in (('[notify]\nevents = ["run_started"]\n', "notify.events.0"),
                      ('[notify]\ntimeout_seconds = "5"\n', "notify.timeout_seconds"),
                      ("[notify]\ncomand = 'x'\n", "notify.comand")):
        with pytest.raises(ConfigError) as raised:
            parse_config(text, path)
        assert key in str(raised.value) and ".factory.toml:2" in str(raised.value), \
            str(raised.value)


# -- a real daemon ---------------------------------------------------------------------------


def demo_repo(tmp_path: Path, *, notify_command: str = "", question_seconds: float = 2,
              question: str | None = None) -> Path:
    """The demo project, built and not yet run, with a [notify] command."""
    from agents import demo

    root = demo.build(tmp_path / "demo", "none")
    config = root / ".factory.toml"
    text = config.read_text().replace(
        "[run]\n", f"[run]\nquestion_timeout_seconds = {question_seconds}\n")
    config.write_text(text + f"\n[notify]\ncommand = {json.dumps(notify_command)}\n")
    if question is not None:  # an agent's question with a hostile text
        replay = root / ".factory" / "replay" / "demo.json"
        data = replay.read_text()
        old = json.dumps("Should max_length count")[:-1]
        assert old in data
        replay.write_text(data.replace(old, json.dumps(question)[:-1], 1))
    return root


def run_status(root: Path) -> dict[str, Any]:
    done = factory("status", "--json", cwd=root)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_a_daemon_runs_the_command_and_a_failing_one_does_not_stop_the_run(
        tmp_path: Path) -> None:
    command, out = recorder(tmp_path, exit_status=1)  # told, then fails every time
    root = demo_repo(tmp_path, notify_command=command)
    up = factory("up", "--run", cwd=root)
    assert up.returncode == 0, up.stderr
    try:
        got = wait_until(lambda: [n for n in received(out) if n["kind"] == "run_finished"]
                         and received(out), 240, "the run's end to be notified")
    finally:
        down = factory("down", cwd=root)
    assert down.returncode == 0, down.stderr
    kinds = [n["kind"] for n in got]
    assert "question_asked" in kinds and kinds[-1] == "run_finished", kinds
    question = next(n for n in got if n["kind"] == "question_asked")
    assert question["title"] == "Question from slug/max-length"
    assert question["root"] == str(root)
    run = run_status(root)["runs"][-1]
    assert run["status"] in ("done", "failed") and got[-1]["event"]["status"] == run["status"]

    async def warnings() -> list[str]:
        store = await Store.open(root / ".factory" / "factory.db", readonly=True)
        try:
            return [m for m in await notices(store) if m.startswith("[notify]")]
        finally:
            await store.close()

    said = asyncio.run(warnings())
    assert any("for question_asked" in m and "exit status 1" in m for m in said), said


# -- the console rings -----------------------------------------------------------------------


def test_rings_are_clean_and_only_where_known() -> None:
    assert desktop_osc({"TERM_PROGRAM": "WezTerm", "TERM": "xterm-256color"}) == "9"
    assert desktop_osc({"TERM_PROGRAM": "iTerm.app"}) == "9"
    assert desktop_osc({"TERM": "xterm-kitty"}) == "9"
    assert desktop_osc({"TERM": "foot"}) == "777"
    assert desktop_osc({"TERM": "xterm-256color", "VTE_VERSION": "7600"}) == "777"
    # Inside tmux or screen, or a terminal nobody named (SSH): the bell alone.
    assert desktop_osc({"TERM_PROGRAM": "iTerm.app", "TMUX": "/tmp/tmux-0/default,1,0"}) \
        is None
    assert desktop_osc({"TERM": "screen-256color", "TERM_PROGRAM": "WezTerm"}) is None
    assert desktop_osc({"TERM": "xterm-256color"}) is None
    assert desktop_osc({}) is None
    assert ring_sequence("t", "m", None) == "\a"
    for osc in ("9", "777"):
        data = ring_sequence(f"Question from {HOSTILE}", HOSTILE * 20, osc)
        assert data.startswith(f"\a\x1b]{osc};") and data.endswith("\x1b\\")
        body = data[len(f"\a\x1b]{osc};"):-2]
        assert not CONTROL.search(body), repr(body)
        assert len(body) < 320
        if osc == "9":
            assert body.startswith("Factory: ")  # never `9;4;...`, a progress report
        else:
            assert body.count(";") == 2 and body.startswith("notify;Factory: ")


class Pty:
    """A real `factory console` on a pseudo-terminal: every byte it writes, kept."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        import fcntl
        import pty
        import struct
        import termios

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 110, 0, 0))
        self.master = master
        self.output = bytearray()
        self.lock = threading.Lock()
        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd,
                                        env=env, start_new_session=True)
        os.close(slave)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.output += chunk

    def since(self, at: int) -> bytes:
        with self.lock:
            return bytes(self.output[at:])

    def __len__(self) -> int:
        with self.lock:
            return len(self.output)

    def wait_for(self, pattern: bytes, at: int, timeout: float, what: str) -> bytes:
        deadline = time.monotonic() + timeout
        while pattern not in self.since(at):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.since(at)[-1500:]
                raise AssertionError(f"no {what} (console status {self.process.poll()}); "
                                     f"its last bytes: {tail!r}")
            time.sleep(0.05)
        return self.since(at)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        os.close(self.master)


@pytest.fixture
def consoles() -> Iterator[list[Pty]]:
    opened: list[Pty] = []
    yield opened
    for console in opened:
        console.close()


@pytest.mark.slow
def test_attached_consoles_ring_when_an_agent_asks(tmp_path: Path, consoles: list[Pty]) -> None:
    """Two consoles attached to a daemon, one in a terminal known to show desktop
    notifications (WezTerm) and one in a terminal nobody named: when the demo's agent asks
    its question (its text full of escapes), the first writes the bell and a clean OSC 9,
    the second the bell alone."""
    root = demo_repo(tmp_path, question_seconds=120, question=HOSTILE)
    up = factory("up", cwd=root)
    assert up.returncode == 0, up.stderr
    try:
        base = {k: v for k, v in os.environ.items()
                if k not in ("TMUX", "STY", "TERM_PROGRAM", "LC_TERMINAL", "VTE_VERSION",
                             "KITTY_WINDOW_ID")}
        base |= {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "LITELLM_LOCAL_MODEL_COST_MAP":
                 "True", "COLUMNS": "110", "LINES": "30"}
        argv = [sys.executable, "-m", "console.cli", "console"]
        wez = Pty(argv, root, {**base, "TERM": "xterm-256color", "TERM_PROGRAM": "WezTerm"})
        consoles.append(wez)
        plain = Pty(argv, root, {**base, "TERM": "xterm-256color"})
        consoles.append(plain)
        for console in consoles:
            console.wait_for(b"attached: daemon", 0, 60, "attached console")
        time.sleep(1.0)  # their snapshots taken: from now on each is sent what commits
        marks = [len(wez), len(plain)]

        async def start_run() -> None:
            from console.attached import AttachedClient
            from console.cli import socket_path

            client = await AttachedClient.connect(socket_path(root))
            try:
                await client.run()
            finally:
                await client.close()

        asyncio.run(start_run())
        osc = re.compile(rb"\x1b\]9;([^\x07\x1b]*)\x1b\\")
        written = wez.wait_for(b"\x1b]9;Factory: Question from slug/max-length", marks[0],
                               120, "desktop notification")
        found = osc.search(written)
        assert found is not None, written[-800:]
        body = found.group(1).decode()
        assert body.startswith("Factory: Question from slug/max-length: Keep it?␛]0,pwned␇")
        assert not CONTROL.search(body), body
        assert written[:found.start()].endswith(b"\a")  # the bell, right before it
        assert b"pwned\x07" not in written and b"\x1b]0;pwned" not in written
        rang = plain.wait_for(b"\a", marks[1], 60, "bell")
        assert b"\x1b]9;" not in rang and b"\x1b]777;" not in rang
    finally:
        for console in consoles:
            console.close()
        consoles.clear()
        down = factory("down", cwd=root)
        assert down.returncode == 0, down.stderr
