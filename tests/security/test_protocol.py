"""A daemon's protocol against hostile or broken consoles, on a real daemon over a real
factory and its real unix socket.

Every request is checked before it reaches the engine: whatever a console sends that does
not fit gets a short protocol error saying what was wrong (never an internal error and a
logged traceback), and the daemon goes on serving that connection and others. A request line
is read up to `REQUEST_LIMIT`, not the quarter gigabyte a console may read of a reply; a
connection may have `MAX_IN_FLIGHT` requests working at once. What the daemon logs of a
request passes through the sanitizer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agents import demo
from agents.daemon import MAX_EVENTS, MAX_IN_FLIGHT, MAX_INT, REQUEST_LIMIT, Daemon
from agents.wire import LINE_LIMIT
from console.cli import socket_path
from tests.console.test_attached import serving

Reply = dict[str, Any]


class Connection:
    """A console's end of the socket, speaking raw lines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: Path) -> Connection:
        return cls(*await asyncio.open_unix_connection(path, limit=LINE_LIMIT))

    async def ask(self, line: bytes) -> Reply:
        self.writer.write(line + b"\n")
        return await self.reply()

    async def reply(self) -> Reply:
        async with asyncio.timeout(30):
            line = await self.reader.readline()
        assert line, "the daemon closed the connection"
        return json.loads(line)  # type: ignore[no-any-return]

    async def hello(self, request_id: int = 99) -> None:
        reply = await self.ask(b'{"id": %d, "op": "hello"}' % request_id)
        assert reply["id"] == request_id and reply["result"]["protocol"] == 2, reply

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with serving(demo.build(tmp_path / "demo", "none")) as daemon:
        yield daemon


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def request(op: Any, args: Any = None, request_id: Any = 1) -> bytes:
    message: dict[str, Any] = {"id": request_id, "op": op}
    if args is not None:
        message["args"] = args
    return json.dumps(message).encode()


DEEP = b'{"id": 1, "op": "approve", "args": {"key": ' + b"[" * 10_000 + b"]" * 10_000 + b"}}"
ESCAPE = "\x1b]0;pwned\x07\x1b[2J"

