"""`factory up`, `factory down` and the daemon line of `factory status`.

A factory that runs for days should not need a terminal kept open for it: `factory up`
starts `factory daemon` for the repository detached from the terminal (its own session, its
output in `.factory/daemon.log`) and returns once the daemon's socket answers, so what
follows (`factory console`, a script's `factory approve`) finds it serving. The daemon writes
`.factory/daemon.pid` itself once it serves and removes it when it stops, so a daemon started
any other way (by hand, or a console's own engine) is found the same way.

A pid file outlives a daemon that was killed outright, and its pid may since have been given
to another program: a pid counts only while `/proc/<pid>/cmdline` is a `factory daemon`
(of this repository, when it names one). `factory down` never signals anything else.

Only the standard library here: these commands answer in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.errors import FactoryError
from agents.serving import socket_path

PID_NAME = "daemon.pid"
LOG_NAME = "daemon.log"
LOCK_NAME = "daemon.up.lock"
# How long `factory up` waits for the socket to answer. The daemon opens the store and git
# and resumes a run before it serves; on a busy 2-core machine that has taken 5 s.
UP_SECONDS = 20.0
# How long `factory down` waits for the daemon to exit: it stops its agents at their
# current step and closes the store, as ctrl+c does.
DOWN_SECONDS = 30.0
POLL = 0.05
HELLO_SECONDS = 2.0
LOG_LINES = 12


def factory_dir(root: Path) -> Path:
    return root / ".factory"


def pid_path(root: Path) -> Path:
    return factory_dir(root) / PID_NAME


def log_path(root: Path) -> Path:
    return factory_dir(root) / LOG_NAME


@dataclass
class DaemonState:
    """What is known of this repository's daemon, from its pid file, /proc and its socket."""

    root: Path
    pid: int | None = None  # the process serving (or starting to), if any
    answering: bool = False  # the socket answers
    since: float | None = None  # when it began to serve
    pid_file: int | None = None  # the pid the pid file names, if there is one (-1: garbage)
    stale: str | None = None  # why the pid file names no daemon of this repository
    # What serves: "daemon" (`factory daemon`, of its own), "console" (the engine a
    # `factory console` started for itself, which stops when that console quits: pid
    # `console`), "other" (a `factory run`, a console's engine in its own process), or None.
    kind: str | None = None
    console: int | None = None

    @property
    def socket(self) -> Path:
        return socket_path(self.root)

    @property
    def running(self) -> bool:
        return self.kind is not None

    def as_json(self) -> dict[str, Any]:
        return {"running": self.running, "kind": self.kind, "pid": self.pid,
                "answering": self.answering, "since": self.since, "socket": str(self.socket),
                "pid_file": str(pid_path(self.root)) if self.pid_file is not None else None,
                "stale": self.stale, "log": str(log_path(self.root)), "console": self.console}

    def describe(self) -> str:
        """One line for a person."""
        since = ""
        if self.since is not None:
            since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(self.since))
        if self.kind == "daemon" and self.answering:
            return f"daemon: running, pid {self.pid}{since}, on {self.socket}"
        if self.kind == "daemon":
            return (f"daemon: pid {self.pid} runs but its socket does not answer (starting, "
                    f"or stuck; `factory down` stops it; log: {log_path(self.root)})")
        if self.kind == "console":
            return (f"daemon: none; the engine of a console (pid {self.console}) serves this "
                    f"factory as pid {self.pid}{since}, on {self.socket}, and stops when that "
                    "console quits")
        if self.kind == "other":
            return (f"daemon: none; pid {self.pid} serves this factory{since} on "
                    f"{self.socket} (a `factory run`, or a console)")
        if self.stale is not None:
            return f"daemon: not running; stale pid file {pid_path(self.root)}: {self.stale}"
        return "daemon: not running (`factory up` starts one)"


# -- looking ---------------------------------------------------------------------------------


