"""Questions an agent puts to the person supervising the run, and their answers.

An agent's `ask` call becomes a `question_asked` event. Unsupervised (a headless run, CI),
the engine answers at once: decide alone and say what you assumed, so a headless run never
stalls. Supervised, the agent stops there (`MustWait`): its question is state, its agent row
says `waiting`, and it holds no slot and no process. The reconciler (agents/decide.py)
resumes it once the question is answered: by a person (`Factory.answer`, from a console's
inbox), or by the engine when the supervisor leaves or the wait times out.

The question's id comes from the tool call (agent, step, call id), so an agent resumed
after a crash, or after its answer came, finds its question again, still pending or already
answered, and never asks it twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from agents import events as ev
from agents.errors import FactoryError

Answerer = Literal["person", "engine"]

DECIDE_ALONE = ("Nobody can answer this now. Decide on your own: pick what the spec and the "
                "code suggest, carry on, and state the assumption you made in your finish "
                "summary.")
UNSUPERVISED = "nobody is supervising this run"


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


class MustWait(Exception):
    """The question waits for a person: the agent stops here and resumes with the answer."""

    def __init__(self, question_id: str) -> None:
        super().__init__(question_id)
        self.question_id = question_id


class QuestionDesk:
    """Records questions and answers; answers for the engine when nobody supervises.

    One per Factory, shared by its runs: a person may answer while no run is going (the
    answer is recorded, and the agent finds it when it resumes).
    """

    def __init__(self, store: QuestionStore, timeout: float, *,
                 supervised: bool = False) -> None:
        self.store = store
        self.timeout = timeout
        self._supervised = supervised
        # Whether anyone supervised since this desk was made (so "left", not "nobody").
        self.ever_supervised = supervised
        # Questions whose answer is being recorded: a second answer must not race it.
        self._answering: set[str] = set()
        # Called when supervision changes (the reconciler decides again).
        self.on_change: Callable[[], None] | None = None

    # -- supervision -----------------------------------------------------------------------

    @property
    def supervised(self) -> bool:
        return self._supervised

    def supervise(self, on: bool) -> None:
        """A person starts (or stops) watching. When the last one leaves, the questions
        that wait get the engine's answer (the reconciler sees nobody supervises)."""
        self._supervised = on
        self.ever_supervised = self.ever_supervised or on
        if self.on_change is not None:
            self.on_change()

    def pending(self) -> list[dict[str, Any]]:
        """Open questions, oldest first."""
        return sorted((q for q in self.store.rows("questions") if q["status"] == "pending"),
                      key=lambda q: q["asked"] or 0)

    # -- the agent's side ------------------------------------------------------------------

    async def ask(self, who: Asking, question: str, options: list[str]) -> Answer:
        """Record the question (once) and return its answer, or raise MustWait."""
        qid = question_id(who.agent_id, who.step, who.call_id)
        row = self.store.get("questions", qid)
        if row is not None and row["status"] == "answered":
            return Answer(row["answer"] or "", row["answered_by"] or "engine", row["why"] or "")
        if row is None or row["status"] != "pending":
            await self.store.append(ev.QuestionAsked(
                spec_id=who.spec_id, task_id=who.task_id, agent_id=who.agent_id,
                question_id=qid, task_key=who.key, question=question, options=options,
                step=who.step, call_id=who.call_id))
        if not self._supervised:
            return await self._settle(qid, DECIDE_ALONE, "engine", UNSUPERVISED)
        raise MustWait(qid)

    # -- answering -------------------------------------------------------------------------

    async def answer(self, qid: str, text: str) -> Answer:
        """A person's answer; errors say why it cannot be taken."""
        if not text.strip():
            raise QuestionError("an answer needs some text")
        return await self._settle(qid, text.strip(), "person", "")

    async def answer_for_engine(self, qid: str, why: str) -> Answer | None:
        """Nobody will answer (the reconciler says why); None if it was answered meanwhile."""
        try:
            return await self._settle(qid, DECIDE_ALONE, "engine", why)
        except QuestionError:
            return None

    async def _settle(self, qid: str, text: str, by: Answerer, why: str) -> Answer:
        row = self.store.get("questions", qid)
        if row is None:
            raise QuestionError(f"no question {qid}")
        if row["status"] == "answered" or qid in self._answering:
            who = row["answered_by"] or "someone"
            raise QuestionError(f"question {qid} is already answered (by {who})")
        if row["status"] != "pending":
            raise QuestionError(f"question {qid} is closed: the agent that asked it stopped")
        # Claimed before the first await: the engine and a person cannot both answer.
        self._answering.add(qid)
        try:
            await self.store.append(ev.QuestionAnswered(
                spec_id=row["spec_id"], task_id=row["task_id"], agent_id=row["agent_id"],
                question_id=qid, answer=text, by=by, why=why))
        finally:
            self._answering.discard(qid)
        return Answer(text, by, why)
