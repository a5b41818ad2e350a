"""Where an agent step's overhead goes: the swarm bench's agent steps with one part at a time
taken out, each against bare litellm calls measured right after it.

bench_swarm.py says how much the factory adds to each model call; this says which part adds
it. Agents of the swarm bench's ten steps (list, read, six writes, an edit, finish) run on the
zero-latency replay model in these variants, one agent of each in turn, so that this noisy
machine's drift hits every variant alike:

- `factory`: as in a run (the store records every step, the tools work through the worktree's
  handle);
- `no SQL`: the store prepares every batch (serialised, hashed, projections applied) and
  moves its chain head in one statement, but writes neither the events nor the rows;
- `no store`: nothing recorded (every append is acknowledged at once);
- `plain tools`: the tools' file work done with plain `pathlib` calls (no handle, no checks,
  no atomic replace): what the file system itself costs, the tools' floor;
- `no tools`: every tool call answered at once, without touching a file.

The variants replace engine internals, so they measure, they do not run: the figures are CPU
time (the process is CPU-bound: its CPU time equals its wall time) as medians over agents of
(agent's steps − the same number of bare calls) / the bare calls.
Usage: python tests/bench/bench_step_parts.py [--agents N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_swarm  # the same agents, budgets and bare calls

from agents import demo, replay, runtime
from agents import events as ev
from agents.models import ModelRouter, litellm_module
from agents.runtime import AgentLimits, AgentRunner
from agents.sandbox.base import SandboxContext
from agents.sandbox.none import NoneBackend
from agents.store import Store
from agents.store.store import _MOVE_HEAD
from agents.tools import ToolContext, ToolOutcome
from agents.workspace import Workspace

STEPS = bench_swarm.STEPS


async def _answered(ctx: ToolContext, name: str, arguments: str) -> ToolOutcome:
    return ToolOutcome("ok", changed=True, finished=name == "finish", summary="done")


async def _plain(ctx: ToolContext, name: str, arguments: str) -> ToolOutcome:
    """The bench agents' file work, as a script without the factory would do it."""
    args: dict[str, Any] = json.loads(arguments)
    root = ctx.worktree
    if name == "list_files":
        found: list[str] = []
        for _, folders, files in os.walk(root / args["path"]):
            folders[:] = sorted(f for f in folders if f not in (".git", "__pycache__"))
            found += sorted(files)
        return ToolOutcome("\n".join(found))
    if name == "read_file":
        return ToolOutcome((root / args["path"]).read_text())
    if name == "write_file":
        (root / args["path"]).write_text(args["content"])
        return ToolOutcome("wrote", changed=True)
    if name == "edit_file":
        path = root / args["path"]
        path.write_text(path.read_text().replace(args["search"], args["replace"], 1))
        return ToolOutcome("edited", changed=True)
    return ToolOutcome("done", finished=True, summary="done")


def _acknowledged(self: Store, events: Any) -> asyncio.Future[int]:
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    done.set_result(0)
    return done


_write_batch = Store._write_batch


def _head_only(self: Store, conn: Any, rows: Any, dirty: Any, last_id: int, last_hash: bytes,
               inline: bool = False) -> None:
    if not inline:  # a batch on the database thread (rare here) is written whole
        _write_batch(self, conn, rows, dirty, last_id, last_hash, inline)
        return
    conn.execute(_MOVE_HEAD, (last_id, last_hash, rows.first_id - 1))


@contextmanager
def variant(name: str) -> Iterator[None]:
    saved = runtime.call_tool, Store.append_many, Store._write_batch
    tool = {"plain tools": _plain, "no tools": _answered}.get(name)
    if tool is not None:
        runtime.call_tool = tool  # type: ignore[assignment]
    if name == "no store":
        Store.append_many = _acknowledged  # type: ignore[method-assign]
    if name == "no SQL":
        Store._write_batch = _head_only  # type: ignore[method-assign]
    try:
        yield
    finally:
        runtime.call_tool, Store.append_many, Store._write_batch = saved  # type: ignore[method-assign]


VARIANTS = ["factory", "no SQL", "no store", "plain tools", "no tools"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=150, help="agents per variant")
    args = parser.parse_args()
    root = demo.build(Path(tempfile.mkdtemp(prefix="factory-bench-parts-")) / "demo", "none")
    total = args.agents * len(VARIANTS) + 10
    replay.register(replay.Trajectory("bench", root / "bench.json", "gpt-4o-mini", 0.0,
                                      {f"bench/t{i}": bench_swarm.turns()
                                       for i in range(total)}))
    litellm_module()
    clock: Callable[[], float] = time.process_time

    async def measure() -> dict[str, list[float]]:
        ws = Workspace(root, root / ".factory" / "worktrees")
        store = await Store.open(root / ".factory" / "bench.db")
        await store.append(ev.RunStarted(run_id="bench", specs=["bench"], concurrency=1,
                                         sandbox="none"))
        router = ModelRouter(roles={"implementer": "replay/bench"})
        sandbox = await NoneBackend().open(SandboxContext(worktree=root, agent_id="bench"))
        out: dict[str, list[float]] = {v: [] for v in VARIANTS}
        number = 0

        async def agent(name: str) -> float:
            nonlocal number
            number += 1
            wt = await ws.create("bench", f"t{number}")
            runner = AgentRunner(
                store=store, router=router, agent_id=f"a{number}", spec_id="bench",
                task_id=f"t{number}", role="implementer", key=f"bench/t{number}",
                tools=ToolContext(worktree=wt.path, sandbox=sandbox),
                opening=[{"role": "system", "content": "bench"}], limits=AgentLimits(),
                budget=bench_swarm.budget_check(store, f"a{number}"))
            with variant(name):
                started = clock()
                result = await runner.run()
                spent = clock() - started
            assert result.status == "finished", result
            ws.remove(wt.path)
            return spent

        try:
            await agent("factory")  # warm-up, not counted
            conversation = await store.messages("a1")
            await bench_swarm.litellm_phase(50, conversation)
            for _ in range(args.agents):
                for name in VARIANTS:
                    spent = await agent(name)
                    started = clock()
                    await bench_swarm.litellm_phase(STEPS, conversation)
                    bare = clock() - started
                    out[name].append((spent - bare) / bare)
        finally:
            await store.close()
            ws.close()
        return out

    results = asyncio.run(measure())
    medians = {name: statistics.median(r) for name, r in results.items()}
    print(f"step parts: {args.agents} agents x {STEPS} steps per variant, interleaved; "
          "overhead per step as a share of litellm's own per-call time (CPU, medians)")
    for name in VARIANTS:
        print(f"  {name:12s} {medians[name]:6.3f} x")
    shares = [
        ("the store's share (factory - no store)", medians["factory"] - medians["no store"]),
        ("  of it, its SQL (factory - no SQL)", medians["factory"] - medians["no SQL"]),
        ("the tools' share (factory - no tools)", medians["factory"] - medians["no tools"]),
        ("  of it, the file system's (plain tools - no tools)",
         medians["plain tools"] - medians["no tools"]),
    ]
    for label, share in shares:
        print(f"  {label:52s} {share:6.3f} x")

if __name__ == "__main__":
    main()
