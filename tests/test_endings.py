"""How `factory run` ends, as a person sees it: its exit code and what it prints.

Real parts only: `factory run` is a real subprocess over a real git repository and store; the
models are played by the scripted OpenAI-compatible server on 127.0.0.1 through real litellm
(`[models] api_base`); the sandbox backend is "none"; the landing gates run the project's
real tests.

0: everything planned landed. 1: the run went to its end and something was rejected, failed
or blocked (the summary says what and why). 2: the run could not start. 128+signal: stopped
by SIGTERM or SIGINT (the store keeps every step; `factory run` resumes).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agents.store.audit import verify_chain
from tests.conftest import git, make_repo
from tests.openai_server import Reply, ScriptedServer, call, provider_error

ROOT = Path(__file__).resolve().parents[1]
MODEL = "openai/gpt-4o-mini"
KEY_ENV = "FACTORY_ENDINGS_TEST_KEY"
UNITTEST = "python -m unittest discover -s tests -q"

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
- tests/test_mul.py

## Edge cases
- Division by zero raises ZeroDivisionError.

## Invariants
- `add` and `sub` do not change.

## Acceptance
- `python -m unittest discover -s tests -q`
"""

OPS_SPEC = SPEC.replace('id = "calc"', 'id = "ops"').replace("More operations", "Ops")

DOCS_SPEC = """\
+++
id = "docs"
title = "Document the operations"
depends_on = ["calc"]
+++

## Goal
Describe every operation of `calc` in the README.

## Architecture
One section per operation.

## Boundaries
- README.md

## Edge cases
- None.

## Invariants
- The code does not change.

## Acceptance
- `python -m unittest discover -s tests -q`
"""


# -- the project, the models' script, the command ---------------------------------------------

def task(id_: str, *paths: str) -> dict[str, Any]:
    return {"id": id_, "title": f"Add {id_}", "paths": list(paths) or [f"calc/{id_}.py"],
            "acceptance": [UNITTEST]}


def plan(*tasks: dict[str, Any]) -> Reply:
    return call("submit_plan", {"tasks": list(tasks) or [task("mul")]})


def write(path: str, body: str) -> Reply:
    return call("write_file", {"path": path, "content": body})


def finish(summary: str = "done") -> Reply:
    return call("finish", {"summary": summary})


MUL = write("calc/mul.py", "def mul(a, b):\n    return a * b\n")
DIV = write("calc/div.py", "def div(a, b):\n    return a / b\n")
WRONG_MUL = write("calc/mul.py", "def mul(a, b):\n    return a + b\n")
MUL_TEST = write("tests/test_mul.py", (
    "import unittest\n\nfrom calc.mul import mul\n\n\n"
    "class MulTest(unittest.TestCase):\n"
    "    def test_mul(self):\n        self.assertEqual(mul(2, 3), 6)\n"))


def configuration(api_base: str | None, *, key_env: str | None = KEY_ENV, max_retries: int = 0,
                  concurrency: int = 1) -> str:
    models = [f'{role} = "{MODEL}"' for role in ("planner", "implementer", "reviewer")]
    if api_base is not None:
        models.append(f'api_base = "{api_base}"')
    if key_env is not None:
        models.append(f'api_key_env = "{key_env}"')
    return "\n".join([
        "[models]", *models, f"max_retries = {max_retries}", "",
        "[run]", f"concurrency = {concurrency}", "task_retries = 0", "",
        "[sandbox]", 'backend = "none"', "",
        "[repo]", f'test_command = "{sys.executable} -m unittest discover -s tests -q"', "",
    ])


def project(tmp_path: Path, server: ScriptedServer | None, *, specs: dict[str, str] | None = None,
            **settings: Any) -> Path:
    """The calc repository with its specs, configured to reach the scripted server."""
    root = make_repo(tmp_path / "repo")
    (root / "specs").mkdir()
    for name, text in ({"calc.md": SPEC} if specs is None else specs).items():
        (root / "specs" / name).write_text(text)
    (root / "specs" / "README.md").write_text("The specs of calc.\n")
    api_base = server.api_base if server is not None else None
    (root / ".factory.toml").write_text(configuration(api_base, **settings))
    git(root, "add", "-A")
    git(root, "commit", "-qm", "specs and configuration")
    return root


