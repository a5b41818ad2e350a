"""The one door to language models: litellm, with routing, retries, fallbacks and accounting.

litellm is imported lazily (it takes seconds), so nothing on the console's start path pays for
it. The offline `replay` provider is registered with litellm as a custom provider, so replayed
runs take exactly the code path of real ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.errors import FactoryError

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}


class ModelError(FactoryError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class Completion:
    message: dict[str, Any]
    tool_calls: list[ToolCall]
    model: str
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    latency: float = 0.0


RetryHook = Callable[[str, int, int | None, float, str], Awaitable[None]]

_litellm: Any = None
_import_lock = threading.Lock()


def litellm_module() -> Any:
    """Import litellm once, quietly, with the replay provider registered."""
    global _litellm
    with _import_lock:
        return _litellm if _litellm is not None else _import_litellm()


def _import_litellm() -> Any:
    global _litellm
    if _litellm is None:
        import litellm

        from agents.replay_provider import ReplayProvider

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        providers = [p for p in (litellm.custom_provider_map or []) if p["provider"] != "replay"]
        providers.append({"provider": "replay", "custom_handler": ReplayProvider()})
        litellm.custom_provider_map = providers
        # custom_provider_map is read when litellm sets up its handlers
        from litellm.utils import custom_llm_setup

        custom_llm_setup()
        _litellm = litellm
    return _litellm


def _status_of(exc: Exception) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _is_retryable(exc: Exception) -> bool:
    status = _status_of(exc)
    if status is not None:
        return status in RETRYABLE_STATUS
    name = type(exc).__name__
    return name in {"APIConnectionError", "Timeout", "APITimeoutError", "ServiceUnavailableError",
                    "InternalServerError", "RateLimitError"}


@dataclass
class ModelRouter:
    """Role → model, with fallbacks and retry policy taken from the configuration."""

    roles: dict[str, str]
    fallbacks: dict[str, list[str]] = field(default_factory=dict)
    api_base: str | None = None
    api_key: str | None = None
    max_retries: int = 4
    timeout: float = 120.0
    backoff_base: float = 0.5
    backoff_cap: float = 20.0

    def model_for(self, role: str) -> str:
        try:
            return self.roles[role]
        except KeyError:
            raise ModelError(f"no model configured for role {role!r} ([models] {role} = ...)") \
                from None

    def _kwargs(self, model: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"timeout": self.timeout, "num_retries": 0, "max_retries": 0}
        if not model.startswith("replay/"):
            if self.api_base:
                kwargs["api_base"] = self.api_base
            if self.api_key:
                kwargs["api_key"] = self.api_key
        return kwargs

    async def complete(
        self,
        role: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        metadata: dict[str, Any] | None = None,
        on_retry: RetryHook | None = None,
    ) -> Completion:
        # The first call pays litellm's import (seconds): do it off the event loop so that
        # everything else keeps moving meanwhile.
        litellm = _litellm if _litellm is not None else await asyncio.to_thread(litellm_module)
        primary = self.model_for(role)
        errors: list[str] = []
        for model in [primary, *self.fallbacks.get(primary, [])]:
            for attempt in range(self.max_retries + 1):
                started = time.perf_counter()
                try:
                    response = await litellm.acompletion(
                        model=model, messages=messages, tools=tools or None,
                        metadata=metadata or {}, **self._kwargs(model),
                    )
                except Exception as exc:
                    status = _status_of(exc)
                    if not _is_retryable(exc):
                        raise ModelError(f"{model}: {exc}", status) from exc
                    errors.append(f"{model}: {type(exc).__name__} {status or ''}".strip())
                    if attempt == self.max_retries:
                        break
                    wait = _retry_after(exc)
                    if wait is None:
                        wait = min(self.backoff_cap, self.backoff_base * 2**attempt)
                        wait *= 0.5 + random.random() / 2
                    if on_retry is not None:
                        await on_retry(model, attempt + 1, status, wait, str(exc)[:500])
                    await asyncio.sleep(wait)
                    continue
                return self._completion(litellm, response, model, time.perf_counter() - started)
        raise ModelError("all retries and fallbacks failed: " + "; ".join(errors[-5:]), None)

    def _completion(self, litellm: Any, response: Any, model: str, latency: float) -> Completion:
        choice = response.choices[0].message
        calls = []
        raw_calls = []
        for i, tc in enumerate(choice.tool_calls or []):
            fn = tc["function"] if isinstance(tc, dict) else tc.function
            name = fn["name"] if isinstance(fn, dict) else fn.name
            args = fn["arguments"] if isinstance(fn, dict) else fn.arguments
            call_id = (tc["id"] if isinstance(tc, dict) else tc.id) or f"call_{i}"
            if not isinstance(args, str):
                args = json.dumps(args)
            calls.append(ToolCall(call_id, name or "", args or ""))
            raw_calls.append({"id": call_id, "type": "function",
                              "function": {"name": name, "arguments": args}})
        message: dict[str, Any] = {"role": "assistant", "content": choice.content}
        if raw_calls:
            message["tool_calls"] = raw_calls
        usage = getattr(response, "usage", None)
        tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
        tokens_out = int(getattr(usage, "completion_tokens", 0) or 0)
        return Completion(
            message=message, tool_calls=calls, model=model, tokens_in=tokens_in,
            tokens_out=tokens_out, cost_usd=self._cost(litellm, response, model, tokens_in,
                                                       tokens_out),
            latency=latency,
        )

    def _cost(self, litellm: Any, response: Any, model: str, tin: int, tout: int) -> float:
        """Price from litellm's cost map; replayed runs are priced as the model they recorded."""
        from agents import replay

        priced_as = replay.priced_as(model) if model.startswith("replay/") else None
        if priced_as is None:
            # litellm priced the call already while logging it; reuse that.
            hidden = getattr(response, "_hidden_params", None) or {}
            cost = hidden.get("response_cost")
            if isinstance(cost, int | float):
                return float(cost)
        prices = _prices(litellm, priced_as or model)
        return tin * prices[0] + tout * prices[1] if prices else 0.0


_price_cache: dict[str, tuple[float, float] | None] = {}


def _prices(litellm: Any, model: str) -> tuple[float, float] | None:
    """(USD per input token, per output token) from litellm's cost map, looked up once."""
    if model not in _price_cache:
        try:
            info = litellm.get_model_info(model)
            _price_cache[model] = (float(info.get("input_cost_per_token") or 0.0),
                                   float(info.get("output_cost_per_token") or 0.0))
        except Exception:
            _price_cache[model] = None
    return _price_cache[model]


def api_key_from_env(name: str | None) -> str | None:
    return os.environ.get(name) if name else None


def replay_path(root: Path, model: str) -> Path:
    return root / ".factory" / "replay" / f"{model.split('/', 1)[1]}.json"
