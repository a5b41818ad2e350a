"""An agent asks the supervisor a question: real factory runs over a real git repository and
store, the model played by the scripted OpenAI-compatible server through real litellm.

Supervised, the agent stops and waits as state (no model calls, no process, no slot) until a
person answers through `Factory.answer` or the timeout lets the engine answer; then it is
resumed. Unsupervised, the engine answers at once. A run killed while an agent waits
resumes with the same question, still pending, never asked twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agents import events as ev
from agents.engine import Factory
from agents.errors import FactoryError
from agents.questions import DECIDE_ALONE, question_id
from agents.store.audit import compare_projections, verify_chain
from tests.conftest import git, make_repo
from tests.openai_server import ScriptedServer, call

KEY_ENV = "FACTORY_QUESTIONS_TEST_KEY"
QUESTION = {"question": "Should mul accept floats too?", "options": ["yes", "ints only"]}

SPEC = """\
+++
id = "calc"
title = "More operations"
+++

## Goal
Add multiplication and division to `calc`.

## Architecture
One module per operation.

## Boundaries
- calc/mul.py
- calc/div.py

## Edge cases
- Division by zero raises ZeroDivisionError.

## Invariants
- `add` and `sub` do not change.

## Acceptance
- `python -m unittest discover -s tests -q`
"""


def task(id_: str, path: str) -> dict[str, Any]:
    return {"id": id_, "title": f"Add {id_}", "paths": [path],
            "acceptance": ["python -m unittest discover -s tests -q"]}


def plan(*tasks: dict[str, Any]) -> Any:
    return call("submit_plan", {"tasks": list(tasks) or [task("mul", "calc/mul.py")]})


def write(path: str, body: str) -> Any:
    return call("write_file", {"path": path, "content": body})


MUL = write("calc/mul.py", "def mul(a, b):\n    return a * b\n")
DIV = write("calc/div.py", "def div(a, b):\n    return a / b\n")


def finish(summary: str = "done") -> Any:
    return call("finish", {"summary": summary})


def project(tmp_path: Path, server: ScriptedServer, *, concurrency: int = 2,
            timeout: float = 600) -> Path:
    """The calc repository with one spec, configured to reach the scripted server."""
    root = make_repo(tmp_path / "repo")
    (root / "specs").mkdir()
    (root / "specs" / "calc.md").write_text(SPEC)
    test_command = f"{sys.executable} -m unittest discover -s tests -q"
    (root / ".factory.toml").write_text(f"""\
[models]
planner = "openai/gpt-4o-mini"
implementer = "openai/gpt-4o-mini"
reviewer = "openai/gpt-4o-mini"
api_base = "{server.api_base}"
api_key_env = "{KEY_ENV}"
max_retries = 0

[run]
concurrency = {concurrency}
question_timeout_seconds = {timeout}

[sandbox]
backend = "none"

