"""Swarm benchmark: the factory's own cost per agent step and per agent, against litellm and git.

In one run on this machine:
1. N agents (default 1,000) of 10 steps each on a zero-latency replay model, each agent with
   its own worktree of the demo repository, its steps recorded in the store, its work
   committed by the engine and its worktree removed, exactly as in a real run;
2. the same number of bare `litellm.acompletion` calls on the same replay model;
3. git's floor for the same agents: `git worktree add -b`, the files the agents write,
   `git add -A`, `git commit`, `git worktree remove`, as plain git processes;
4. a plain `git worktree add` + `git worktree remove` of the same repository (reference).

Agents run one after another so that the parts add up, with budgets set as in a real run.
The work is split into rounds that alternate factory, bare litellm and git's floor, so that
this noisy machine's drift hits all three; per-round figures are reported as medians. It
prints the totals, the factory's overhead per step beyond litellm's own per-call time (goal:
at most 0.3 of it), and the fixed cost per agent for worktree, commit and clean-up against
git's floor for the same work (goal: at most 1.3 times it: the engine does that work through
git, so git's own speed is the floor).
Usage: python tests/bench/bench_swarm.py [--agents N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agents import demo, replay
from agents import events as ev
from agents.budget import AgentBudget, BudgetLedger
from agents.config import BudgetLimit, BudgetsConfig
from agents.gitcmd import GIT_ENV
from agents.models import ModelRouter, litellm_module
from agents.provenance import trailer_block
from agents.runtime import AgentLimits, AgentRunner
from agents.sandbox.base import SandboxContext
from agents.sandbox.none import NoneBackend
from agents.store import Store
from agents.tools import ToolContext, tool_specs
from agents.workspace import Workspace

STEPS = 10


def turns() -> list[dict[str, object]]:
    """Ten steps: look around, read, write and edit files, finish."""
    def turn(name: str, args: dict[str, object]) -> dict[str, object]:
        return {"content": None, "tool_calls": [{"name": name, "arguments": args}],
                "usage": {"prompt_tokens": 1500, "completion_tokens": 120}}

    out = [turn("list_files", {"path": "."}), turn("read_file", {"path": "textkit/stats.py"})]
    out += [turn("write_file", {"path": f"textkit/gen_{i}.py", "content": f"X{i} = {i}\n"})
            for i in range(6)]
    out.append(turn("edit_file", {"path": "textkit/stats.py", "search": "Counting things",
                                  "replace": "Counting things, benchmarked"}))
    out.append(turn("finish", {"summary": "bench agent done"}))
    assert len(out) == STEPS
    return out


def budget_check(store: Store, agent_id: str) -> AgentBudget:
    """The orchestrator's budget gate, with limits that are never reached."""
    limits = BudgetsConfig(run=BudgetLimit(tokens=10**12, usd=10**9),
                           agent=BudgetLimit(tokens=10**12, usd=10**9))
    return AgentBudget(BudgetLedger(store, "bench", limits), "bench", agent_id)


async def factory_phase(store: Store, ws: Workspace, first: int, n: int) \
        -> tuple[float, float, float]:
    """(seconds in agent steps, seconds in worktree+commit+cleanup, total)."""
    router = ModelRouter(roles={"implementer": "replay/bench"})
    backend = NoneBackend()
    steps_time = fixed_time = 0.0
    started = time.perf_counter()
    if True:
        for i in range(first, first + n):
            t0 = time.perf_counter()
            wt = await ws.create("bench", f"t{i}")
            t1 = time.perf_counter()
            sandbox = await backend.open(SandboxContext(worktree=wt.path, agent_id=f"a{i}"))
            runner = AgentRunner(
                store=store, router=router, agent_id=f"a{i}", spec_id="bench",
                task_id=f"t{i}", role="implementer", key=f"bench/t{i}",
                tools=ToolContext(worktree=wt.path, sandbox=sandbox),
                opening=[{"role": "system", "content": "bench"}], limits=AgentLimits(),
                budget=budget_check(store, f"a{i}"),
            )
            result = await runner.run()
            assert result.status == "finished", result
            t2 = time.perf_counter()
            info = await ws.commit(wt, f"bench {i}\n\n" + trailer_block(
                {"Factory-Agent": f"a{i}", "Factory-Task": f"bench/t{i}"}))
            assert info is not None and len(info.files) == 7
            ws.remove(wt.path)
            t3 = time.perf_counter()
            steps_time += t2 - t1
            fixed_time += (t1 - t0) + (t3 - t2)
    return steps_time, fixed_time, time.perf_counter() - started


async def litellm_phase(calls: int, conversation: list[dict[str, object]]) -> float:
    """The very requests agents make: the same tools and conversations of the same length."""
    litellm = litellm_module()
    tools = tool_specs()
    # An agent's k-th call carries the opening message and k earlier turns with results.
    prefixes = [conversation[:1 + 2 * k] for k in range(STEPS)]
    started = time.perf_counter()
    for i in range(calls):
        await litellm.acompletion(model="replay/bench", messages=prefixes[i % STEPS],
                                  tools=tools, metadata={"factory_key": "bench/t0"},
                                  num_retries=0, max_retries=0, timeout=120.0)
    return time.perf_counter() - started


