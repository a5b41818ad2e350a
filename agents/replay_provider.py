"""litellm's side of the replay provider: a `CustomLLM` that plays `agents.replay` files.

Kept apart from agents/replay.py so that loading trajectories never imports litellm.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from litellm import CustomLLM
from litellm.llms.custom_llm import CustomLLMError
from litellm.types.utils import ChatCompletionMessageToolCall, Function, Usage

from agents.replay import Trajectory, get


class ReplayProvider(CustomLLM):
    """litellm custom provider `replay/<name>`."""

    def _turn(self, model: str, messages: list[Any], litellm_params: dict[str, Any] | None) \
            -> tuple[Trajectory, dict[str, Any]]:
        name = model.split("/", 1)[1] if model.startswith("replay/") else model
        trajectory = get(name)
        if trajectory is None:
            raise CustomLLMError(404, f"no replay trajectory named {name!r} is loaded")
        metadata = (litellm_params or {}).get("metadata") or {}
        key = metadata.get("factory_key")
        turns = trajectory.agents.get(key or "")
        if turns is None:
            raise CustomLLMError(404, f"{trajectory.path}: no trajectory for agent {key!r}")
        step = sum(1 for m in messages if m.get("role") == "assistant")
        if step >= len(turns):
            raise CustomLLMError(
                400, f"{trajectory.path}: trajectory {key!r} has {len(turns)} turns, "
                f"asked for turn {step + 1}"
            )
        turn = turns[step]
        if "error" in turn:
            raise CustomLLMError(int(turn["error"].get("status", 500)),
                                 turn["error"].get("message", "replayed error"))
        return trajectory, turn

    def _fill(self, model_response: Any, model: str, turn: dict[str, Any]) -> Any:
        message = model_response.choices[0].message
        message.content = turn.get("content")
        calls = [
            ChatCompletionMessageToolCall(
                id=f"call_{i}",
                type="function",
                function=Function(
                    name=call["name"],
                    arguments=call["arguments"] if isinstance(call.get("arguments"), str)
                    else json.dumps(call.get("arguments", {})),
                ),
            )
            for i, call in enumerate(turn.get("tool_calls", []))
        ]
        message.tool_calls = calls or None
        model_response.choices[0].finish_reason = "tool_calls" if calls else "stop"
        usage = turn.get("usage", {})
        tin, tout = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        model_response.usage = Usage(prompt_tokens=tin, completion_tokens=tout,
                                     total_tokens=tin + tout)
        model_response.model = model
        return model_response

    def completion(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> Any:
        trajectory, turn = self._turn(model, messages, kwargs.get("litellm_params"))
        delay = float(turn.get("latency_ms", trajectory.latency_ms)) / 1000
        if delay:
            time.sleep(delay)
        return self._fill(kwargs["model_response"], model, turn)

    async def acompletion(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) \
            -> Any:
        trajectory, turn = self._turn(model, messages, kwargs.get("litellm_params"))
        delay = float(turn.get("latency_ms", trajectory.latency_ms)) / 1000
        if delay:
            await asyncio.sleep(delay)
        return self._fill(kwargs["model_response"], model, turn)