def cmdline(pid: int) -> list[str] | None:
    """A live process's arguments; None when there is no such process (or only its
    zombie, whose command line the kernel has already emptied)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    if not raw:
        return None
    return [os.fsdecode(part) for part in raw.rstrip(b"\0").split(b"\0")]


def is_daemon_of(argv: list[str], root: Path) -> bool:
    """Whether a command line is `factory daemon` (the console script, or `python -m
    console.cli`) serving root: when it names no --root, the pid file under root's
    `.factory/` is what ties it to root."""
    try:
        at = argv.index("daemon")
    except ValueError:
        return False
    # The subcommand comes right after the program: `factory daemon`, `... -m console.cli
    # daemon` (not `factory console --root daemon`).
    if at == 0 or not (Path(argv[at - 1]).name == "factory" or argv[at - 1] == "console.cli"):
        return False
    rest = argv[at + 1:]
    for i, arg in enumerate(rest):
        given = arg.removeprefix("--root=") if arg.startswith("--root=") else \
            rest[i + 1] if arg == "--root" and i + 1 < len(rest) else None
        if given is not None:
            with contextlib.suppress(OSError):
                return Path(given).resolve() == root.resolve()
            return False
    return True


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise FactoryError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        pid = int(text)
    except ValueError:
        return -1  # not a pid: stale
    return pid if pid > 0 else -1


def hello(path: Path, timeout: float = HELLO_SECONDS) -> dict[str, Any] | None:
    """What the process serving on the socket says of itself (`info`: its pid, since when),
    {} from one too old to say, or None when nothing answers."""
    if not path.exists():
        return None
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            sock.sendall(b'{"id":1,"op":"info","args":{}}\n')
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                data += chunk
                if len(data) > 1 << 20:
                    return None
        except OSError:
            return None
    try:
        reply = json.loads(data)
    except ValueError:
        return None
    if not isinstance(reply, dict):
        return None
    result = reply.get("result")
    return result if isinstance(result, dict) else {} if "error" in reply else None


def state(root: Path) -> DaemonState:
    found = DaemonState(root)
    found.pid_file = read_pid(pid_path(root))
    answer = hello(socket_path(root))
    if answer is not None:
        found.answering = True
        pid = answer.get("pid")
        found.pid = pid if isinstance(pid, int) and pid > 0 else None
        since = answer.get("since")
        found.since = float(since) if isinstance(since, int | float) else None
    if found.pid_file == -1:
        found.stale = "it holds no pid"
    elif found.pid_file is not None:
        argv = cmdline(found.pid_file)
        if argv is None:
            found.stale = f"pid {found.pid_file} is not running"
        elif not is_daemon_of(argv, root):
            found.stale = f"pid {found.pid_file} is now another program " \
                          f"({' '.join(argv)[:120]})"
        elif found.pid is None:
            found.pid = found.pid_file  # alive; its socket does not answer (yet)
    if found.pid is not None and alive(found.pid, root):
        found.console = _console_of(found.pid)
        found.kind = "console" if found.console is not None else "daemon"
        if found.since is None and found.pid == found.pid_file:
            with contextlib.suppress(OSError):
                found.since = pid_path(root).stat().st_mtime
    elif found.answering:
        found.kind = "other"
    return found


def _console_of(pid: int) -> int | None:
    """The `factory console` (or `factory demo`) whose own engine pid is, if it is one:
    such an engine stops when its console quits. (One whose console was killed outright
    has been adopted by another parent, and serves on as a daemon.)"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        parent = int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
    argv = cmdline(parent) or []
    for at, arg in enumerate(argv[1:], start=1):
        if arg in ("console", "demo"):
            program = argv[at - 1]
            return parent if Path(program).name == "factory" or program == "console.cli" \
                else None
    return None


def alive(pid: int, root: Path) -> bool:
    argv = cmdline(pid)
    return argv is not None and is_daemon_of(argv, root)


def log_tail(root: Path, start: int = 0, lines: int = LOG_LINES) -> str:
    """The log's last lines from byte `start` (what this start of the daemon wrote)."""
    try:
        with log_path(root).open("rb") as handle:
            handle.seek(start)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


# -- up --------------------------------------------------------------------------------------


@dataclass
class Started:
    pid: int
    already: bool  # it was running: nothing was started
    removed_stale: str | None = None


def daemon_options() -> set[str]:
    """The options `factory daemon` takes in this version (`up --watch` passes on only
    what the daemon knows)."""
    import argparse

    from console.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction) and "daemon" in action.choices:
            return set(action.choices["daemon"]._option_string_actions)
    return set()


def up(root: Path, options: list[str], wait: float = UP_SECONDS) -> Started:
    """Start the daemon of root detached (unless one runs), once its socket answers.

    Two `factory up` at once start one daemon: the second waits on a lock for the first,
    then finds its daemon serving."""
    root = root.resolve()
    factory_dir(root).mkdir(parents=True, exist_ok=True)
    with _locked(factory_dir(root) / LOCK_NAME):
        now = state(root)
        if now.kind == "console":
            raise FactoryError(f"the engine of a console (pid {now.console}) serves this "
                               f"factory as pid {now.pid}, and stops when that console quits: "
                               "quit it, then `factory up` (the next console attaches to the "
                               "daemon)")
        if now.kind == "other":
            raise FactoryError(f"{now.describe().removeprefix('daemon: none; ')}: it is the "
                               "store's one writer while it runs; not starting a daemon "
                               "beside it")
        if now.kind == "daemon":
            assert now.pid is not None
            if not now.answering:  # its process lives, its socket does not answer yet
                _wait_answer(root, now.pid, None, wait, 0)
            return Started(now.pid, already=True)
        removed = None
        if now.stale is not None:
            removed = now.stale
            with contextlib.suppress(FileNotFoundError):
                pid_path(root).unlink()
        pid = _spawn(root, options, wait)
        return Started(pid, already=False, removed_stale=removed)