def environment(**extra: str) -> dict[str, str]:
    """This environment without any provider's key, with the test's key and `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "ANTHROPIC_", "AZURE_")) and k != KEY_ENV}
    return {**env, "LITELLM_LOCAL_MODEL_COST_MAP": "True", KEY_ENV: "test-key", **extra}


def start(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "console.cli", "run", "--root", str(root), "--headless", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=env if env is not None else environment())


@dataclass
class Ended:
    code: int
    out: str  # stdout, its whitespace collapsed (a long line may wrap)
    err: str  # stderr, likewise

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def ended(proc: subprocess.Popen[str], timeout: float = 60) -> Ended:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"factory run did not end within {timeout} s:\n{out}\n{err}") \
            from None
    return Ended(proc.returncode, " ".join(out.split()), " ".join(err.split()))


def factory_run(root: Path, *args: str, env: dict[str, str] | None = None) -> Ended:
    return ended(start(root, *args, env=env))


# -- the store, read as another process reads it ----------------------------------------------

def db_of(root: Path) -> Path:
    return root / ".factory" / "factory.db"


def query(root: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    if not db_of(root).exists():
        return []
    conn = sqlite3.connect(f"file:{db_of(root)}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        conn.close()


def events(root: Path, kind: str) -> list[dict[str, Any]]:
    return [json.loads(data) for (data,) in query(
        root, "SELECT data FROM events WHERE kind = ? ORDER BY id", kind)]


def runs(root: Path) -> dict[str, str]:
    return dict(query(root, "SELECT id, status FROM runs"))


def wait_for(proc: subprocess.Popen[str], check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            raise AssertionError(f"factory run ended before {what}: {ended(proc)}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}: {ended(proc)}")


def agent_started(root: Path, agent_id: str) -> bool:
    return any(e.get("agent_id") == agent_id for e in events(root, "agent_started"))


def asked_for(request: dict[str, Any], task_id: str) -> bool:
    return any(f"Task `{task_id}`" in str(m.get("content") or "")
               for m in request.get("messages", []))


class Hold:
    """Holds the scripted server's answer to every request of task `task_id`'s agent until
    released, so that the agent is still working when the test stops the run. A held
    request is never answered from the script (its client is gone by then)."""

    def __init__(self, server: ScriptedServer, task_id: str) -> None:
        self.task_id = task_id
        self.released = threading.Event()
        self.held: list[dict[str, Any]] = []
        self._answer = server._answer
        server._answer = self.answer  # type: ignore[method-assign]
        handle_error = server.httpd.handle_error

        def quietly(request: Any, address: Any) -> None:
            # A held request's client went away with its process: nothing to report.
            if not isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError):
                handle_error(request, address)

        server.httpd.handle_error = quietly  # type: ignore[method-assign]

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        if asked_for(body, self.task_id) and not self.released.is_set():
            self.held.append(body)
            self.released.wait(120)
            return 503, {}, {"error": {"message": "held, never answered"}}
        return self._answer(path, body)

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def hold(server: ScriptedServer) -> Any:
    holds: list[Hold] = []

    def make(task_id: str) -> Hold:
        holds.append(Hold(server, task_id))
        return holds[-1]

    yield make
    for h in holds:
        h.release()


# -- 0: everything planned landed -------------------------------------------------------------

def test_everything_landed_exits_0(tmp_path: Path, server: ScriptedServer) -> None:
    root = project(tmp_path, server)
    server.script(plan(), MUL, finish("mul"))
    result = factory_run(root)
    assert result.code == 0, str(result)
    (run_id, status), = runs(root).items()
    assert status == "done"
    assert f"Run {run_id}: done;" in result.out, str(result)
    assert "landed calc/mul" in result.out, str(result)
    for word in ("rejected", "failed", "blocked"):
        assert word not in result.out, str(result)
    assert (root / "calc" / "mul.py").read_text() == "def mul(a, b):\n    return a * b\n"
    assert git(root, "status", "--porcelain").strip() == ""


def test_a_run_of_one_spec_is_judged_by_that_spec_alone(
        tmp_path: Path, server: ScriptedServer) -> None:
    """`factory run calc` after an earlier `factory run ops` whose branch was rejected:
    everything this run planned landed, so it is done (0); ops's old rejection is not its."""
    root = project(tmp_path, server, specs={"calc.md": SPEC, "ops.md": OPS_SPEC})
    server.script(plan(task("mul", "calc/mul.py", "tests/test_mul.py")), WRONG_MUL, MUL_TEST,
                  finish("mul, wrong"))
    first = factory_run(root, "ops")
    assert first.code == 1, str(first)
    assert "rejected ops/mul: tests: tests failed" in first.out, str(first)
    before = set(runs(root))

    server.script(plan(), MUL, finish("mul"))
    second = factory_run(root, "calc")
    assert "calc: done (1 of 1 tasks landed)" in second.out, str(second)
    assert "landed calc/mul" in second.out, str(second)
    run_id, = set(runs(root)) - before
    summary = second.out.split(f"Run {run_id}:", 1)[1]
    # Fails: Orchestrator.summary() reports every task in the store, ops/mul included, so
    # the run is "failed" and `factory run calc` exits 1.
    assert "ops/mul" not in summary, str(second)
    assert summary.startswith(" done;"), str(second)
    assert runs(root)[run_id] == "done"
    assert second.code == 0, str(second)