def agent_writes(worktree: Path) -> None:
    """What a bench agent's steps leave in its worktree (its write and edit tools' work)."""
    for step in turns():
        call = step["tool_calls"][0]  # type: ignore[index]
        args = call["arguments"]
        if call["name"] == "write_file":
            (worktree / args["path"]).write_text(args["content"])
        elif call["name"] == "edit_file":
            target = worktree / args["path"]
            target.write_text(target.read_text().replace(args["search"], args["replace"], 1))


def git_floor(root: Path, first: int, n: int) -> float:
    """Seconds git itself takes for n agents' fixed work, as plain processes: the worktree
    (`git worktree add -b`), the commit of the agent's files (`git add -A`, `git commit`,
    without automatic gc, as the engine commits) and the clean-up (`git worktree remove`).
    Writing the files is the agent's work, not timed (as in the factory's figure)."""
    env = {**os.environ, **GIT_ENV}

    def run(*args: str, cwd: Path = root) -> None:
        subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                       stdin=subprocess.DEVNULL)

    total = 0.0
    for i in range(first, first + n):
        path = root / ".factory" / "floor" / f"f{i}"
        t0 = time.perf_counter()
        run("worktree", "add", "-q", "-b", f"floor/f{i}", str(path), "main")
        t1 = time.perf_counter()
        agent_writes(path)
        t2 = time.perf_counter()
        run("add", "-A", cwd=path)
        run("-c", "gc.auto=0", "commit", "-q", "-m", f"floor {i}", cwd=path)
        run("worktree", "remove", "--force", str(path))
        total += (t1 - t0) + (time.perf_counter() - t2)
    return total


def plain_worktree(root: Path, n: int) -> float:
    times = []
    for i in range(n):
        path = root / ".factory" / f"plain{i}"
        t0 = time.perf_counter()
        subprocess.run(["git", "worktree", "add", "-q", "-b", f"plain{i}", str(path), "main"],
                       cwd=root, check=True)
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=root,
                       check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    # Short rounds pair each factory stretch with a bare one a few seconds apart: with five
    # long ones, this machine's drift moved the ratio by 0.2 from run to run.
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    root = demo.build(Path(tempfile.mkdtemp(prefix="factory-bench-swarm-")) / "demo", "none")
    files = len(subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True,
                               check=True).stdout.split())
    trajectory = replay.Trajectory("bench", root / "bench.json", "gpt-4o-mini", 0.0,
                                   {f"bench/t{i}": turns() for i in range(args.agents)})
    replay.register(trajectory)
    litellm_module()  # import outside the timings

    n, calls = args.agents, args.agents * STEPS
    per_round = n // args.rounds

    async def rounds() -> list[tuple[float, float, float, float, float]]:
        ws = Workspace(root, root / ".factory" / "worktrees")
        store = await Store.open(root / ".factory" / "bench.db")
        await store.append(ev.RunStarted(run_id="bench", specs=["bench"], concurrency=1,
                                         sandbox="none"))
        out = []
        try:
            conversation: list[dict[str, object]] = []
            for r in range(args.rounds):
                steps, fixed, total = await factory_phase(store, ws, r * per_round, per_round)
                if not conversation:
                    conversation = await store.messages("a0")
                    await litellm_phase(50, conversation)  # warm-up, not timed
                bare = await litellm_phase(per_round * STEPS, conversation)
                floor = git_floor(root, r * per_round, per_round)
                out.append((steps, fixed, total, bare, floor))
        finally:
            await store.close()
            ws.close()
        return out

    results = asyncio.run(rounds())
    plain = plain_worktree(root, 30)
    n, calls = per_round * args.rounds, per_round * args.rounds * STEPS
    steps_time = sum(r[0] for r in results)
    fixed_time = sum(r[1] for r in results)
    total = sum(r[2] for r in results)
    bare = sum(r[3] for r in results)
    round_calls = per_round * STEPS
    per_call = statistics.median(r[3] / round_calls for r in results)
    per_step = statistics.median(r[0] / round_calls for r in results)
    overhead = statistics.median((r[0] - r[3]) / round_calls for r in results)
    fixed_median = statistics.median(r[1] / per_round for r in results)
    floor_median = statistics.median(r[4] / per_round for r in results)
    against_git = statistics.median(r[1] / r[4] for r in results)
    print(f"swarm: {n:,} agents x {STEPS} steps on replay/bench (zero latency), demo repository "
          f"({files} files), {args.rounds} alternating rounds, per-round medians")
    print(f"  factory total                 {total:8.2f} s")
    print(f"    in agent steps              {steps_time:8.2f} s   {per_step * 1000:6.3f} ms/step")
    print(f"    worktree + commit + cleanup {fixed_time:8.2f} s   {fixed_median * 1000:6.2f} "
          "ms/agent")
    print(f"  bare litellm, {calls:,} calls  {bare:8.2f} s   {per_call * 1000:6.3f} ms/call "
          "(baseline)")
    print(f"  factory overhead per step     {overhead * 1000:8.3f} ms = {overhead / per_call:.2f} "
          "x litellm's own per-call time   (goal <= 0.3 x)")
    print(f"  git's floor per agent         {sum(r[4] for r in results):8.2f} s   "
          f"{floor_median * 1000:6.2f} ms/agent   (worktree add -b, add -A, commit, "
          "worktree remove)")
    print(f"  factory fixed cost per agent  {against_git:8.2f} x git's floor   (goal <= 1.3 x)")
    print(f"  plain git worktree add+remove {plain * 1000:8.2f} ms (median of 30, reference)")


if __name__ == "__main__":
    main()