[repo]
test_command = "{test_command}"
""")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "spec and configuration")
    return root


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "test-key")


async def until(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll check (plain or async) until it returns something true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def pending(factory: Factory) -> list[dict[str, Any]]:
    return [q for q in factory.store.rows("questions") if q["status"] == "pending"]


async def log(factory: Factory) -> list[ev.Event]:
    return [s.event for s in await factory.store.read_events(limit=100_000)]


def of_kind(events: list[ev.Event], kind: str) -> list[Any]:
    return [e for e in events if e.kind == kind]


def tool_results(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "tool"]


@pytest.fixture
async def opened() -> AsyncIterator[Callable[..., Any]]:
    factories: list[Factory] = []

    async def open_factory(root: Path, **kw: Any) -> Factory:
        factory = await Factory.open(root, **kw)
        factories.append(factory)
        return factory

    yield open_factory
    for factory in factories:
        await factory.close()


async def test_unsupervised_the_engine_answers_at_once(
        tmp_path: Path, server: ScriptedServer, opened: Callable[..., Any]) -> None:
    root = project(tmp_path, server)
    server.script(plan(), call("ask", QUESTION), MUL, finish("mul; assumed floats are fine"))
    factory: Factory = await opened(root)
    assert not factory.supervised
    summary = await factory.run()
    assert summary.landed == ["calc/mul"]

    # The model was offered the tool, and its result told it to decide on its own.
    assert "ask" in [t["function"]["name"] for t in server.requests[1]["tools"]]
    answer = tool_results(server.requests[2])[-1]
    assert answer == ("Answer from the engine (nobody is supervising this run): "
                      + DECIDE_ALONE)
    assert "state the assumption" in answer
    events = await log(factory)
    asked, = of_kind(events, "question_asked")
    answered, = of_kind(events, "question_answered")
    assert (asked.question, asked.options, asked.task_key) == (
        QUESTION["question"], QUESTION["options"], "calc/mul")
    assert (answered.question_id, answered.by, answered.why) == (
        asked.question_id, "engine", "nobody is supervising this run")
    row = factory.store.get("questions", asked.question_id)
    assert row is not None and row["status"] == "answered" and row["answered_by"] == "engine"
    assert row["agent_id"] == "calc.mul.1" and row["spec_id"] == "calc"
    assert compare_projections(factory.config.store_path) == []


async def test_supervised_the_agent_waits_for_a_person(
        tmp_path: Path, server: ScriptedServer, opened: Callable[..., Any]) -> None:
    root = project(tmp_path, server)
    server.script(plan(), call("ask", QUESTION), MUL, finish())
    factory: Factory = await opened(root, supervised=True)
    run = asyncio.create_task(factory.run())
    try:
        question, = await until(lambda: pending(factory), "the question")
        assert question["question"] == QUESTION["question"]
        assert question["options"] == QUESTION["options"]
        assert question["task_key"] == "calc/mul" and question["asked"] > 0
        agent = factory.store.get("agents", question["agent_id"])
        assert agent is not None and agent["status"] == "waiting"
        await asyncio.sleep(0.3)
        assert len(server.requests) == 2  # waiting makes no model calls
        assert not run.done()

        answered = await factory.answer(question["id"], "  yes, floats too ")
        assert answered.by == "person" and answered.text == "yes, floats too"
        summary = await asyncio.wait_for(run, 60)
    finally:
        run.cancel()
    assert summary.landed == ["calc/mul"]
    assert tool_results(server.requests[2])[-1] == (
        "Answer from the person supervising this run: yes, floats too")

    events = await log(factory)
    asked, = of_kind(events, "question_asked")
    answer, = of_kind(events, "question_answered")
    assert (answer.question_id, answer.answer, answer.by, answer.why) == (
        question["id"], "yes, floats too", "person", "")
    assert asked.question_id == question["id"] == question_id("calc.mul.1", 1, asked.call_id)
    # The answer is recorded before the tool result that carries it.
    order = [e.kind for e in events if e.agent_id == "calc.mul.1"
             and e.kind in ("question_answered", "tool_executed")]
    assert order[:2] == ["question_answered", "tool_executed"]
    row = factory.store.get("questions", question["id"])
    assert row is not None
    assert (row["status"], row["answer"], row["answered_by"]) == (
        "answered", "yes, floats too", "person")
    assert row["answered"] >= row["asked"]
    agent = factory.store.get("agents", "calc.mul.1")
    assert agent is not None and agent["status"] == "finished"
    assert compare_projections(factory.config.store_path) == []

    with pytest.raises(FactoryError, match=r"already answered \(by person\)"):
        await factory.answer(question["id"], "no, ints only")
    with pytest.raises(FactoryError, match="no question q-nope"):
        await factory.answer("q-nope", "yes")
    with pytest.raises(FactoryError, match="needs some text"):
        await factory.answer(question["id"], "   ")
    assert len(of_kind(await log(factory), "question_answered")) == 1


async def test_nobody_answers_in_time_so_the_engine_does(
        tmp_path: Path, server: ScriptedServer, opened: Callable[..., Any]) -> None:
    root = project(tmp_path, server, timeout=0.5)
    server.script(plan(), call("ask", QUESTION), MUL, finish())
    factory: Factory = await opened(root, supervised=True)
    started = time.monotonic()
    summary = await asyncio.wait_for(factory.run(), 60)
    assert summary.landed == ["calc/mul"]
    answer, = of_kind(await log(factory), "question_answered")
    assert (answer.by, answer.why) == ("engine", "nobody answered within 0.5 s")
    assert tool_results(server.requests[2])[-1] == (
        f"Answer from the engine (nobody answered within 0.5 s): {DECIDE_ALONE}")
    assert time.monotonic() - started >= 0.5
    with pytest.raises(FactoryError, match=r"already answered \(by engine\)"):
        await factory.answer(answer.question_id, "too late")


async def test_a_waiting_agent_lends_its_slot_and_the_supervisor_can_leave(
        tmp_path: Path, server: ScriptedServer, opened: Callable[..., Any]) -> None:
    root = project(tmp_path, server, concurrency=1)
    # One slot for two tasks: `mul` asks first; `div` does all its work while `mul` waits.
    server.script(plan(task("mul", "calc/mul.py"), task("div", "calc/div.py")),
                  call("ask", QUESTION), DIV, finish("div"), MUL, finish("mul"))
    factory: Factory = await opened(root, supervised=True)
    run = asyncio.create_task(factory.run())
    try:
        await until(lambda: (factory.store.get("tasks", "calc/div") or {}).get("status")
                    == "landed", "div to land while mul waits")
        question, = pending(factory)
        assert question["task_key"] == "calc/mul"
        factory.supervise(False)  # the person leaves: the engine answers at once
        summary = await asyncio.wait_for(run, 60)
    finally:
        run.cancel()
    assert sorted(summary.landed) == ["calc/div", "calc/mul"]
    answer, = of_kind(await log(factory), "question_answered")
    assert (answer.by, answer.why) == ("engine", "the supervisor left")


async def test_cancelling_a_waiting_task_ends_the_wait(
        tmp_path: Path, server: ScriptedServer, opened: Callable[..., Any]) -> None:
    root = project(tmp_path, server)
    server.script(plan(), call("ask", QUESTION))
    factory: Factory = await opened(root, supervised=True)
    run = asyncio.create_task(factory.run())
    try:
        question, = await until(lambda: pending(factory), "the question")
        assert await factory.cancel_task("calc/mul")
        summary = await asyncio.wait_for(run, 30)
    finally:
        run.cancel()
    assert summary.failed == [("calc/mul", "cancelled by request")]
    row = factory.store.get("questions", question["id"])
    assert row is not None and row["status"] == "withdrawn"
    agent = factory.store.get("agents", question["agent_id"])
    assert agent is not None and agent["status"] == "cancelled"
    assert not of_kind(await log(factory), "question_answered")
    assert len(server.requests) == 2
    with pytest.raises(FactoryError, match="closed: the agent that asked it stopped"):
        await factory.answer(question["id"], "too late")
    assert compare_projections(factory.config.store_path) == []


async def test_a_stopped_run_keeps_the_question_for_the_next(
        tmp_path: Path, server: ScriptedServer, opened: Callable[..., Any]) -> None:
    root = project(tmp_path, server)
    server.script(plan(), call("ask", QUESTION))
    factory: Factory = await opened(root, supervised=True)
    run = asyncio.create_task(factory.run())
    question, = await until(lambda: pending(factory), "the question")
    run.cancel()  # the whole run stops (Ctrl-C, a console closing), not just the task
    with pytest.raises(asyncio.CancelledError):
        await run
    assert pending(factory) == [question]
    # A waiting agent holds no process: it still waits (or, stopped with the run as it was
    # leaving its step, is cancelled, and resumes with the next run all the same).
    agent = factory.store.get("agents", question["agent_id"])
    assert agent is not None and agent["status"] in ("waiting", "cancelled")

    # Answered while no run goes: the next run's agent finds the answer and goes on.
    await factory.answer(question["id"], "ints only")
    server.script(MUL, finish())
    summary = await asyncio.wait_for(factory.run(), 60)
    assert summary.landed == ["calc/mul"]
    assert tool_results(server.requests[2])[-1] == (
        "Answer from the person supervising this run: ints only")
    events = await log(factory)
    assert len(of_kind(events, "question_asked")) == 1
    assert len(of_kind(events, "question_answered")) == 1
    assert compare_projections(factory.config.store_path) == []


async def test_the_bad_tool_calls_go_back_to_the_model(
        tmp_path: Path, server: ScriptedServer, opened: Callable[..., Any]) -> None:
    root = project(tmp_path, server)
    server.script(plan(), call("ask", {"question": "   "}),
                  call("ask", {"question": "Which?", "options": "both"}), MUL, finish())
    factory: Factory = await opened(root, supervised=True)
    summary = await asyncio.wait_for(factory.run(), 60)
    assert summary.landed == ["calc/mul"]
    results = tool_results(server.requests[3])
    assert results[-2].startswith("invalid arguments for ask: question: String should have "
                                  "at least 1 character")
    assert results[-1].startswith("invalid arguments for ask: options: Input should be a "
                                  "valid list")
    executed = of_kind(await log(factory), "tool_executed")
    assert [e.is_error for e in executed if e.name == "ask"] == [True, True]
    assert not factory.store.rows("questions")


# -- a run killed while its agent waits -------------------------------------------------------

SUPERVISED_RUN = """\
import asyncio, sys
from pathlib import Path
from agents.engine import Factory