# (what the console sends, the id the reply carries, what the error must say)
MALFORMED: dict[str, tuple[bytes, Any, str]] = {
    "not JSON": (b"{nope", None, r"^a request is not JSON: key must be a string"),
    "an empty line": (b"", None, r"^a request is not JSON: EOF"),
    "trailing garbage": (b'{"id": 1, "op": "hello"} {}', None,
                         r"^a request is not JSON: trailing characters"),
    "a JSON array": (b"[1, 2]", None, r'^a request is \{"id": \.\.\., "op"'),
    "a JSON string": (b'"hello"', None, r'^a request is \{"id"'),
    "invalid UTF-8": (b'{"id": 1, "op": "approve", "args": {"key": "\xff\xfe"}}', None,
                      r"^a request is not JSON: invalid unicode code point"),
    "a lone surrogate": (rb'{"id": 1, "op": "approve", "args": {"key": "\ud800"}}', None,
                         r"^a request is not JSON: .*surrogate|hex escape"),
    "nesting 10000 deep": (DEEP, None, r"^a request is not JSON: recursion limit exceeded"),
    "a 5000-digit number": (b'{"id": ' + b"9" * 5000 + b', "op": "hello"}', None,
                            r"^a request is not JSON: number out of range"),
    "missing id": (b'{"op": "hello"}', None, r"^a request has an id \(an integer, a string"),
    "id an object": (request("hello", request_id={"a": [1]}), None,
                     r"^a request's id is an integer within ±9007199254740991, a string of "
                     r"at most 128 characters, or null; not an object$"),
    "id a list": (request("hello", request_id=[1]), None, r"; not a list$"),
    "id true": (request("hello", request_id=True), None, r"; not a boolean$"),
    "id a float": (request("hello", request_id=1.5), None, r"; not a number$"),
    "id a huge integer": (request("hello", request_id=10**30), None, r"; not a larger integer$"),
    "id a long string": (request("hello", request_id="x" * 129), None, r"; not a longer string$"),
    "missing op": (b'{"id": 1}', 1, r"^a request names its op$"),
    "op null": (request(None), 1, r"^a request's op is a string of at most 64 characters, "
                                  r"not null$"),
    "op a number": (request(5, request_id="s"), "s", r"^a request's op is a string .*, not an "
                                                     r"integer$"),
    "op very long": (request("x" * 100_000), 1, r"^a request's op is a string .*, not a "
                                                r"longer string$"),
    "unknown op": (request("launch"), 1, r"^unknown op 'launch'; known: .*approve.*, move"),
    "a key beside id, op and args": (b'{"id": 1, "op": "hello", "extra": 1}', 1,
                                     r"^hello: a request has only id, op and args, not extra$"),
    "args a list": (request("approve", [1]), 1,
                    r"^approve: bad arguments: args is an object, not a list$"),
    "args a string": (request("approve", "k"), 1,
                      r"^approve: bad arguments: args is an object, not a string$"),
    "args null": (b'{"id": 1, "op": "approve", "args": null}', 1,
                  r"^approve: bad arguments: args is an object, not null$"),
    "approve: key an integer": (request("approve", {"key": 5}), 1,
                                r"^approve: bad arguments: key is a string, not an integer$"),
    "move: delta a string": (request("move", {"key": "a", "delta": "x"}), 1,
                             r"^move: bad arguments: delta is an integer, not a string$"),
    "move: delta a digit string": (request("move", {"key": "a", "delta": "1"}), 1,
                                   r"delta is an integer, not a string$"),
    "move: delta true": (request("move", {"key": "a", "delta": True}), 1,
                         r"delta is an integer, not a boolean$"),
    "move: delta a float": (request("move", {"key": "a", "delta": 1.0}), 1,
                            r"delta is an integer, not a number$"),
    "move: delta huge": (request("move", {"key": "a", "delta": 10**20}), 1,
                         rf"delta is at most {MAX_INT}$"),
    "move: key missing": (request("move", {"delta": 1}), 1,
                          r"^move: bad arguments: key is missing$"),
    "move: everything wrong": (request("move", {"key": [], "delta": {}, "x": 1, "y": 2}), 1,
                               r"^move: bad arguments: key is a string, not a list; delta is "
                               r"an integer, not an object; x is unknown \(move takes key, "
                               r"delta\) \(and 1 more\)$"),
    "approve: an unknown argument": (request("approve", {"keyy": "x"}), 1,
                                     r"^approve: bad arguments: key is missing; keyy is "
                                     r"unknown \(approve takes key\)$"),
    "hello: any argument": (request("hello", {"x": 1}), 1,
                            r"^hello: bad arguments: x is unknown \(hello takes "
                            r"observe\)$"),
    "an argument named with escapes": (request("approve", {ESCAPE * 10: "x"}), 1,
                                       r"^approve: bad arguments: key is missing; "
                                       r"\['\\x1b\]0;pwned.*'…\] is unknown"),
    "run: spec_ids a string": (request("run", {"spec_ids": "abc"}), 1,
                               r"^run: bad arguments: spec_ids is a list or null, not a "
                               r"string$"),
    "run: a spec id an integer": (request("run", {"spec_ids": ["a", 3]}), 1,
                                  r"^run: bad arguments: spec_ids\[1\] is a string, not an "
                                  r"integer$"),
    "events: limit too large": (request("events", {"limit": 10**9}), 1,
                                rf"^events: bad arguments: limit is at most {MAX_EVENTS}$"),
    "events: after negative": (request("events", {"after": -1}), 1,
                               r"^events: bad arguments: after is at least 0$"),
    "events: after beyond SQLite": (request("events", {"after": 2**63}), 1,
                                    rf"after is at most {MAX_INT}$"),
    "follow_agent: agent_id an integer": (request("follow_agent", {"agent_id": 7}), 1,
                                          r"^follow_agent: bad arguments: agent_id is a "
                                          r"string or null, not an integer$"),
    "follow_agent: agent_id missing": (request("follow_agent", {}), 1,
                                       r"^follow_agent: bad arguments: agent_id is missing$"),
    "save_spec: a NUL in the path": (request("save_spec", {"path": "specs/a\0.md",
                                                           "text": "x"}), 1,
                                     r"^save_spec: bad arguments: path holds no NUL "
                                     r"character$"),
    "save_spec: text missing": (request("save_spec", {"path": "specs/a.md"}), 1,
                                r"^save_spec: bad arguments: text is missing$"),
    "answer: nested garbage": (request("answer", {"question_id": {"a": [[{"b": None}]]},
                                                  "text": [1, [2]]}), 1,
                               r"^answer: bad arguments: question_id is a string, not an "
                               r"object; text is a string, not a list$"),
    "conflict_hunks: a null": (request("conflict_hunks", {"a": None, "b": "x"}), 1,
                               r"^conflict_hunks: bad arguments: a is a string, not null$"),
}


