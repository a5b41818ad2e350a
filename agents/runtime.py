"""One agent's loop: think (model), act (tools), observe, until `finish` or a limit.

Every step is recorded before the next begins, and the conversation is rebuilt from those
records on resume, so an interrupted agent continues from its last step. The loop guards the
budget (it stops before a call that would exceed it) and itself (a repeated identical call,
or many steps that change nothing, end the agent as stuck instead of burning money). An
`ask` call goes to the question desk, which records the question and returns its answer
(the engine's, when nobody supervises), or says the question waits for a person: the agent
then stops, `waiting`, without finishing; resumed once the question is answered, its last
call is an unanswered `ask`, which asks the desk again and finds the answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from agents import events as ev
from agents.models import Completion, ModelError, ModelRouter
from agents.questions import Asking, MustWait, QuestionDesk, QuestionError
from agents.store import Store
from agents.tools import ToolContext, ToolOutcome, call_tool, tool_specs
from agents.tools.registry import TOOLS, Ask, parse_arguments

# "waiting": stopped at a question for a person (not finished: it resumes with the answer).
AgentStatus = Literal["finished", "failed", "stuck", "budget", "step_limit", "cancelled",
                      "waiting"]

NUDGE = (
    "Reply with a tool call. When the task is complete and its acceptance checks pass, "
    "call finish(summary)."
)


@dataclass(frozen=True)
class AgentLimits:
    max_steps: int = 40
    stuck_repeats: int = 3
    stuck_idle_steps: int = 12


class Budget(Protocol):
    """Reserve a call's expected size before it is made; settle with what it used."""

    def reserve(self, last_tokens: int, last_usd: float) \
        -> tuple[ev.BudgetStop | None, tuple[float, float]]: ...

    def settle(self, reserved: tuple[float, float], tokens: int, usd: float) -> None: ...


@dataclass(frozen=True)
class AgentResult:
    status: AgentStatus
    summary: str = ""
    steps: int = 0


