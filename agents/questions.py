"""Questions an agent puts to the person supervising the run, and their answers.

An agent's `ask` call becomes a `question_asked` event and its loop awaits the answer: a
person's (`Factory.answer`, from a console's inbox) or the engine's, when nobody supervises
the run or nobody answers in time. The engine's answer tells the model to decide alone and
say what it assumed, so a headless run never stalls on a question.

Waiting is an awaited future: it costs no tokens, blocks no other agent, and a cancelled
task simply stops waiting. The question's id comes from the tool call (agent, step, call
id), so an agent resumed after a crash finds its question again, still pending or already
answered, and never asks it twice.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from agents import events as ev
from agents.errors import FactoryError

Answerer = Literal["person", "engine"]
Waiting = Callable[[], AbstractAsyncContextManager[object]]

DECIDE_ALONE = ("Nobody can answer this now. Decide on your own: pick what the spec and the "
                "code suggest, carry on, and state the assumption you made in your finish "
                "summary.")
UNSUPERVISED = "nobody is supervising this run"
LEFT = "the supervisor left"


class QuestionError(FactoryError):
    pass


class QuestionStore(Protocol):
    async def append(self, *events: ev.Event) -> int: ...

    def get(self, table: str, key: str) -> dict[str, Any] | None: ...

    def rows(self, table: str) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Answer:
    text: str
    by: Answerer
    why: str = ""

    def for_model(self) -> str:
        """The tool result: the answer and who gave it (a person's word weighs more)."""
        if self.by == "person":
            return f"Answer from the person supervising this run: {self.text}"
        return f"Answer from the engine ({self.why}): {self.text}"


@dataclass(frozen=True)
class Asking:
    """Who asks, and from which tool call (what makes the question's id stable)."""

    agent_id: str
    spec_id: str | None
    task_id: str | None
    key: str
    step: int
    call_id: str


def question_id(agent_id: str, step: int, call_id: str) -> str:
    """Short enough to type, stable across restarts of the same agent."""
    digest = hashlib.sha256(f"{agent_id}\0{step}\0{call_id}".encode()).hexdigest()
    return f"q-{digest[:10]}"


class QuestionDesk:
    """Records questions, wakes the agents waiting on them, answers for the engine.

    One per Factory, shared by its runs: a person may answer while no run is going (the
    answer is recorded, and the agent finds it when it resumes).
    """

    def __init__(self, store: QuestionStore, timeout: float, *,
                 supervised: bool = False) -> None:
        self.store = store
        self.timeout = timeout
        self._supervised = supervised
        # Question id -> the future its agent sleeps on; resolved whenever it should look
        # again (an answer was recorded, supervision changed).
        self._sleepers: dict[str, asyncio.Future[None]] = {}
        # Questions whose answer is being recorded: a second answer must not race it.
        self._answering: set[str] = set()

    # -- supervision -----------------------------------------------------------------------

    @property
    def supervised(self) -> bool:
        return self._supervised

    def supervise(self, on: bool) -> None:
        """A person starts (or stops) watching. When the last one leaves, the agents that
        wait get the engine's answer instead of waiting out the timeout."""
        self._supervised = on
        self._wake(None)

    def pending(self) -> list[dict[str, Any]]:
        """Open questions, oldest first."""
        return sorted((q for q in self.store.rows("questions") if q["status"] == "pending"),
                      key=lambda q: q["asked"] or 0)

    # -- the agent's side ------------------------------------------------------------------

    async def ask(self, who: Asking, question: str, options: list[str],
                  waiting: Waiting | None = None) -> Answer:
        """Record the question (once) and return its answer.

        `waiting` is entered only while the agent actually waits for a person: the
        orchestrator lends the agent's concurrency slot to others for that time.
        """
        qid = question_id(who.agent_id, who.step, who.call_id)
        row = self.store.get("questions", qid)
        if row is not None and row["status"] == "answered":
            return Answer(row["answer"] or "", row["answered_by"] or "engine", row["why"] or "")
        if row is None or row["status"] != "pending":
            await self.store.append(ev.QuestionAsked(
                spec_id=who.spec_id, task_id=who.task_id, agent_id=who.agent_id,
                question_id=qid, task_key=who.key, question=question, options=options,
                step=who.step, call_id=who.call_id))
        if not self._supervised or waiting is None:
            return await self._wait(qid)
        async with waiting():
            return await self._wait(qid)

    async def _wait(self, qid: str) -> Answer:
        unsupervised = LEFT if self._supervised else UNSUPERVISED
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            row = self.store.get("questions", qid)
            if row is None or row["status"] not in ("pending", "answered"):
                raise QuestionError(f"question {qid} was withdrawn while its agent waited")
            if row["status"] == "answered":
                return Answer(row["answer"] or "", row["answered_by"] or "engine",
                              row["why"] or "")
            remaining: float | None = deadline - loop.time()
            if qid in self._answering:
                remaining = None  # an answer is being recorded: wait for it, however long
            elif not self._supervised:
                return await self._settle(qid, DECIDE_ALONE, "engine", unsupervised)
            elif remaining is not None and remaining <= 0:
                return await self._settle(
                    qid, DECIDE_ALONE, "engine",
                    f"nobody answered within {self.timeout:g} s")
            sleeper: asyncio.Future[None] = loop.create_future()
            self._sleepers[qid] = sleeper
            try:
                await asyncio.wait_for(sleeper, remaining)
            except TimeoutError:
                pass
            finally:
                if self._sleepers.get(qid) is sleeper:
                    del self._sleepers[qid]

    def _wake(self, qid: str | None) -> None:
        for key, sleeper in list(self._sleepers.items()):
            if (qid is None or key == qid) and not sleeper.done():
                sleeper.set_result(None)

    # -- answering -------------------------------------------------------------------------

    async def answer(self, qid: str, text: str) -> Answer:
        """A person's answer; errors say why it cannot be taken."""
        if not text.strip():
            raise QuestionError("an answer needs some text")
        return await self._settle(qid, text.strip(), "person", "")

    async def _settle(self, qid: str, text: str, by: Answerer, why: str) -> Answer:
        row = self.store.get("questions", qid)
        if row is None:
            raise QuestionError(f"no question {qid}")
        if row["status"] == "answered" or qid in self._answering:
            who = row["answered_by"] or "someone"
            raise QuestionError(f"question {qid} is already answered (by {who})")
        if row["status"] != "pending":
            raise QuestionError(f"question {qid} is closed: the agent that asked it stopped")
        # Claimed before the first await: a timeout and a person cannot both answer.
        self._answering.add(qid)
        try:
            await self.store.append(ev.QuestionAnswered(
                spec_id=row["spec_id"], task_id=row["task_id"], agent_id=row["agent_id"],
                question_id=qid, answer=text, by=by, why=why))
        finally:
            self._answering.discard(qid)
            self._wake(qid)
        return Answer(text, by, why)