def _spawn(root: Path, options: list[str], wait: float) -> int:
    log = log_path(root)
    with log.open("ab") as sink:
        os.chmod(log, 0o600)  # it quotes agents' work, as the store does
        start = sink.tell()
        sink.write(time.strftime("--- factory up, %Y-%m-%d %H:%M:%S ---\n").encode())
        sink.flush()
        # This Factory, whatever the repository holds: -P keeps the repository's folder off
        # the daemon's sys.path (a project may have its own `console` or `agents`), and the
        # folder this Factory is imported from goes first.
        here = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": path}
        command = [sys.executable, "-P", "-m", "console.cli", "daemon", "--root", str(root),
                   *options]
        # Its own session: the terminal's hang-up (and its ctrl+c) are not the daemon's.
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sink,
                                   stderr=sink, cwd=root, env=env, start_new_session=True)
    _wait_answer(root, process.pid, process, wait, start)
    return process.pid


def _wait_answer(root: Path, pid: int, process: subprocess.Popen[bytes] | None, wait: float,
                 start: int) -> None:
    """Until the socket answers for pid; an error quoting the log when the daemon ends
    first, or does not answer in time (then it is stopped: nobody would know it hangs)."""
    deadline = time.monotonic() + wait
    while True:
        answer = hello(socket_path(root), timeout=0.5)
        if answer is not None and answer.get("pid") == pid:
            return
        ended = process.poll() is not None if process is not None else not alive(pid, root)
        if ended:
            status = f" (exit status {process.returncode})" if process is not None else ""
            raise FactoryError(f"the daemon stopped as it started{status}; the end of "
                               f"{log_path(root)}:\n{log_tail(root, start)}")
        if time.monotonic() > deadline:
            if process is not None:
                _stop(process.pid, root, 5.0, process)
            raise FactoryError(f"the daemon did not answer on {socket_path(root)} within "
                               f"{wait:g} s" + ("; stopped it" if process is not None else "") +
                               f". The end of {log_path(root)}:\n{log_tail(root, start)}")
        time.sleep(POLL)


@contextlib.contextmanager
def _locked(path: Path) -> Any:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- down ------------------------------------------------------------------------------------


@dataclass
class Stopped:
    pid: int | None  # the daemon stopped, if one ran
    stale: str | None = None  # a stale pid file that was removed, and why


def down(root: Path, wait: float = DOWN_SECONDS) -> Stopped:
    """Stop root's daemon as SIGTERM does (every committed step kept) and wait for it to
    exit; remove a stale pid file (and a socket nobody answers on)."""
    root = root.resolve()
    now = state(root)
    if now.kind in ("console", "other"):
        raise FactoryError(f"{now.describe().removeprefix('daemon: none; ')}: not a daemon "
                           "`factory down` stops; stop it where it runs (quit the console, "
                           "or ctrl+c)")
    if now.stale is not None:
        with contextlib.suppress(FileNotFoundError):
            pid_path(root).unlink()
        if not now.answering:
            with contextlib.suppress(FileNotFoundError):
                socket_path(root).unlink()
    if now.kind is None or now.pid is None:
        return Stopped(None, stale=now.stale)
    _stop(now.pid, root, wait, None)
    # A daemon removes both as it stops; they are left only if it was killed meanwhile.
    if read_pid(pid_path(root)) == now.pid:
        with contextlib.suppress(FileNotFoundError):
            pid_path(root).unlink()
    if hello(socket_path(root)) is None:
        with contextlib.suppress(FileNotFoundError):
            socket_path(root).unlink()
    return Stopped(now.pid)


def _stop(pid: int, root: Path, wait: float, process: subprocess.Popen[bytes] | None) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while (process.poll() is None) if process is not None else alive(pid, root):
        if time.monotonic() > deadline:
            if process is not None:  # one `up` started and that never answered
                process.kill()
                process.wait()
                return
            raise FactoryError(f"the daemon (pid {pid}) did not stop within {wait:g} s; "
                               f"its log: {log_path(root)} (`kill -KILL {pid}` forces it: "
                               "the store keeps every committed step)")
        time.sleep(POLL)
