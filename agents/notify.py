"""Telling a person the factory wants them, while nobody watches the screen.

A long run spends most of its time without a person at the console: an agent's question, an
entry waiting for approval, a queue paused on main's own tests or a run that ended would
otherwise wait unseen. Five kinds of event are worth a person's attention (`[notify]
events`); for each, the process serving the factory (a daemon, a run, a console's engine)

- runs `[notify] command` with the notification as JSON on its stdin, so a desktop
  notifier or a chat webhook script hears of it; and
- sends it to every attached console, which rings its terminal (console/alerts.py).

The command is the operator's own (`.factory.toml` is a protected path: no branch may change
it), yet what it is told comes from agents: `title` and `message` are cleaned for a terminal
or a chat line, and the JSON encoding escapes every control character of the raw event.

The engine must never wait for a notifier: committed batches only queue notifications, one
worker runs the command for each in turn (in order: a chat channel reads as it happened),
each under a timeout, and what goes wrong (it fails, hangs, cannot start, or too many wait)
is recorded as a warning `notice`, never raised into the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from agents import events as ev
from agents.config import NotifyConfig, NotifyEvent
from agents.textsafe import clean_line

if TYPE_CHECKING:
    from agents.store.store import Committed, Store

log = logging.getLogger(__name__)

KINDS: frozenset[str] = frozenset(get_args(NotifyEvent))
# Events that notify under another's setting: a gate asking for approval is an entry that
# waits for a person, as one entering the queue with approval wanted is.
SETTING = {"approval_requested": "queue_entered"}
# How a daemon's notification line starts on the wire (agents/wire.py): a console that does
# not know it takes it for a reply to no request and ignores it.
WIRE_START = b'{"notify":'
# Notifications waiting for the command; more are dropped (and a notice counts them): a
# command far slower than events arrive must not grow the daemon's memory without end.
BACKLOG = 256
# How much of a failed command's stderr its notice quotes.
STDERR_TAIL = 600
# At a clean stop, how long what is queued may still go out.
CLOSE_SECONDS = 5.0
TITLE_CHARS = 80
MESSAGE_CHARS = 240


@dataclass(frozen=True, slots=True)
class Notification:
    """One event a person is wanted for: short cleaned text to show, and the event itself."""

    kind: str
    title: str
    message: str
    event_id: int
    ts: float
    event: dict[str, Any]

    def payload(self, root: Path) -> dict[str, Any]:
        """What the command reads on its stdin (and consoles are sent)."""
        return {"kind": self.kind, "title": self.title, "message": self.message,
                "root": str(root), "event_id": self.event_id, "ts": self.ts,
                "event": self.event}


def _short(text: str, limit: int) -> str:
    text = " ".join(clean_line(text).split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def describe(event: ev.Event) -> tuple[str, str] | None:
    """The title and message a person is shown for event, or None when it is not one a
    person is wanted for (an entry that needs no approval)."""
    key = "/".join(p for p in (event.spec_id, event.task_id) if p)
    match event:
        case ev.QuestionAsked():
            return f"Question from {event.task_key}", event.question
        case ev.QueueEntered(needs_approval=True):
            return f"Approval wanted: {key or event.branch}", \
                f"{key or event.branch} ({event.risk} risk) waits for a person to approve it"
        case ev.ApprovalRequested():
            return f"Approval wanted: {key}", \
                f"{key} waits for a person to approve it ({'; '.join(event.reasons)[:300]})"
        case ev.QueuePaused():
            return "Merge queue paused", f"main ({event.main[:12]}) fails its own tests: " \
                f"{event.reason}"
        case ev.TestsQuarantined():
            names = ", ".join(event.tests[:3]) + (f" and {len(event.tests) - 3} more"
                                                  if len(event.tests) > 3 else "")
            return "Tests quarantined", f"failing on main, set aside: {names}"
        case ev.RunFinished():
            detail = f": {event.detail}" if event.detail else ""
            return f"Run {event.status}", f"run {event.run_id} ended {event.status}{detail}"
    return None


def notifications(batch: Committed, kinds: Iterable[str] = KINDS) -> list[Notification]:
    """The notifications in a committed batch, of the kinds wanted. Cheap when there are
    none (one set lookup an event): it runs on every batch of a busy swarm."""
    wanted = kinds if isinstance(kinds, frozenset) else frozenset(kinds)
    found = []
    for i, event in enumerate(batch.events):
        if SETTING.get(event.kind, event.kind) not in wanted:
            continue
        said = describe(event)
        if said is None:
            continue
        title, message = said
        found.append(Notification(event.kind, _short(title, TITLE_CHARS),
                                  _short(message, MESSAGE_CHARS), batch.first_id + i,
                                  batch.ts, event.model_dump(mode="json")))
    return found


class Notifier:
    """Runs `[notify] command` for each notification of the store's committed batches."""

    def __init__(self, store: Store, config: NotifyConfig, root: Path) -> None:
        self.store = store
        self.command = config.command.strip()
        self.kinds = frozenset(config.events)
        self.timeout = config.timeout_seconds
        self.root = root
        self.delivered = 0
        self._queue: asyncio.Queue[Notification] = asyncio.Queue(BACKLOG)
        self._dropped = 0
        self._unsubscribe: Any = None
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Follow the store (nothing to do without a command: consoles are rung by the
        daemon from the batches it forwards them)."""
        if not self.command or not self.kinds or self._worker is not None:
            return
        self._unsubscribe = self.store.subscribe_raw(self._batch)
        self._worker = asyncio.create_task(self._work(), name="notify")

    async def close(self) -> None:
        """Stop following; what is queued may still go out for a moment (a run that just
        ended is worth telling), then the command in flight is stopped."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        worker, self._worker = self._worker, None
        if worker is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(CLOSE_SECONDS, self.timeout)):
                await self._queue.join()
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker

    def _batch(self, batch: Committed) -> None:
        # Called as the batch commits, on the engine's loop: queue, never wait.
        for note in notifications(batch, self.kinds):
            try:
                self._queue.put_nowait(note)
            except asyncio.QueueFull:
                self._dropped += 1

    async def _work(self) -> None:
        while True:
            note = await self._queue.get()
            try:
                problem = await self._deliver(note)
                if self._dropped:
                    dropped, self._dropped = self._dropped, 0
                    problem = (problem + "; " if problem else "") + \
                        f"{dropped} more were dropped: {BACKLOG} waited for the command"
                if problem:
                    await self._warn(f"[notify] command, for {note.kind} (event "
                                     f"{note.event_id}): {problem}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must not end the daemon's notifications
                log.exception("notify: delivering event %d failed", note.event_id)
                with contextlib.suppress(Exception):
                    await self._warn(f"[notify] failed: {clean_line(repr(exc))}")
            finally:
                self._queue.task_done()

    async def _deliver(self, note: Notification) -> str | None:
        """Run the command for one notification; what went wrong, or None."""
        data = json.dumps(note.payload(self.root), ensure_ascii=True).encode() + b"\n"
        try:
            process = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", self.command, cwd=self.root, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                start_new_session=True)  # its own group: a timeout stops all it started
        except OSError as exc:
            return f"cannot start /bin/sh: {exc.strerror or exc}"
        tail = bytearray()
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.gather(_feed(process, data), _tail(process, tail))
                status = await process.wait()
        except TimeoutError:
            _kill(process)
            await process.wait()
            return f"still running after {self.timeout:g} s; stopped"
        except BaseException:
            _kill(process)
            with contextlib.suppress(Exception):
                await process.wait()
            raise
        self.delivered += 1
        if status == 0:
            log.debug("notify: %s delivered in %.2f s", note.kind, time.monotonic() - started)
            return None
        said = tail.decode("utf-8", "replace").strip()
        how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
        if status == 127:
            how += " (command not found)"
        return how + (f": {said}" if said else "")

    async def _warn(self, message: str) -> None:
        message = clean_line(message)
        log.warning("%s", message)
        with contextlib.suppress(Exception):  # a store that closed meanwhile: the log has it
            await self.store.append(ev.Notice(level="warning", message=message))


async def _feed(process: asyncio.subprocess.Process, data: bytes) -> None:
    stdin = process.stdin
    assert stdin is not None
    # A command that does not read its stdin (notify-send with fixed text) is fine.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.write(data)
        await stdin.drain()
    stdin.close()


async def _tail(process: asyncio.subprocess.Process, tail: bytearray) -> None:
    """Read the command's stderr to its end, keeping only its last lines."""
    stderr = process.stderr
    assert stderr is not None
    while chunk := await stderr.read(65536):
        tail += chunk
        del tail[:-STDERR_TAIL]


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