class AgentRunner:
    def __init__(
        self,
        *,
        store: Store,
        router: ModelRouter,
        tools: ToolContext,
        agent_id: str,
        spec_id: str,
        task_id: str | None,
        role: str,
        key: str,
        opening: list[dict[str, Any]],
        limits: AgentLimits,
        budget: Budget | None = None,
        tool_names: list[str] | None = None,
        custom_tools: dict[str, Callable[[dict[str, Any]], ToolOutcome]] | None = None,
        extra_specs: list[dict[str, Any]] | None = None,
        questions: QuestionDesk | None = None,
    ) -> None:
        self.store = store
        self.router = router
        self.tools = tools
        self.agent_id = agent_id
        self.spec_id = spec_id
        self.task_id = task_id
        self.role = role
        self.key = key
        self.opening = opening
        self.limits = limits
        self.budget = budget
        names = list(TOOLS) if tool_names is None else tool_names
        if questions is None:  # nobody to ask: do not offer the tool
            names = [n for n in names if n != "ask"]
        self.specs = tool_specs(names) + (extra_specs or [])
        self._offered = {spec["function"]["name"] for spec in self.specs}
        self.questions = questions
        self.custom_tools = custom_tools or {}
        self._ids = {"spec_id": spec_id, "task_id": task_id, "agent_id": agent_id}

    def _emit(self, *events: ev.Event) -> asyncio.Future[int]:
        return self.store.append_many(events)

    async def run(self) -> AgentResult:
        messages = await self.store.messages(self.agent_id)
        step = sum(1 for m in messages if m.get("role") == "assistant")
        model = self.router.model_for(self.role)
        if not messages:
            messages = list(self.opening)
            started = self._emit(ev.AgentStarted(**self._ids, role=self.role, model=model,
                                                 messages=messages))
        else:
            started = self._emit(ev.AgentStarted(**self._ids, role=self.role, model=model,
                                                 resumed_at_step=step))
        try:
            # The start is on disk before the first turn is recorded or a tool runs (as each
            # step is before the next): the wait overlaps with the first model call.
            return await self._loop(messages, step, started)
        except asyncio.CancelledError:
            await asyncio.shield(self._finish("cancelled", "stopped", step))
            raise

    async def _finish(self, status: AgentStatus, summary: str, step: int,
                      after: asyncio.Future[int] | None = None) -> AgentResult:
        """Record the end; `after` (the last step's record, still being written) commits
        with it in one transaction rather than one before it."""
        finished = self._emit(ev.AgentFinished(**self._ids, status=status, summary=summary))
        await asyncio.gather(finished, *([after] if after is not None else []))
        return AgentResult(status, summary, step)

    async def _loop(self, messages: list[dict[str, Any]], step: int,
                    previous: asyncio.Future[int] | None = None) -> AgentResult:
        last_call_tokens, last_call_cost = 0, 0.0
        recent: list[str] = []
        idle = 0
        # A turn recorded before a crash whose tool calls have no results yet: run them now.
        pending = self._unanswered(messages)
        while True:
            if pending is None:
                if step >= self.limits.max_steps:
                    return await self._finish("step_limit", f"reached {step} steps", step)
                reserved = (0.0, 0.0)
                if self.budget is not None:
                    stop, reserved = self.budget.reserve(last_call_tokens, last_call_cost)
                    if stop is not None:
                        await self._emit(stop.model_copy(update=self._ids))
                        return await self._finish(
                            "budget", f"{stop.scope} {stop.measure} budget: "
                            f"{stop.used:g} used of {stop.limit:g}", step)
                try:
                    completion = await self._call(messages, step + 1)
                except ModelError as exc:
                    if self.budget is not None:
                        self.budget.settle(reserved, 0, 0.0)
                    await self._emit(ev.Notice(**self._ids, level="error",
                                               message=f"model error: {exc}"))
                    return await self._finish("failed", f"model error: {exc}", step)
                except BaseException:
                    if self.budget is not None:
                        self.budget.settle(reserved, 0, 0.0)
                    raise
                if self.budget is not None:
                    self.budget.settle(reserved, completion.tokens_in + completion.tokens_out,
                                       completion.cost_usd)
                step += 1
                last_call_tokens = completion.tokens_in + completion.tokens_out
                last_call_cost = completion.cost_usd
                messages.append(completion.message)
                # The previous step must be on disk before this one is recorded and its tools
                # touch anything; the wait overlapped with the model call.
                if previous is not None:
                    await previous
                    previous = None
                self._emit(ev.AgentTurn(
                    **self._ids, step=step, model=completion.model, message=completion.message,
                    tokens_in=completion.tokens_in, tokens_out=completion.tokens_out,
                    cost_usd=completion.cost_usd, latency=completion.latency,
                ))
                calls = [(c.id, c.name, c.arguments) for c in completion.tool_calls]
            else:
                calls = pending
                pending = None
            if not calls:
                note = {"role": "user", "content": NUDGE}
                messages.append(note)
                await self._emit(ev.AgentNote(**self._ids, step=step, message=note))
                idle += 1
                if idle >= self.limits.stuck_idle_steps:
                    return await self._stuck(f"{idle} steps without a change", step)
                continue
            if previous is not None:  # resumed tool calls, or a nudge: no model call between
                await previous
                previous = None
            changed = False
            last: asyncio.Future[int] | None = None
            for call_id, name, arguments in calls:
                started = time.perf_counter()
                try:
                    outcome = await self._call_tool(name, arguments, step, call_id)
                except MustWait:
                    # The question waits for a person: stop here, unfinished. This call and
                    # the ones after it have no result yet, so a resumed agent makes them.
                    if last is not None:
                        await last
                    return AgentResult("waiting", "waiting for an answer", step)
                duration = time.perf_counter() - started
                messages.append({"role": "tool", "tool_call_id": call_id,
                                 "content": outcome.content})
                batch: list[ev.Event] = [ev.ToolExecuted(
                    **self._ids, step=step, call_id=call_id, name=name,
                    arguments=_args_for_record(arguments), result=outcome.content,
                    is_error=outcome.is_error, changed=outcome.changed, duration=duration,
                )]
                if outcome.sandbox is not None:
                    batch.append(ev.SandboxLimited(
                        **self._ids, step=step, command=outcome.command,
                        stop=outcome.sandbox.stop, detail=outcome.sandbox.detail,
                    ))
                if outcome.limit is not None:
                    batch.append(ev.LimitReached(
                        **self._ids, step=step, tool=name, command=outcome.command,
                        limit=outcome.limit.limit, used=outcome.limit.used,  # type: ignore[arg-type]
                        allowed=outcome.limit.allowed, detail=outcome.limit.message))
                last = self._emit(*batch)
                changed = changed or outcome.changed
                if outcome.finished:
                    return await self._finish("finished", outcome.summary, step, after=last)
                recent.append(f"{name}\0{arguments}")
            previous = last
            idle = 0 if changed else idle + 1
            repeats = self.limits.stuck_repeats
            if len(recent) >= repeats and len(set(recent[-repeats:])) == 1:
                return await self._stuck(
                    f"the same call ({calls[-1][1]}) repeated {repeats} times", step)
            if idle >= self.limits.stuck_idle_steps:
                return await self._stuck(f"{idle} steps without a change to the worktree", step)

    async def _stuck(self, reason: str, step: int) -> AgentResult:
        await self._emit(ev.AgentStuck(**self._ids, reason=reason))
        return await self._finish("stuck", reason, step)

    async def _call(self, messages: list[dict[str, Any]], step: int) -> Completion:
        async def on_retry(model: str, attempt: int, status: int | None, wait: float,
                           error: str) -> None:
            self._emit(ev.ModelRetry(**self._ids, step=step, model=model, attempt=attempt,
                                     status=status, wait=wait, error=error))

        return await self.router.complete(
            self.role, messages, tools=self.specs,
            metadata={"factory_key": self.key, "factory_agent": self.agent_id},
            on_retry=on_retry,
        )

    async def _call_tool(self, name: str, arguments: str, step: int, call_id: str) \
            -> ToolOutcome:
        # (ask unoffered has its own answer; finish only ends the loop, harmless anywhere)
        if name not in self._offered and name not in ("ask", "finish"):
            # The registry runs any tool it knows; a model (or a prompt injected into what
            # it reads) naming one it was not offered (the planner writing files) is refused.
            return ToolOutcome(f"unknown tool {name!r}: the tools you have are "
                               + ", ".join(sorted(self._offered)), is_error=True)
        if name == "ask" and self.questions is not None:
            return await self._ask(arguments, step, call_id)
        custom = self.custom_tools.get(name)
        if custom is None:
            return await call_tool(self.tools, name, arguments)
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return ToolOutcome(f"arguments for {name} are not valid JSON: {exc}", is_error=True)
        if not isinstance(parsed, dict):
            return ToolOutcome(f"arguments for {name} must be a JSON object", is_error=True)
        return custom(parsed)

    async def _ask(self, arguments: str, step: int, call_id: str) -> ToolOutcome:
        assert self.questions is not None
        args = parse_arguments("ask", arguments)
        if not isinstance(args, Ask):
            assert isinstance(args, ToolOutcome)
            return args
        who = Asking(agent_id=self.agent_id, spec_id=self.spec_id, task_id=self.task_id,
                     key=self.key, step=step, call_id=call_id)
        try:
            answer = await self.questions.ask(who, args.question, args.options)
        except QuestionError as exc:  # not expected; the model hears of it, the run goes on
            return ToolOutcome(f"the question could not be asked: {exc}", is_error=True)
        return ToolOutcome(answer.for_model())

    @staticmethod
    def _unanswered(messages: list[dict[str, Any]]) -> list[tuple[str, str, str]] | None:
        """Tool calls of the last model turn that have no recorded result (a crash mid-step)."""
        for index in range(len(messages) - 1, -1, -1):
            message = messages[index]
            if message.get("role") == "assistant":
                answered = {m.get("tool_call_id") for m in messages[index + 1:]}
                calls = [(c["id"], c["function"]["name"], c["function"]["arguments"])
                         for c in message.get("tool_calls") or [] if c["id"] not in answered]
                return calls or None
            if message.get("role") != "tool":
                return None
        return None


def _args_for_record(arguments: str) -> dict[str, Any] | str:
    try:
        parsed = json.loads(arguments)
    except (json.JSONDecodeError, TypeError):
        return arguments
    return parsed if isinstance(parsed, dict) else arguments
