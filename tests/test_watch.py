"""Watch mode (issue 16, item 2): a spec saved while the factory runs is planned again and the
new plan diffed against the one in force; a saved `.factory.toml` is applied where that is
safe.

Real parts: a git repository, the store, the merge queue with the project's own tests, the
sandbox backend "none", watchfiles on the real folder, and the models played by the
scripted OpenAI-compatible server on 127.0.0.1 through litellm. Each edit is made once the
factory has gone quiet (or while one agent's model call is held), so the script's replies
meet the requests in a known order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agents.engine import Factory
from tests.conftest import git
from tests.openai_server import ScriptedServer
from tests.test_endings import (
    DIV,
    KEY_ENV,
    MUL,
    SPEC,
    UNITTEST,
    Hold,
    configuration,
    environment,
    finish,
    plan,
    project,
    task,
)
from tests.test_endings import asked_for as asks_for_task

pytestmark = pytest.mark.usefixtures("key_env")

CHECK_DIV = "python -c 'import calc.div'"


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(KEY_ENV, "test-key")


@asynccontextmanager
async def watching(root: Path) -> AsyncIterator[Factory]:
    factory = await Factory.open(root)
    run = asyncio.create_task(factory.run(watch=True))
    try:
        yield factory
    finally:
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        await factory.close()


async def until(factory: Factory, what: str, check: Callable[[], Any],
                timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.02)
    tasks = {t["key"]: (t["status"], t["reason"]) for t in factory.store.rows("tasks")}
    notices = [e.message for e in await events(factory, "notice")]
    raise AssertionError(f"timed out waiting for {what}; tasks {tasks}; notices {notices}")


async def events(factory: Factory, kind: str) -> list[Any]:
    return [s.event for s in await factory.store.read_events(limit=100_000)
            if s.event.kind == kind]


async def said_within(factory: Factory, words: str, timeout: float = 30) -> list[str]:
    """The notices saying `words`, once one does (empty after the timeout)."""
    deadline = time.monotonic() + timeout
    found: list[str] = []
    while not found and time.monotonic() < deadline:
        found = [e.message for e in await events(factory, "notice") if words in e.message]
        await asyncio.sleep(0.05)
    return found


def status(factory: Factory, key: str) -> str | None:
    return (factory.store.get("tasks", key) or {}).get("status")


def agents_of(factory: Factory, task_id: str) -> list[str]:
    return sorted(a["id"] for a in factory.store.rows("agents") if a["task_id"] == task_id)


def landed(factory: Factory, *keys: str) -> Callable[[], bool]:
    return lambda: all(status(factory, k) == "landed" for k in keys)


def save(root: Path, text: str) -> None:
    (root / "specs" / "calc.md").write_text(text)


ONLY_MUL = SPEC.replace("- calc/div.py\n", "")
WITH_POW = SPEC.replace("- tests/test_mul.py\n", "- tests/test_mul.py\n- calc/pow.py\n") \
    .replace("## Architecture", "Add `pow` too.\n\n## Architecture")
POW = ("write_file", {"path": "calc/pow.py", "content": "def pow_(a, b):\n    return a ** b\n"})


class HoldFirst(Hold):
    """Holds the first model call of the task's agent only (until released): that agent is
    at work when the spec changes; the agent that replaces it is answered from the script."""

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        if asks_for_task(body, self.task_id) and not self.held and not self.released.is_set():
            self.held.append(body)
            self.released.wait(120)
            return 503, {}, {"error": {"message": "held, never answered"}}
        return self._answer(path, body)


@pytest.fixture
def hold_first(server: ScriptedServer) -> Any:
    holds: list[HoldFirst] = []

    def make(task_id: str) -> HoldFirst:
        holds.append(HoldFirst(server, task_id))
        return holds[-1]

    yield make
    for h in holds:
        h.release()


def with_check(t: dict[str, Any]) -> dict[str, Any]:
    return {**t, "acceptance": [UNITTEST, CHECK_DIV]}


async def test_an_edited_acceptance_reruns_only_the_changed_task(
        tmp_path: Path, server: ScriptedServer, hold_first: Any) -> None:
    root = project(tmp_path, server, concurrency=2)
    server.script(plan(task("mul"), task("div")), MUL, finish())
    held = hold_first("div")  # div's agent is at work (its call held) when the spec changes
    async with watching(root) as factory:
        await until(factory, "mul landed, div at work",
                    lambda: landed(factory, "calc/mul")() and held.held)
        # The planner keeps mul as it was and changes div's acceptance; div's new agent
        # then writes it.
        server.script(plan(task("mul"), with_check(task("div"))), DIV, finish())
        save(root, SPEC.replace("## Acceptance\n", f"## Acceptance\n- `{CHECK_DIV}`\n"))
        await until(factory, "div landed", landed(factory, "calc/div"))
        stopped = factory.store.get("agents", "calc.div.1")
        assert stopped is not None and stopped["status"] == "cancelled"
        assert agents_of(factory, "mul") == ["calc.mul.1"]  # its work kept, not redone
        assert agents_of(factory, "div") == ["calc.div.1", "calc.div.2"]
        assert factory.store.get("tasks", "calc/div")["acceptance"] == [UNITTEST, CHECK_DIV]
        planners = [a for a in factory.store.rows("agents") if a["role"] == "planner"]
        assert len(planners) == 2
        # The re-planner was shown the plan in force, to keep unchanged tasks' ids.
        replan = next(r for r in server.requests
                      if "The spec was edited" in str(r["messages"][1]["content"]))
        assert '"id": "mul"' in replan["messages"][1]["content"]
    assert "calc/div.py" in git(root, "ls-tree", "-r", "--name-only", "main")


async def test_a_task_the_new_plan_drops_is_stopped_and_no_longer_counts(
        tmp_path: Path, server: ScriptedServer, hold_first: Any) -> None:
    root = project(tmp_path, server, concurrency=2)
    server.script(plan(task("mul"), task("div")), MUL, finish())
    held = hold_first("div")
    async with watching(root) as factory:
        await until(factory, "mul landed, div at work",
                    lambda: landed(factory, "calc/mul")() and held.held)
        server.script(plan(task("mul")))
        save(root, ONLY_MUL)
        await until(factory, "div cancelled", lambda: status(factory, "calc/div") == "cancelled")
        await until(factory, "the spec done",
                    lambda: (factory.store.get("specs", "calc") or {}).get("status") == "done")
        spec = factory.store.get("specs", "calc")
        assert (spec["tasks_total"], spec["tasks_landed"]) == (1, 1)
        assert factory.store.get("tasks", "calc/div")["ordinal"] is None
        worktree = root / ".factory" / "worktrees" / "calc--div"
        assert "the new plan drops it" in factory.store.get("tasks", "calc/div")["reason"]
        assert not worktree.exists()
    assert "calc/div.py" not in git(root, "ls-tree", "-r", "--name-only", "main")


async def test_an_added_section_starts_a_new_task_and_keeps_the_rest(
        tmp_path: Path, server: ScriptedServer) -> None:
    root = project(tmp_path, server)
    server.script(plan(task("mul")), MUL, finish())
    async with watching(root) as factory:
        await until(factory, "mul landed", landed(factory, "calc/mul"))
        server.script(plan(task("mul"), task("pow", "calc/pow.py")),
                      type(MUL)(tool_calls=[POW]), finish())
        save(root, WITH_POW)
        await until(factory, "pow landed", landed(factory, "calc/pow"))
        assert agents_of(factory, "mul") == ["calc.mul.1"]
        spec = factory.store.get("specs", "calc")
        assert (spec["tasks_total"], spec["tasks_landed"]) == (2, 2)
    assert "calc/pow.py" in git(root, "ls-tree", "-r", "--name-only", "main")


async def test_an_invalid_save_is_reported_and_the_plan_stays(
        tmp_path: Path, server: ScriptedServer) -> None:
    root = project(tmp_path, server)
    server.script(plan(task("mul")), MUL, finish())
    async with watching(root) as factory:
        await until(factory, "mul landed", landed(factory, "calc/mul"))
        digest = factory.store.get("specs", "calc")["digest"]
        asked = len(server.requests)
        save(root, SPEC.replace('id = "calc"', 'id = "calc"\npriority = "high"'))
        found = await said_within(factory, "last good save")
        assert found and "calc.md:" in found[0] and "priority" in found[0], found
        await asyncio.sleep(0.3)
        assert factory.store.get("specs", "calc")["digest"] == digest
        assert len(server.requests) == asked  # nothing planned from it
        assert status(factory, "calc/mul") == "landed"


async def test_a_saved_configuration_is_applied_where_safe(
        tmp_path: Path, server: ScriptedServer) -> None:
    root = project(tmp_path, server)
    server.script(plan(task("mul")), MUL, finish())
    async with watching(root) as factory:
        await until(factory, "mul landed", landed(factory, "calc/mul"))
        text = configuration(server.api_base, concurrency=3)
        text = text.replace('planner = "openai/gpt-4o-mini"', 'planner = "openai/gpt-4o"')
        (root / ".factory.toml").write_text(text + "\n[queue]\nrunners = 3\n")

        async def said(words: str) -> list[str]:
            return [e.message for e in await events(factory, "notice") if words in e.message]

        await said_within(factory, "after a restart")
        applied = await said("configuration applied")
        assert applied and "run.concurrency" in applied[0] and "queue.runners" in applied[0]
        later = await said("after a restart")
        assert later and "models.planner" in later[0] and "run.concurrency" not in later[0]
        assert factory.orchestrator is not None
        assert factory.orchestrator.config.run.concurrency == 3
        assert factory.orchestrator.config.models.planner == "openai/gpt-4o-mini"
        # A configuration that does not load changes nothing and says why.
        (root / ".factory.toml").write_text(text.replace("concurrency = 3",
                                                         'concurrency = "3"'))
        await said_within(factory, "stays")
        refused = await said("stays")
        assert refused and "run.concurrency" in refused[0]
        assert factory.orchestrator.config.run.concurrency == 3


def test_factory_watch_keeps_running_until_ctrl_c(tmp_path: Path, server: ScriptedServer) -> None:
    """The command: it does not end when everything landed, plans a saved spec again, and
    stops on ctrl+c as a run does (exit 130, the store keeping every step)."""
    import signal
    import subprocess
    import sys

    from tests.test_endings import ROOT, db_of, query

    root = project(tmp_path, server)
    server.script(plan(task("mul")), MUL, finish(), plan(task("mul")))
    proc = subprocess.Popen([sys.executable, "-m", "console.cli", "watch", "--root", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=environment())

    def plans() -> int:
        return len(query(root, "SELECT id FROM events WHERE kind = 'plan_accepted'"))

    try:
        deadline = time.monotonic() + 60
        while not query(root, "SELECT key FROM tasks WHERE status = 'landed'"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.5)
        assert proc.poll() is None  # everything landed, and it goes on watching
        save(root, SPEC.replace("## Goal\n", "## Goal\nAlso document it.\n"))
        while plans() < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert db_of(root).exists()
