"""The agent loop against the scripted OpenAI-compatible server, through real litellm."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.budget import AgentBudget, BudgetLedger
from agents.config import BudgetLimit, BudgetsConfig
from agents.models import ModelRouter
from agents.runtime import AgentLimits, AgentRunner
from agents.sandbox.base import SandboxContext
from agents.sandbox.none import NoneBackend
from agents.store import Store
from agents.tools import ToolContext
from tests.openai_server import Reply, ScriptedServer, call, error


def router(server: ScriptedServer, **kw: object) -> ModelRouter:
    return ModelRouter(roles={"implementer": "openai/gpt-4o-mini"}, api_base=server.api_base,
                       api_key="test-key", max_retries=3, backoff_base=0.01, **kw)  # type: ignore[arg-type]


async def runner(store: Store, server: ScriptedServer, repo: Path, *,
                 limits: AgentLimits | None = None, budget=None,  # type: ignore[no-untyped-def]
                 agent_id: str = "s.t.1") -> AgentRunner:
    sandbox = await NoneBackend().open(SandboxContext(worktree=repo, agent_id=agent_id))
    return AgentRunner(
        store=store, router=router(server), agent_id=agent_id, spec_id="s", task_id="t",
        role="implementer", key="s/t",
        tools=ToolContext(worktree=repo, sandbox=sandbox,
                          test_command="python -m unittest discover -s tests -q"),
        opening=[{"role": "system", "content": "work"}, {"role": "user", "content": "task"}],
        limits=limits or AgentLimits(), budget=budget,
    )


async def kinds(store: Store, agent_id: str = "s.t.1") -> list[str]:
    return [e.event.kind for e in await store.read_events(agent_id=agent_id)]


async def test_happy_path_writes_tests_and_finishes(store: Store, server: ScriptedServer,
                                                    repo: Path) -> None:
    server.script(
        call("read_file", {"path": "calc/ops.py"}),
        call("write_file", {"path": "calc/mul.py", "content": "def mul(a, b):\n    return a*b\n"}),
        call("run_tests"),
        call("finish", {"summary": "added mul"}),
    )
    result = await (await runner(store, server, repo)).run()
    assert result.status == "finished" and result.summary == "added mul"
    assert (repo / "calc" / "mul.py").read_text().startswith("def mul")
    tools = [e.event for e in await store.read_events(agent_id="s.t.1")
             if e.event.kind == "tool_executed"]
    assert [t.name for t in tools] == ["read_file", "write_file", "run_tests", "finish"]  # type: ignore[union-attr]
    assert "def add" in tools[0].result  # type: ignore[union-attr]
    assert "exit code: 0" in tools[2].result  # type: ignore[union-attr]
    agent = store.get("agents", "s.t.1")
    assert agent is not None and agent["tokens_in"] == 400 and agent["status"] == "finished"
    assert agent["cost"] > 0  # priced from litellm's cost map
    # The model saw the tool results of earlier steps (real conversation over HTTP).
    last_request = server.requests[-1]["messages"]
    assert last_request[-1]["role"] == "tool" and "exit code: 0" in last_request[-1]["content"]


async def test_malformed_and_unknown_tool_calls_go_back_to_the_model(
        store: Store, server: ScriptedServer, repo: Path) -> None:
    server.script(
        call("write_file", "{not json"),
        call("write_file", {"path": "x.py"}),  # missing content
        call("delete_everything", {}),
        call("finish", {"summary": "ok"}),
    )
    result = await (await runner(store, server, repo)).run()
    assert result.status == "finished"
    results = [e.event for e in await store.read_events(agent_id="s.t.1")
               if e.event.kind == "tool_executed"]
    assert results[0].is_error and "not valid JSON" in results[0].result  # type: ignore[union-attr]
    assert results[1].is_error and "content: Field required" in results[1].result  # type: ignore[union-attr]
    assert results[2].is_error and "unknown tool 'delete_everything'" in results[2].result  # type: ignore[union-attr]
    # Each error reached the model as the tool result of its call.
    second_request = server.requests[1]["messages"]
    assert "not valid JSON" in second_request[-1]["content"]


async def test_rate_limit_then_success_is_retried(store: Store, server: ScriptedServer,
                                                  repo: Path) -> None:
    server.script(
        error(429, "slow down", **{"retry-after": "0"}),
        error(503, "overloaded"),
        call("finish", {"summary": "done after retries"}),
    )
    result = await (await runner(store, server, repo)).run()
    assert result.status == "finished"
    retries = [e.event for e in await store.read_events(agent_id="s.t.1")
               if e.event.kind == "model_retry"]
    assert [r.status for r in retries] == [429, 503]  # type: ignore[union-attr]
    assert len(server.requests) == 3


async def test_non_retryable_error_fails_the_agent(store: Store, server: ScriptedServer,
                                                   repo: Path) -> None:
    server.script(error(400, "bad request"))
    result = await (await runner(store, server, repo)).run()
    assert result.status == "failed" and "model error" in result.summary
    assert len(server.requests) == 1


async def test_budget_stop_before_exceeding(store: Store, server: ScriptedServer,
                                            repo: Path) -> None:
    server.script(*[Reply(tool_calls=[("list_files", {})], prompt_tokens=400,
                          completion_tokens=100) for _ in range(10)])

    ledger = BudgetLedger(store, "r", BudgetsConfig(agent=BudgetLimit(tokens=1600)))
    budget = AgentBudget(ledger, "s", "s.t.1")

    result = await (await runner(store, server, repo, budget=budget,
                                 limits=AgentLimits(stuck_repeats=99,
                                                    stuck_idle_steps=99))).run()
    assert result.status == "budget"
    # 3 calls = 1500 tokens; a 4th would reach 2000 > 1600, so it is never made.
    assert len(server.requests) == 3
    stops = [e.event for e in await store.read_events(agent_id="s.t.1")
             if e.event.kind == "budget_stop"]
    assert stops and stops[0].used == 1500  # type: ignore[union-attr]


async def test_repeated_identical_call_is_stuck(store: Store, server: ScriptedServer,
                                                repo: Path) -> None:
    server.script(*[call("read_file", {"path": "calc/ops.py"}) for _ in range(10)])
    result = await (await runner(store, server, repo,
                                 limits=AgentLimits(stuck_repeats=3))).run()
    assert result.status == "stuck"
    assert len(server.requests) == 3
    assert "agent_stuck" in await kinds(store)


async def test_steps_without_change_are_stuck(store: Store, server: ScriptedServer,
                                              repo: Path) -> None:
    server.script(*[call("read_file", {"path": "calc/ops.py", "offset": i}) for i in range(9)])
    result = await (await runner(store, server, repo,
                                 limits=AgentLimits(stuck_idle_steps=4))).run()
    assert result.status == "stuck" and "without a change" in result.summary
    assert len(server.requests) == 4


async def test_step_limit(store: Store, server: ScriptedServer, repo: Path) -> None:
    server.script(*[call("write_file", {"path": f"f{i}.py", "content": str(i)})
                    for i in range(5)])
    result = await (await runner(store, server, repo, limits=AgentLimits(max_steps=2))).run()
    assert result.status == "step_limit" and len(server.requests) == 2


async def test_resume_continues_from_the_last_recorded_step(
        store: Store, server: ScriptedServer, repo: Path) -> None:
    server.script(call("write_file", {"path": "a.py", "content": "a = 1\n"}),
                  call("write_file", {"path": "b.py", "content": "b = 2\n"}))
    first = await runner(store, server, repo, limits=AgentLimits(max_steps=2))
    assert (await first.run()).status == "step_limit"
    # A new runner for the same agent (as after a restart) picks the conversation up.
    server.script(call("finish", {"summary": "resumed"}))
    again = await runner(store, server, repo, limits=AgentLimits(max_steps=5))
    result = await again.run()
    assert result.status == "finished" and result.steps == 3
    resumed_request = server.requests[-1]["messages"]
    assert [m["role"] for m in resumed_request] == [
        "system", "user", "assistant", "tool", "assistant", "tool"]
    started = [e.event for e in await store.read_events(agent_id="s.t.1")
               if e.event.kind == "agent_started"]
    assert started[-1].resumed_at_step == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("path", ["../outside.txt", "/etc/passwd", ".git/config",
                                  ".factory.toml"])
async def test_file_tools_stay_inside_the_worktree(store: Store, server: ScriptedServer,
                                                   repo: Path, path: str) -> None:
    (repo / ".factory.toml").write_text("")
    server.script(call("write_file", {"path": path, "content": "pwned"}),
                  call("finish", {"summary": "x"}))
    await (await runner(store, server, repo)).run()
    result = next(e.event for e in await store.read_events(agent_id="s.t.1")
                  if e.event.kind == "tool_executed")
    assert result.is_error and result.result.startswith("denied:")  # type: ignore[union-attr]
    assert not (repo.parent / "outside.txt").exists()


async def test_fallback_model_after_retries_run_out(store: Store, server: ScriptedServer,
                                                    repo: Path) -> None:
    server.script(error(500, "down"), error(500, "still down"),
                  call("finish", {"summary": "from the fallback"}))
    fallback_router = ModelRouter(
        roles={"implementer": "openai/gpt-4o"},
        fallbacks={"openai/gpt-4o": ["openai/gpt-4o-mini"]},
        api_base=server.api_base, api_key="k", max_retries=1, backoff_base=0.01)
    agent = await runner(store, server, repo)
    agent.router = fallback_router
    result = await agent.run()
    assert result.status == "finished"
    assert [r["model"] for r in server.requests] == ["gpt-4o", "gpt-4o", "gpt-4o-mini"]
    turn = next(e.event for e in await store.read_events(agent_id="s.t.1")
                if e.event.kind == "agent_turn")
    assert turn.model == "openai/gpt-4o-mini"  # type: ignore[union-attr]


async def test_ask_is_not_offered_without_anyone_to_ask(store: Store, server: ScriptedServer,
                                                        repo: Path) -> None:
    server.script(call("ask", {"question": "Tabs or spaces?"}), call("finish", {"summary": "x"}))
    result = await (await runner(store, server, repo)).run()
    assert result.status == "finished"
    assert "ask" not in [t["function"]["name"] for t in server.requests[0]["tools"]]
    reply = server.requests[1]["messages"][-1]["content"]
    assert reply.startswith("nobody can be asked here: decide yourself")
    assert not store.rows("questions")


async def test_a_tool_not_offered_is_refused_though_the_registry_knows_it(
        store: Store, server: ScriptedServer, repo: Path) -> None:
    """An agent offered only reading tools (a planner, a reviewer) that names write_file
    (a model's slip, or words injected into what it read) changes nothing."""
    server.script(
        call("write_file", {"path": "calc/evil.py", "content": "x = 1\n"}),
        call("finish", {"summary": "done"}),
    )
    agent = await runner(store, server, repo)
    agent.specs = [s for s in agent.specs if s["function"]["name"] in ("read_file", "finish")]
    agent._offered = {"read_file", "finish"}
    result = await agent.run()
    assert result.status == "finished"
    assert not (repo / "calc" / "evil.py").exists()
    refused = next(e.event for e in await store.read_events(agent_id="s.t.1")
                   if e.event.kind == "tool_executed")
    assert refused.is_error and "unknown tool 'write_file'" in refused.result  # type: ignore[union-attr]