@pytest.mark.parametrize("case", MALFORMED)
async def test_a_malformed_request_gets_a_protocol_error_and_the_daemon_serves_on(
        daemon: Daemon, case: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    line, request_id, said = MALFORMED[case]
    path = socket_path(daemon.factory.root)
    store = daemon.factory.store
    before = store.last_id
    console = await Connection.open(path)
    reply = await console.ask(line)
    assert set(reply) == {"id", "error", "type"}, reply
    assert reply["type"] == "protocol", reply
    assert reply["id"] == request_id, reply
    assert re.search(said, reply["error"]), reply["error"]
    assert len(reply["error"]) < 400, "short, even when what was sent is long"
    assert "\x1b" not in reply["error"]
    await console.hello()  # the same connection goes on
    other = await Connection.open(path)  # and so do new ones
    await other.hello()
    await console.close()
    await other.close()
    await store.flush()
    assert store.last_id == before, "nothing reached the engine"
    no_tracebacks(caplog)


async def test_well_formed_requests_still_reach_the_engine(
        daemon: Daemon, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Ids of every allowed kind come back as sent; optional arguments may be left out; the
    engine's own refusals are its own (type factory), not the protocol's."""
    console = await Connection.open(socket_path(daemon.factory.root))
    for request_id in (0, -MAX_INT, MAX_INT, "", "x" * 128, None):
        reply = await console.ask(request("run_error", {}, request_id))
        assert reply == {"id": request_id, "result": None}
    reply = await console.ask(b'{"id": 1, "op": "events"}')  # args may be left out
    assert isinstance(reply["result"], list)
    reply = await console.ask(request("events", {"after": 0, "limit": MAX_EVENTS,
                                                 "agent_id": None}))
    assert "result" in reply
    reply = await console.ask(request("move", {"key": "nope", "delta": -MAX_INT}))
    assert reply == {"id": 1, "error": "nope is not waiting in the queue", "type": "factory"}
    reply = await console.ask(request("follow_agent", {"agent_id": None}))
    assert reply == {"id": 1, "result": None}
    # A large spec, well under the limit, is read whole (and refused by the engine for where
    # it would go).
    text = "# spec\n" + "x" * (REQUEST_LIMIT - 4096) + "\n"
    reply = await console.ask(request("save_spec", {"path": str(tmp_path / "a.md"),
                                                    "text": text}))
    assert reply["type"] == "factory" and "specs are .md files under" in reply["error"]
    await console.close()
    no_tracebacks(caplog)


def send_raw(path: Path, data: bytes) -> tuple[bytes, bool]:
    """Send data on a connection of its own (in a thread: the daemon runs on the test's loop)
    and read what comes back: the bytes, and whether the daemon closed the connection."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon stopped reading: what it said is still there to read
        got = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:  # it closed while some of ours was still unread
                return got, True
            except TimeoutError:
                return got, False
            if not chunk:
                return got, True
            got += chunk


async def test_an_oversized_request_is_refused_and_its_connection_closed_unbuffered(
        daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    path = socket_path(daemon.factory.root)
    watcher = await Connection.open(path)  # another console, attached throughout
    await watcher.hello()
    # Far more than the limit and no end of line in sight: the daemon answers once it has read
    # REQUEST_LIMIT, long before the line's end (which never comes), so it never holds it all.
    head = b'{"id": 1, "op": "save_spec", "args": {"path": "specs/x.md", "text": "'
    got, closed = await asyncio.to_thread(send_raw, path, head + b"a" * (5 * 1024 * 1024))
    assert closed, "the connection is closed"
    reply = json.loads(got.splitlines()[0])
    assert reply == {"id": None, "type": "protocol",
                     "error": f"a request is longer than {REQUEST_LIMIT} bytes; closing the "
                              "connection"}
    # A line over the limit with its end in the same write: the same.
    line = request("save_spec", {"path": "specs/x.md", "text": "a" * (REQUEST_LIMIT + 1)})
    got, closed = await asyncio.to_thread(send_raw, path, line + b"\n")
    assert closed and json.loads(got.splitlines()[0])["type"] == "protocol"
    # The refused connections are gone, with what was read of them; the daemon serves on.
    await until_alone(daemon, 1)
    assert all(len(c.reader._buffer) == 0 for c in daemon._consoles)
    await watcher.hello()
    other = await Connection.open(path)
    await other.hello()
    await other.close()
    await watcher.close()
    assert not any(r.levelno >= logging.ERROR or r.exc_info for r in caplog.records)
    assert any("longer than" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)


async def until_alone(daemon: Daemon, consoles: int) -> None:
    async with asyncio.timeout(10):
        while daemon.consoles != consoles:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_too_many_requests_in_flight_are_refused(
        daemon: Daemon, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    gate = asyncio.Event()
    started: list[str] = []

    async def approve(key: str, by: str = "console") -> None:  # an approval that takes long
        started.append(key)
        await gate.wait()

    monkeypatch.setattr(daemon.factory, "approve", approve)
    console = await Connection.open(socket_path(daemon.factory.root))
    excess = 6
    console.writer.write(b"".join(request("approve", {"key": f"k{i}"}, i) + b"\n"
                                  for i in range(1, MAX_IN_FLIGHT + excess + 1)))
    refused = [await console.reply() for _ in range(excess)]
    assert [r["id"] for r in refused] == list(range(MAX_IN_FLIGHT + 1,
                                                    MAX_IN_FLIGHT + excess + 1))
    assert all(r["type"] == "protocol" and r["error"] == (
        f"approve: refused: {MAX_IN_FLIGHT} requests of this connection are in flight; wait "
        "for their replies") for r in refused), refused[0]
    reply = await console.ask(request("hello", request_id=0))  # every kind of request counts
    assert reply["type"] == "protocol" and "in flight" in reply["error"]
    for _ in range(500):  # each approval is recorded before it runs
        if len(started) == MAX_IN_FLIGHT:
            break
        await asyncio.sleep(0.01)
    assert len(started) == MAX_IN_FLIGHT
    (connection,) = daemon._consoles
    assert len(connection._tasks) == MAX_IN_FLIGHT
    other = await Connection.open(socket_path(daemon.factory.root))
    await other.hello()  # the limit is one connection's: others are served meanwhile
    await other.close()
    gate.set()
    done = [await console.reply() for _ in range(MAX_IN_FLIGHT)]
    assert sorted(r["id"] for r in done) == list(range(1, MAX_IN_FLIGHT + 1))
    assert all(r["result"] is None for r in done)
    await console.hello()  # replies went out: room again
    await console.close()
    no_tracebacks(caplog)


async def test_a_genuine_failure_is_internal_and_logged_sanitized(
        daemon: Daemon, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug stays an internal error with its traceback in the log, but nothing a console
    sent (nor an exception quoting it) reaches the log with its terminal escapes."""
    async def diff(key: str) -> str:
        raise RuntimeError(f"broke on {key}")

    monkeypatch.setattr(daemon.factory, "diff", diff)
    console = await Connection.open(socket_path(daemon.factory.root))
    reply = await console.ask(request("diff", {"key": ESCAPE}, 5))
    assert reply["id"] == 5 and reply["type"] == "internal"
    assert "\x1b" not in reply["error"] and "\x07" not in reply["error"]
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    logged = record.getMessage()
    assert "daemon: diff failed on" in logged
    assert "Traceback (most recent call last)" in logged and "RuntimeError: broke on" in logged
    assert "\x1b" not in logged and "\x07" not in logged
    assert "␛]0;pwned␇" in logged, "shown, inert"
    await console.hello()
    await console.close()