# -- 1: the run went to its end, and something did not land -----------------------------------

def test_a_rejected_branch_exits_1_naming_the_task_the_gate_and_why(
        tmp_path: Path, server: ScriptedServer) -> None:
    root = project(tmp_path, server)
    server.script(plan(task("mul", "calc/mul.py", "tests/test_mul.py")),
                  WRONG_MUL, MUL_TEST, finish("mul, with its test"))
    result = factory_run(root)
    assert result.code == 1, str(result)
    (run_id, status), = runs(root).items()
    assert status == "failed"
    assert f"Run {run_id}: failed;" in result.out, str(result)
    # The task, the gate, why, and which test failed.
    assert "rejected calc/mul: tests: tests failed (exit code 1): " in result.out, str(result)
    assert "test_mul" in result.out.split("rejected calc/mul:", 1)[1], str(result)
    assert "spec failed calc: 0 of 1 tasks landed" in result.out, str(result)
    assert "landed" not in result.out.replace("tasks landed", ""), str(result)
    assert not (root / "calc" / "mul.py").exists()  # main is as it was


def test_a_failed_task_exits_1_naming_the_task_and_why(
        tmp_path: Path, server: ScriptedServer) -> None:
    root = project(tmp_path, server)
    looking = call("list_files", {"path": "calc"})
    server.script(plan(), looking, looking, looking)
    result = factory_run(root)
    assert result.code == 1, str(result)
    assert ": failed;" in result.out, str(result)
    assert "failed calc/mul: agent stuck: the same call (list_files) repeated 3 times" \
        in result.out, str(result)
    assert "spec failed calc: 0 of 1 tasks landed" in result.out, str(result)
    assert len(server.requests) == 4  # the plan, three turns: no retry ([run] task_retries 0)


def test_a_rejected_plan_and_the_spec_it_blocks_exit_1(
        tmp_path: Path, server: ScriptedServer) -> None:
    root = project(tmp_path, server, specs={"calc.md": SPEC, "docs.md": DOCS_SPEC})
    server.script(finish("I will not split this spec into tasks"))
    result = factory_run(root)
    assert result.code == 1, str(result)
    assert ": failed;" in result.out, str(result)
    assert "spec failed calc: planner finished: I will not split this spec into tasks" \
        in result.out, str(result)
    assert "spec blocked docs: depends on calc, which is failed" in result.out, str(result)
    assert len(server.requests) == 1  # the docs spec was never planned


# -- 2: the run cannot start -------------------------------------------------------------------

def test_an_unknown_spec_id_exits_2(tmp_path: Path, server: ScriptedServer) -> None:
    root = project(tmp_path, server)
    result = factory_run(root, "nope")
    assert result.code == 2, str(result)
    assert "error: unknown spec(s): nope; known: calc" in result.err, str(result)
    assert "Traceback" not in result.err
    assert events(root, "run_started") == [] and server.requests == []


def test_no_specs_exits_2(tmp_path: Path, server: ScriptedServer) -> None:
    root = project(tmp_path, server, specs={})
    result = factory_run(root)
    assert result.code == 2, str(result)
    assert f"error: no specs in {root / 'specs'}" in result.err, str(result)
    assert events(root, "run_started") == [] and server.requests == []


@pytest.mark.parametrize(("broken", "said"), [
    ('concurrency = "four"', "run.concurrency: expected an integer, got 'four'"),
    ("concurrency = ", "invalid TOML: "),
    ("concurency = 2", "run.concurency: unknown key 'concurency' in [run]; known keys: "),
], ids=["wrong-type", "not-toml", "unknown-key"])
def test_a_broken_configuration_exits_2_naming_file_and_line(
        tmp_path: Path, server: ScriptedServer, broken: str, said: str) -> None:
    root = project(tmp_path, server)
    config = root / ".factory.toml"
    lines = config.read_text().splitlines()
    line = lines.index("concurrency = 1") + 1
    lines[line - 1] = broken
    config.write_text("\n".join(lines) + "\n")
    result = factory_run(root)
    assert result.code == 2, str(result)
    assert f"error: {config}:{line}: {said}" in result.err, str(result)
    assert "Traceback" not in result.err
    assert not db_of(root).exists() and server.requests == []


