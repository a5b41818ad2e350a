"""decide as a property: over random histories, on a real store.

Each history is driven by decide itself, as the engine drives it: a random intent of the
decision is carried out by appending the events an executor would append, with a random
outcome (an agent finishes, fails, asks a person, or is still at work; a landing lands, is
rejected, or is cut short), between random commands of a person (approve, reject, cancel,
answer, retry) and crashes (the engine process changes: every lease now names a process
that is gone). After every step:

- decide over the store's live projections equals decide over projections replayed from its
  log, and the live projections equal the replay;
- no intent ever works, lands or enqueues a landed task, and no task lands twice;
- after a crash, the work the old process held is decided again (planned, worked or landed
  again) as soon as a slot lets it, and nothing landed is redone.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents import decide as d
from agents import events as ev
from agents.queue import chain
from agents.store import Store, projections

SPECS = ("alpha", "beta", "gamma")


class World:
    """A run over a real store, carried forward one random step at a time."""

    def __init__(self, store: Store, rnd: random.Random) -> None:
        self.store = store
        self.rnd = rnd
        self.holder = "host:1:1"
        self.crashes = 0
        self.now = 1_000.0
        self.landed: list[str] = []
        self.concurrency = rnd.choice([1, 2, 3])
        self.mode = rnd.choice(chain.MODES)
        self.runners = rnd.choice([1, 2, 4])
        self.main_moves = 0
        self.resubmits = rnd.choice([0, 1, 2])

    def settings(self) -> d.Settings:
        return d.Settings(run_id="r", specs=SPECS, holder=self.holder,
                          concurrency=self.concurrency, question_timeout=30.0,
                          supervised=self.rnd.random() < 0.8,
                          queue=chain.QueueSettings(mode=self.mode, runners=self.runners),
                          resubmits=self.resubmits)

    async def emit(self, *events: ev.Event) -> None:
        await self.store.append(*events)

    async def start(self) -> None:
        await self.emit(ev.RunStarted(run_id="r", specs=list(SPECS), concurrency=2,
                                      sandbox="none"))
        await self.emit(ev.MainMoved(main_before="", main_after=self.sha("main"),
                                     by="engine"))
        for n, spec in enumerate(SPECS):
            await self.emit(ev.SpecRegistered(
                spec_id=spec, title=spec, path=f"specs/{spec}.md", digest=f"d-{spec}",
                depends_on=["alpha"] if spec == "gamma" and n else []))

    def sha(self, *what: object) -> str:
        return f"{abs(hash((what, self.now, self.rnd.random()))) % 10**12:040d}"

    def decide(self, settings: d.Settings) -> d.Decision:
        return d.decide(self.store.state, self.now, settings)

    async def replayed(self) -> projections.State:
        events = await self.store.read_events(limit=1_000_000)
        return projections.replay((e.ts, e.event) for e in events)

    # -- executors, as events -------------------------------------------------------------

    async def carry_out(self, intent: d.Intent) -> None:
        rnd = self.rnd
        match intent:
            case d.Plan(spec_id=spec):
                await self.emit(ev.LeaseTaken(work=intent.work, holder=self.holder))
                if rnd.random() < 0.15:
                    return  # still planning (a crash may cut it short)
                if rnd.random() < 0.1:
                    await self.emit(ev.PlanRejected(spec_id=spec, reason="no plan"))
                else:
                    count = rnd.randint(1, 4)
                    tasks = [ev.PlannedTask(
                        id=f"t{i}", title=f"{spec} {i}", paths=["src/"], acceptance=["true"],
                        depends_on=[f"t{i - 1}"] if i and rnd.random() < 0.4 else [])
                        for i in range(count)]
                    row = self.store.get("specs", spec) or {}
                    await self.emit(ev.PlanAccepted(spec_id=spec, tasks=tasks, digest="p",
                                                    spec_digest=row.get("digest") or ""))
                await self.emit(ev.LeaseReleased(work=intent.work, holder=self.holder))
            case d.Work(key=key, spec_id=spec, task_id=task_id):
                await self.work(intent.work, key, spec, task_id)
            case chain.LinkEntry(key=key, commit=commit, onto=onto):
                await self.emit(ev.LeaseTaken(work=intent.work, holder=self.holder))
                task = self.store.get("tasks", key)
                assert task is not None and task["status"] != "landed", (key, task)
                ids = {"spec_id": task["spec_id"], "task_id": task["task_id"]}
                if task["status"] != "landing":
                    await self.emit(ev.LandingStarted(**ids, branch=task["branch"],
                                                      commit=task["commit_sha"]))
                if rnd.random() < 0.15:
                    return  # cut short
                ok = rnd.random() < 0.9
                gate = "" if ok else rnd.choice(["conflicts", "dependencies"])
                await self.emit(ev.QueueLinked(**ids, commit=commit, base=onto,
                                               merge_commit=self.sha(key, onto) if ok else "",
                                               ok=ok, gate=gate, reason=gate),
                                ev.LeaseReleased(work=intent.work, holder=self.holder))
            case chain.TestPoint() | chain.TestAlone():
                await self.emit(ev.LeaseTaken(work=intent.work, holder=self.holder))
                run_id = f"run-{self.sha('run')[-8:]}"
                if isinstance(intent, chain.TestPoint):
                    commit, keys, alone = intent.commit, list(intent.keys), ""
                    extra = {"position": intent.position, "size": intent.size}
                else:
                    commit, keys, alone = self.sha(intent.key), [intent.key], intent.key
                    extra = {"position": 1, "size": 1}
                await self.emit(ev.QueueTestStarted(run_id=run_id, commit=commit, keys=keys,
                                                    attempt=intent.attempt, alone=alone,
                                                    **extra))
                if rnd.random() < 0.15:
                    return  # still running (a crash may cut it short)
                passed = rnd.random() < 0.7
                failing = [] if passed else [f"tests/test_{rnd.choice('abc')}.py::t"]
                await self.emit(ev.QueueTestFinished(run_id=run_id, commit=commit,
                                                     passed=passed, failing=failing,
                                                     reason="" if passed else "red"),
                                ev.LeaseReleased(work=intent.work, holder=self.holder))
            case chain.LandChain(commit=commit, main_before=before, keys=keys):
                await self.emit(ev.LeaseTaken(work=intent.work, holder=self.holder))
                if rnd.random() < 0.15:
                    return  # cut short before main moved
                events: list[ev.Event] = []
                for key in keys:
                    task = self.store.get("tasks", key)
                    assert task is not None
                    assert key not in self.landed, f"{key} lands twice"
                    self.landed.append(key)
                    events.append(ev.BranchLanded(spec_id=task["spec_id"],
                                                  task_id=task["task_id"],
                                                  branch=task["branch"],
                                                  commit=task["commit_sha"],
                                                  main_before=before, main_after=commit))
                await self.emit(*events, ev.MainMoved(main_before=before, main_after=commit,
                                                      keys=list(keys), window=intent.window),
                                ev.LeaseReleased(work=intent.work, holder=self.holder))
            case chain.Evict(key=key, gate=gate, reason=reason):
                task = self.store.get("tasks", key) or {}
                await self.emit(ev.BranchRejected(spec_id=task.get("spec_id"),
                                                  task_id=task.get("task_id"),
                                                  branch=task.get("branch") or "b",
                                                  gate=gate, reason=reason or "red"))
            case chain.Suspect():
                await self.emit(ev.QueueSuspected(keys=list(intent.keys),
                                                  run_ids=list(intent.run_ids),
                                                  failing=list(intent.failing),
                                                  single=intent.single))
            case chain.Requeue():
                await self.emit(ev.QueueRequeued(keys=list(intent.keys), cap=intent.cap,
                                                 run_ids=list(intent.run_ids),
                                                 failing=list(intent.failing),
                                                 window=intent.window, flaky=intent.flaky))
            case chain.FlakeSeen():
                await self.emit(ev.FlakeRecorded(run_id=intent.run_id,
                                                 tests=list(intent.failing)))
            case chain.Pause():
                await self.emit(ev.QueuePaused(main=intent.main, reason=intent.reason,
                                               run_ids=list(intent.run_ids), retry_in=30.0))
            case chain.Quarantine():
                await self.emit(ev.TestsQuarantined(main=intent.main, tests=list(intent.tests),
                                                    reason=intent.reason,
                                                    run_ids=list(intent.run_ids)))
            case chain.Release():
                await self.emit(ev.TestsReleased(tests=list(intent.tests),
                                                 run_id=intent.run_id))
            case d.Enqueue(spec_id=spec, task_id=task_id, key=key):
                task = self.store.get("tasks", key)
                assert task is not None
                await self.emit(ev.QueueEntered(spec_id=spec, task_id=task_id,
                                                branch=task["branch"],
                                                commit=task["commit_sha"], risk="low",
                                                needs_approval=rnd.random() < 0.5))
            case d.Return(spec_id=spec, task_id=task_id, key=key, gate=gate, reason=reason):
                task = self.store.get("tasks", key) or {}
                assert intent.round == (task.get("returns") or 0) + 1 <= self.resubmits, \
                    (intent, task)
                await self.emit(ev.BranchReturned(
                    spec_id=spec, task_id=task_id, agent_id=task.get("agent_id"),
                    branch=task.get("branch") or "b", commit=task.get("commit_sha") or "",
                    gate=gate, reason=reason, round=intent.round))
            case d.Refuse(spec_id=spec, task_id=task_id, key=key, reason=reason):
                task = self.store.get("tasks", key) or {}
                await self.emit(ev.BranchRejected(spec_id=spec, task_id=task_id,
                                                  branch=task.get("branch") or "b",
                                                  gate="approval", reason=reason))
            case d.Block(spec_id=spec, task_id=task_id, reason=reason):
                await self.emit(ev.TaskBlocked(spec_id=spec, task_id=task_id, reason=reason))
            case d.BlockSpec(spec_id=spec, reason=reason):
                await self.emit(ev.SpecFinished(spec_id=spec, status="blocked",
                                                detail=reason))
            case d.FinishSpec(spec_id=spec, status=status, detail=detail):
                await self.emit(ev.SpecFinished(spec_id=spec, status=status,  # type: ignore[arg-type]
                                                detail=detail))
            case d.EngineAnswer(question_id=qid, why=why):
                q = self.store.get("questions", qid) or {}
                await self.emit(ev.QuestionAnswered(
                    spec_id=q.get("spec_id"), task_id=q.get("task_id"),
                    agent_id=q.get("agent_id"), question_id=qid, answer="decide", by="engine",
                    why=why))
            case d.Stop(key=key, work=work):
                task = self.store.get("tasks", key) or {}
                ids = {"spec_id": task.get("spec_id"), "task_id": task.get("task_id")}
                await self.emit(ev.AgentFinished(**ids, agent_id=task.get("agent_id"),
                                                 status="cancelled"),
                                ev.TaskCancelled(**ids, reason="cancelled by request"),
                                ev.LeaseReleased(work=work, holder=self.holder))
            case d.Cancel(spec_id=spec, task_id=task_id, reason=reason):
                await self.emit(ev.TaskCancelled(spec_id=spec, task_id=task_id,
                                                 reason=reason))

    async def work(self, lease: str, key: str, spec: str, task_id: str) -> None:
        rnd = self.rnd
        task = self.store.get("tasks", key)
        assert task is not None and task["status"] in ("pending", "running"), (key, task)
        ids = {"spec_id": spec, "task_id": task_id}
        await self.emit(ev.LeaseTaken(work=lease, holder=self.holder))
        agent = task["agent_id"]
        if task["revising"] and agent is not None:
            await self.emit(ev.RevisionStarted(**ids, agent_id=agent, round=task["returns"],
                                               worktree=f"w/{spec}--{task_id}",
                                               base_commit="0" * 40,
                                               since=task["commit_sha"] or ""))
        elif task["status"] == "pending" or agent is None:
            attempt = (task["attempt"] or 0) + 1
            agent = f"{spec}.{task_id}.{attempt}"
            await self.emit(ev.TaskStarted(**ids, agent_id=agent, attempt=attempt,
                                           branch=f"factory/{spec}/{task_id}",
                                           worktree=f"w/{spec}--{task_id}",
                                           base_commit="0" * 40))
        await self.emit(ev.AgentStarted(**ids, agent_id=agent, role="implementer", model="m"))
        roll = rnd.random()
        if roll < 0.15:
            return  # still at work (a crash may cut it short)
        if roll < 0.3:
            step = rnd.randint(1, 99)
            await self.emit(ev.QuestionAsked(**ids, agent_id=agent,
                                             question_id=f"q-{agent}-{step}", task_key=key,
                                             question="which?", step=step, call_id="c"))
        elif roll < 0.45:
            await self.emit(ev.AgentFinished(**ids, agent_id=agent, status="failed"),
                            ev.TaskFailed(**ids, reason="agent failed",
                                          will_retry=rnd.random() < 0.5))
        else:
            commit = f"{abs(hash((key, self.now))) % 10**12:040d}"
            await self.emit(ev.AgentFinished(**ids, agent_id=agent, status="finished"),
                            ev.BranchCommitted(**ids, agent_id=agent,
                                               branch=f"factory/{spec}/{task_id}",
                                               commit=commit, base_commit="0" * 40,
                                               files=["src/x.py"]))
        await self.emit(ev.LeaseReleased(work=lease, holder=self.holder))

    # -- a person, and crashes ------------------------------------------------------------

    async def person(self) -> None:
        rnd = self.rnd
        queue = [q for q in self.store.rows("queue") if q["approval"] == "pending"]
        tasks = [t for t in self.store.rows("tasks")
                 if t["status"] not in ("landed", "rejected", "failed", "blocked",
                                        "cancelled", "landing")]
        pending = [q for q in self.store.rows("questions") if q["status"] == "pending"]
        rejected = [t for t in self.store.rows("tasks")
                    if t["status"] == "rejected" and t["commit_sha"]]
        choice = rnd.randrange(5)
        if choice == 0 and queue:
            q = rnd.choice(queue)
            await self.emit(ev.ApprovalDecided(spec_id=q["spec_id"], task_id=q["task_id"],
                                               approved=rnd.random() < 0.7, reason="no"))
        elif choice == 1 and tasks and rnd.random() < 0.3:
            t = rnd.choice(tasks)
            await self.emit(ev.CancelRequested(spec_id=t["spec_id"], task_id=t["task_id"]))
        elif choice == 2 and pending:
            q = rnd.choice(pending)
            await self.emit(ev.QuestionAnswered(
                spec_id=q["spec_id"], task_id=q["task_id"], agent_id=q["agent_id"],
                question_id=q["id"], answer="yes", by="person"))
        elif choice == 3 and rejected and rnd.random() < 0.3:
            t = rnd.choice(rejected)
            await self.emit(ev.QueueRetried(spec_id=t["spec_id"], task_id=t["task_id"],
                                            branch=t["branch"]))

    def crash(self) -> None:
        self.crashes += 1
        self.holder = f"host:{self.crashes + 1}:{self.crashes + 1}"


async def check(world: World) -> d.Decision:
    """The properties that must hold after every step; the decision to act on."""
    settings_ = world.settings()
    live = world.decide(settings_)
    replayed = await world.replayed()
    assert d.decide(replayed, world.now, settings_) == live
    assert replayed.comparable() == world.store.state.comparable()
    tasks = world.store.state.tables["tasks"]
    for intent in live.intents:
        if isinstance(intent, d.Work | d.Enqueue | chain.LinkEntry):
            assert tasks[intent.key]["status"] != "landed", intent
        if isinstance(intent, chain.LandChain):
            assert all(tasks[k]["status"] != "landed" for k in intent.keys), intent
    return live


async def history(tmp: Path, seed: int, steps: int) -> World:
    store = await Store.open(tmp / "factory.db")
    world = World(store, random.Random(seed))
    try:
        await world.start()
        for _ in range(steps):
            world.now += world.rnd.choice([0.5, 1.0, 40.0])
            decision = await check(world)
            roll = world.rnd.random()
            if roll < 0.08:
                before = dict(world.store.state.tables["leases"])
                world.crash()
                after = await check(world)
                stale = {w for w, lease in before.items() if lease["holder"]}
                redone = {i.work for i in after.intents
                          if isinstance(i, d.Plan | d.Work | chain.LandChain)}
                slots = world.concurrency
                for work in stale:
                    if work.startswith("work:"):
                        task = world.store.state.tables["tasks"].get(work[5:]) or {}
                        agent = world.store.state.tables["agents"].get(
                            task.get("agent_id") or "") or {}
                        starts = sum(isinstance(i, d.Plan | d.Work) for i in after.intents)
                        if task.get("status") in ("pending", "running") and \
                                not task.get("cancel") and agent.get("status") != "waiting" \
                                and not _blocked(world, task):
                            # Redone now, unless every slot went to work that comes first.
                            assert work in redone or starts >= slots, (work, after.intents)
                    elif work == "queue:land":
                        # The point that passed is still there: main is moved to it again,
                        # unless an entry ahead of it was cleared meanwhile (approved): the
                        # chain is then rebuilt from that entry, in queue order.
                        state = world.store.state.tables
                        linked = [state["queue"][k]["position"] for k in state["links"]
                                  if k in state["queue"]]
                        ahead = [i for i in after.intents if isinstance(i, chain.LinkEntry)
                                 and linked and i.key not in state["links"]
                                 and state["queue"][i.key]["position"] < min(linked)]
                        assert ahead or any(isinstance(i, chain.LandChain)
                                            for i in after.intents), after.intents
            elif roll < 0.25:
                await world.person()
            elif decision.intents:
                intent = world.rnd.choice(decision.intents)
                if isinstance(intent, d.Finish):
                    break
                await world.carry_out(intent)
        await check(world)
    finally:
        await store.close()
    return world


def _blocked(world: World, task: dict[str, object]) -> bool:
    """Whether a dependency of the task ended without landing (decide blocks it instead)."""
    tasks = world.store.state.tables["tasks"]
    for dep in task.get("depends_on") or []:  # type: ignore[attr-defined]
        row = tasks.get(f"{task['spec_id']}/{dep}")
        if row is None or row["status"] != "landed":
            return True
    return False


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_decide_over_random_histories(tmp_path_factory, seed: int) -> None:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("decide")
    world = asyncio.run(history(tmp, seed, steps=120))
    assert len(world.landed) == len(set(world.landed))


def test_a_long_history_ends(tmp_path: Path) -> None:
    """Carried through to its end (a person only approves what waits for approval; crashes
    only when an executor's work was lost), a run finishes: every spec ends."""
    async def run() -> None:
        store = await Store.open(tmp_path / "factory.db")
        world = World(store, random.Random(7))
        try:
            await world.start()
            for _ in range(2_000):
                decision = await check(world)
                if any(isinstance(i, d.Finish) for i in decision.intents):
                    break
                world.now += 40.0  # questions time out: the engine answers
                if not decision.intents:
                    waiting = [q for q in world.store.rows("queue")
                               if q["approval"] == "pending"]
                    if waiting:  # entries wait for a person: one approves
                        await world.emit(ev.ApprovalDecided(
                            spec_id=waiting[0]["spec_id"], task_id=waiting[0]["task_id"],
                            approved=True))
                    else:
                        world.crash()  # only a lost executor leaves nothing else to do
                    continue
                await world.carry_out(world.rnd.choice(decision.intents))
            else:
                raise AssertionError("the run never finished")
            specs = world.store.state.tables["specs"]
            assert all(specs[s]["status"] in ("done", "failed", "blocked") for s in SPECS)
        finally:
            await store.close()

    asyncio.run(run())


def test_a_refusal_goes_back_to_the_agent_while_it_may() -> None:
    """An eviction or a person's rejection becomes a return to the agent, round by round,
    until `resubmits` is spent or the budget stops; a task no agent made is rejected."""
    task = {"key": "s/t", "spec_id": "s", "task_id": "t", "agent_id": "s.t.1", "returns": 0}
    tables = {"agents": {"s.t.1": {"id": "s.t.1"}}}
    settings_ = d.Settings(run_id="r", specs=("s",), holder="h", resubmits=2)
    back = d._returned(task, tables, settings_, None, "tests", "red", "out")
    assert back == d.Return("s/t", "s", "t", "tests", "red", "out", 1)
    assert d._returned({**task, "returns": 1}, tables, settings_, None, "tests", "red") \
        == d.Return("s/t", "s", "t", "tests", "red", "", 2)
    assert d._returned({**task, "returns": 2}, tables, settings_, None, "tests", "red") is None
    assert d._returned(task, tables, settings_, "usd", "tests", "red") is None
    assert d._returned(task, {"agents": {}}, settings_, None, "tests", "red") is None
    no_returns = d.Settings(run_id="r", specs=("s",), holder="h", resubmits=0)
    assert d._returned(task, tables, no_returns, None, "approval", "no") is None