async def main() -> None:
    factory = await Factory.open(Path(sys.argv[1]), supervised=True)
    try:
        await factory.run()
    finally:
        await factory.close()

asyncio.run(main())
"""


def committed_kinds(db: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [k for (k,) in conn.execute("SELECT kind FROM events ORDER BY id")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def kill_while_waiting(root: Path) -> None:
    db = root / ".factory" / "factory.db"
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISED_RUN, str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
                            cwd=Path(__file__).parent.parent)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if db.exists() and "question_asked" in committed_kinds(db):
                break
            assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
            time.sleep(0.02)
        else:
            pytest.fail("the agent never asked")
        time.sleep(0.2)
        assert proc.poll() is None  # still waiting for an answer
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    assert "run_finished" not in committed_kinds(db)


@pytest.mark.parametrize("supervised", [True, False], ids=["supervised", "headless"])
async def test_killed_while_waiting_resumes_with_the_same_question(
        tmp_path: Path, server: ScriptedServer, opened: Callable[..., Any],
        supervised: bool) -> None:
    root = project(tmp_path, server)
    server.script(plan(), call("ask", QUESTION))
    kill_while_waiting(root)
    assert len(server.requests) == 2

    server.script(MUL, finish())
    factory: Factory = await opened(root, supervised=supervised)
    question, = pending(factory)  # still open after the crash, read from the projection
    agent = factory.store.get("agents", question["agent_id"])
    assert agent is not None and agent["status"] == "waiting"
    run = asyncio.create_task(factory.run())
    try:
        if supervised:
            # A waiting agent is state, not a process: it is resumed only once answered.
            await asyncio.sleep(0.5)
            started = of_kind([s.event for s in await factory.store.read_events(
                agent_id=question["agent_id"])], "agent_started")
            assert len(started) == 1 and not run.done()
            agent = factory.store.get("agents", question["agent_id"])
            assert agent is not None and agent["status"] == "waiting"
            assert len(server.requests) == 2 and pending(factory) == [question]
            await factory.answer(question["id"], "ints only")
        summary = await asyncio.wait_for(run, 60)
    finally:
        run.cancel()
    assert summary.landed == ["calc/mul"]

    events = await log(factory)
    asked, = of_kind(events, "question_asked")  # asked once, before the crash
    answer, = of_kind(events, "question_answered")
    assert asked.question_id == answer.question_id == question["id"]
    resumed = [e for e in of_kind(events, "agent_started") if e.agent_id == "calc.mul.1"]
    assert [e.resumed_at_step for e in resumed] == [0, 1]
    # The model sees one question and its one answer, as if nothing had happened.
    messages = server.requests[2]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    if supervised:
        assert (answer.by, messages[-1]["content"]) == (
            "person", "Answer from the person supervising this run: ints only")
    else:
        assert (answer.by, answer.why) == ("engine", "nobody is supervising this run")
        assert DECIDE_ALONE in messages[-1]["content"]
    db = factory.config.store_path
    assert verify_chain(db).ok
    assert compare_projections(db) == []