def test_a_missing_provider_key_exits_2_before_any_run(tmp_path: Path) -> None:
    root = project(tmp_path, None, key_env=None)
    env = environment()
    assert "OPENAI_API_KEY" not in env
    result = factory_run(root, env=env)
    assert result.code == 2, str(result)
    assert "error: the run cannot start: its models cannot work:" in result.err, str(result)
    assert ("models.planner, models.implementer, models.reviewer = 'openai/gpt-4o-mini': "
            "OPENAI_API_KEY is not set; export it, or set [models] api_key_env to the variable "
            "that holds the key") in result.err, str(result)
    assert "Traceback" not in result.err
    assert events(root, "run_started") == [] and runs(root) == {}


def test_an_unset_api_key_env_exits_2_naming_it(tmp_path: Path, server: ScriptedServer) -> None:
    root = project(tmp_path, server, key_env="FACTORY_ENDINGS_UNSET_KEY")
    env = environment()
    assert "FACTORY_ENDINGS_UNSET_KEY" not in env
    result = factory_run(root, env=env)
    assert result.code == 2, str(result)
    assert ("'openai/gpt-4o-mini': FACTORY_ENDINGS_UNSET_KEY is not set ([models] api_key_env "
            f"names it); export it with the key for {server.api_base}") in result.err, str(result)
    assert events(root, "run_started") == [] and runs(root) == {}
    assert server.requests == []  # nothing was sent


# -- model errors: the run starts, the agent fails, the summary says why ----------------------

MODEL_ERRORS = [
    pytest.param(
        [provider_error(401, "Incorrect API key provided: sk-test***abcd.",
                        code="invalid_api_key")], 2, 1,
        "authentication failed for openai/gpt-4o-mini (401): Incorrect API key provided: "
        f"sk-test***abcd; check the key in ${KEY_ENV}", id="401"),
    pytest.param(
        [provider_error(404, "The model `gpt-4o-mini` does not exist or you do not have "
                        "access to it.", code="model_not_found")], 2, 1,
        "unknown model openai/gpt-4o-mini (404): The model `gpt-4o-mini` does not exist or you "
        "do not have access to it; check the model name in [models]", id="404"),
    pytest.param(
        [provider_error(429, "Rate limit reached for gpt-4o-mini: Limit 3, Used 3, "
                        "Requested 1.", type="requests", code="rate_limit_exceeded",
                        headers={"Retry-After": "0"}) for _ in range(3)], 2, 3,
        "rate limited by openai/gpt-4o-mini (429) after 3 attempts: Rate limit reached for "
        "gpt-4o-mini: Limit 3, Used 3, Requested 1; lower [run] concurrency", id="429"),
    pytest.param(
        [provider_error(400, "This model's maximum context length is 128000 tokens. However, "
                        "your messages resulted in 130412 tokens.",
                        code="context_length_exceeded", param="messages")], 2, 1,
        "the conversation is too long for openai/gpt-4o-mini's context window (400): This "
        "model's maximum context length is 128000 tokens. However, your messages resulted in "
        "130412 tokens; use a model with a larger window", id="400-context"),
]


@pytest.mark.parametrize(("replies", "max_retries", "sent", "said"), MODEL_ERRORS)
def test_a_model_error_fails_the_agent_and_says_why(
        tmp_path: Path, server: ScriptedServer, replies: list[Reply], max_retries: int,
        sent: int, said: str) -> None:
    root = project(tmp_path, server, max_retries=max_retries)
    server.script(plan(), *replies, Reply(content="a retry would get this"))
    started = time.monotonic()
    result = factory_run(root)
    assert result.code == 1, str(result)
    assert ": failed;" in result.out, str(result)
    assert f"failed calc/mul: agent failed: model error: {said}" in result.out, str(result)
    assert "spec failed calc: 0 of 1 tasks landed" in result.out, str(result)
    # The planner's request, then the agent's: once (max_retries 2 notwithstanding) unless a
    # retry can fix it, then once and max_retries more.
    assert len(server.requests) == 1 + sent, server.requests
    assert all(asked_for(r, "mul") for r in server.requests[1:])
    # Retried only when a retry can fix it, each time as soon as Retry-After said.
    retries = events(root, "model_retry")
    assert [(r["attempt"], r["status"], r["wait"]) for r in retries] == [
        (n, 429, 0.0) for n in range(1, sent)], retries
    assert time.monotonic() - started < 30


