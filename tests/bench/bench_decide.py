"""decide's time per committed batch, on states of 200, 2,000 and 20,000 tasks.

The state is built by the real projection handlers from real events, in the shape a long
run has once decide's own quick intents have been recorded: specs of ten tasks each, seven
in ten of them landed or rejected (a task depending on a rejected one is blocked), one in
twenty committed and in the queue (some waiting for a person's approval), one in a hundred
asking a person, as many agents at work as the concurrency allows (64, each holding its
lease), and the rest pending behind them. decide is called on it as the engine calls it
after every committed batch, and the median of many calls is printed with the time per
task, so that growth with the state's size shows (goal: under 5 ms at 20,000 tasks,
growing at most linearly).
Usage: python tests/bench/bench_decide.py [--calls N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agents import events as ev
from agents.decide import Settings, decide
from agents.store import projections

HOLDER = "bench:1:1"
PER_SPEC = 10
CONCURRENCY = 64


def state(tasks: int) -> tuple[projections.State, Settings, float]:
    s = projections.State()
    specs = [f"spec-{n}" for n in range(tasks // PER_SPEC)]
    ts = 1_000.0
    at_work = 0

    def apply(event: ev.Event) -> None:
        nonlocal ts
        ts += 0.001
        projections.apply(s, event, ts)

    apply(ev.RunStarted(run_id="r", specs=specs, concurrency=CONCURRENCY, sandbox="bwrap"))
    for n, spec in enumerate(specs):
        apply(ev.SpecRegistered(spec_id=spec, title=spec, path=f"specs/{spec}.md",
                                digest=spec))
        planned = [ev.PlannedTask(id=f"t{i}", title=f"task {i}", paths=["src/"],
                                  acceptance=["true"],
                                  depends_on=[f"t{i - 1}"] if i % 3 == 2 else [])
                   for i in range(PER_SPEC)]
        apply(ev.PlanAccepted(spec_id=spec, tasks=planned, digest=spec, spec_digest=spec))
        rejected: set[str] = set()
        for i in range(PER_SPEC):
            ids = {"spec_id": spec, "task_id": f"t{i}"}
            branch = f"factory/{spec}/t{i}"
            roll = (n * 37 + i * 11) % 100
            if i % 3 == 2 and f"t{i - 1}" in rejected:
                apply(ev.TaskBlocked(**ids, reason=f"depends on t{i - 1}, which is rejected"))
                continue
            if roll >= 70 + 5 + 1 and not (roll >= 95 and at_work < CONCURRENCY):
                continue  # pending, behind the agents at work
            agent = f"{spec}.t{i}.1"
            apply(ev.TaskStarted(**ids, agent_id=agent, attempt=1, branch=branch,
                                 worktree=f".factory/worktrees/{spec}--t{i}",
                                 base_commit="0" * 40))
            apply(ev.AgentStarted(**ids, agent_id=agent, role="implementer", model="m"))
            if roll >= 95:
                at_work += 1
                apply(ev.LeaseTaken(work=f"work:{spec}/t{i}", holder=HOLDER))
                continue
            if roll == 75:
                apply(ev.QuestionAsked(**ids, agent_id=agent, question_id=f"q-{spec}-{i}",
                                       task_key=f"{spec}/t{i}", question="which?"))
                continue
            commit = f"{n:020d}{i:020d}"
            apply(ev.AgentFinished(**ids, agent_id=agent, status="finished"))
            apply(ev.BranchCommitted(**ids, agent_id=agent, branch=branch, commit=commit,
                                     base_commit="0" * 40, files=["src/x.py"]))
            apply(ev.QueueEntered(**ids, branch=branch, commit=commit, risk="low",
                                  needs_approval=roll % 2 == 0))
            if roll >= 70:
                continue  # in the queue
            if roll % 10 == 3:
                rejected.add(f"t{i}")
                apply(ev.BranchRejected(**ids, branch=branch, gate="tests", reason="red"))
            else:
                apply(ev.BranchLanded(**ids, branch=branch, commit=commit,
                                      main_before="0" * 40, main_after="1" * 40))
    apply(ev.LeaseTaken(work="land", holder=HOLDER))  # a landing under way
    s.take_dirty()
    return s, Settings(run_id="r", specs=tuple(specs), holder=HOLDER, concurrency=CONCURRENCY,
                       supervised=True), ts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    print(f"decide per call, median of {args.calls} calls (the state as projections hold it)")
    print(f"{'tasks':>8}{'ms per call':>14}{'µs per task':>14}{'intents':>10}")
    results = []
    for size in (200, 2_000, 20_000):
        s, settings, now = state(size)
        times = []
        for _ in range(args.calls):
            started = time.perf_counter()
            decision = decide(s, now, settings)
            times.append(time.perf_counter() - started)
        ms = statistics.median(times) * 1000
        results.append((size, ms))
        print(f"{size:>8,}{ms:>14.3f}{ms * 1000 / size:>14.3f}{len(decision.intents):>10}")
    (small, small_ms), (_, _), (big, big_ms) = results
    growth = (big_ms / small_ms) / (big / small)
    verdict = "met" if big_ms < 5 and growth <= 1.2 else "MISSED"
    print(f"goal: under 5 ms at 20,000 tasks, growing at most linearly: {big_ms:.2f} ms, "
          f"growth {growth:.2f} x linear ({verdict})")


if __name__ == "__main__":
    main()