# -- stopped by a signal, resumed by the next run ---------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_run_and_the_next_run_resumes_it(
        tmp_path: Path, server: ScriptedServer, hold: Any, sig: signal.Signals) -> None:
    root = project(tmp_path, server)
    held = hold("div")
    server.script(plan(task("mul"), task("div")), MUL, finish("mul"))
    proc = start(root)
    # One slot: mul works and lands; div's agent is waiting on its model when the signal comes.
    wait_for(proc, lambda: events(root, "branch_landed") and agent_started(root, "calc.div.1"),
             "mul to land and div's agent to start")
    wait_for(proc, lambda: held.held, "div's agent to call its model")
    proc.send_signal(sig)
    first = ended(proc)
    held.release()
    assert len(held.held) == 1
    assert first.code == 128 + sig, str(first)
    assert "stopped: the store keeps every committed step; `factory run` resumes" in first.err, \
        str(first)
    (run_id, status), = runs(root).items()
    assert status == "cancelled"
    assert [(e["run_id"], e["status"]) for e in events(root, "run_finished")] == [
        (run_id, "cancelled")]
    assert verify_chain(db_of(root)).ok
    assert (root / "calc" / "mul.py").exists() and not (root / "calc" / "div.py").exists()
    mul_requests = sum(asked_for(r, "mul") for r in server.requests)
    assert mul_requests == 2

    server.script(DIV, finish("div"))
    second = factory_run(root)
    assert second.code == 0, str(second)
    assert "landed calc/div" in second.out, str(second)
    assert "rejected" not in second.out and "failed" not in second.out, str(second)
    statuses = runs(root)
    assert statuses[run_id] == "cancelled" and len(statuses) == 2
    assert sorted(statuses.values()) == ["cancelled", "done"]
    # Nothing landed was redone: mul's agent made no new call, and landed once.
    assert sum(asked_for(r, "mul") for r in server.requests) == mul_requests
    assert [e["task_id"] for e in events(root, "branch_landed")] == ["mul", "div"]
    assert len([e for e in events(root, "task_started") if e["task_id"] == "mul"]) == 1
    tasks = [line for line in git(root, "log", "--first-parent", "main",
                                  "--format=%(trailers:key=Factory-Task,valueonly)").split("\n")
             if line.strip()]
    assert sorted(tasks) == ["calc/div", "calc/mul"]
    assert verify_chain(db_of(root)).ok


def test_a_killed_run_is_recorded_interrupted_when_the_next_starts(
        tmp_path: Path, server: ScriptedServer, hold: Any) -> None:
    root = project(tmp_path, server)
    held = hold("mul")
    server.script(plan())
    proc = start(root)
    wait_for(proc, lambda: held.held, "mul's agent to call its model")
    # While it runs, another run cannot start (2), and says why.
    other = factory_run(root)
    assert other.code == 2, str(other)
    assert "error: this factory is open in another process" in other.err, str(other)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    held.release()
    (run_id, status), = runs(root).items()
    assert status == "running"  # the store could not record otherwise
    assert events(root, "run_finished") == []
    # But no live process holds its lease: `factory status` shows it interrupted already.
    shown = subprocess.run(
        [sys.executable, "-m", "console.cli", "status", "--root", str(root), "--json"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    assert shown.returncode == 0, shown.stderr
    assert {r["id"]: r["status"] for r in json.loads(shown.stdout)["runs"]} == {
        run_id: "interrupted"}

    server.script(MUL, finish("mul"))
    result = factory_run(root)
    assert result.code == 0, str(result)
    assert f"run {run_id} interrupted" in result.out, str(result)
    assert "landed calc/mul" in result.out, str(result)
    statuses = runs(root)
    assert statuses.pop(run_id) == "interrupted"
    assert list(statuses.values()) == ["done"]
    interrupted, done = events(root, "run_finished")
    assert (interrupted["run_id"], interrupted["status"]) == (run_id, "interrupted")
    assert f":{proc.pid}:" in interrupted["detail"], interrupted
    assert "went away before it finished" in interrupted["detail"], interrupted
    assert done["status"] == "done" and done["run_id"] != run_id
    assert verify_chain(db_of(root)).ok
