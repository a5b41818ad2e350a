"""The one door to language models: litellm, with routing, retries, fallbacks and accounting.

litellm is imported lazily (it takes seconds), so nothing on the console's start path pays for
it. The offline `replay` provider is registered with litellm as a custom provider, so replayed
runs take exactly the code path of real ones.

A failed call becomes a `ModelError` with a kind (`ErrorKind`), the HTTP status and the
provider's own message, worded so that a person knows what to set or fix: an agent that ends
on one says why in its summary. Only kinds that can succeed on a second try are retried.
`check_models` checks a configuration's models before a run, offline, so that a run that cannot
work refuses to start instead of failing agent by agent.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agents.errors import FactoryError
from agents.textsafe import clean_line

if TYPE_CHECKING:
    from agents.config import FactoryConfig

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ErrorKind = Literal[
    "credentials",     # no API key where the provider needs one (nothing was sent)
    "authentication",  # the provider refused the key (401) or its permissions (403)
    "unknown_model",   # no such model, or no provider litellm knows serves it
    "quota",           # the account's credit or quota is used up (402, insufficient_quota)
    "rate_limit",      # 429: too many requests or tokens for now
    "context_length",  # the conversation does not fit the model's context window
    "bad_request",     # any other refusal of the request itself (400, 422, ...)
    "timeout",         # no answer within [models] timeout_seconds
    "connection",      # the endpoint could not be reached
    "server",          # the provider failed (5xx, 409)
    "other",           # anything else (a bug here or in litellm, most likely)
]

# What a second try can fix: the provider's state, not our request or our configuration.
RETRYABLE_KINDS: frozenset[ErrorKind] = frozenset({"rate_limit", "timeout", "connection",
                                                   "server"})
# What another model can fix: a model that is not there, too small, or not answering. Never a
# missing or refused key (a person must fix it, and a fallback would hide it and spend on a
# model nobody chose for this) nor a malformed request (every model would refuse it too).
FALLBACK_KINDS: frozenset[ErrorKind] = RETRYABLE_KINDS | {"unknown_model", "context_length",
                                                          "quota"}

_LABELS: dict[ErrorKind, str] = {
    "credentials": "no API key", "authentication": "authentication failed",
    "unknown_model": "unknown model", "quota": "quota used up", "rate_limit": "rate limited",
    "context_length": "context window exceeded", "bad_request": "request rejected",
    "timeout": "timed out", "connection": "connection failed", "server": "server error",
    "other": "error",
}


class ModelError(FactoryError):
    """A model call that failed, or a role with no model.

    `kind` says what went wrong (see `ErrorKind`), `status` is the HTTP status when there was
    one, `provider_message` is the provider's (or litellm's) own words, cleaned of control
    characters. The message (`str(error)`) names the cause, the model and what to set or fix.
    When fallbacks were tried, the error is the last model's, and `failures` holds every
    model's in order.
    """

    def __init__(self, message: str, status: int | None = None, *,
                 kind: ErrorKind = "other", provider_message: str = "",
                 model: str | None = None, attempts: int = 0,
                 failures: tuple[ModelError, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind: ErrorKind = kind
        self.provider_message = provider_message
        self.model = model
        self.attempts = attempts
        self.failures = failures

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS


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


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what caused it (litellm wraps the openai SDK's, which wraps httpx's)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 12:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__
                                        else current.__context__)


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _error_body(exc: BaseException) -> dict[str, Any]:
    """The provider's error object (`{"message", "type", "code"}` in OpenAI's format), if the
    exception or one it wraps kept the body of the HTTP response."""
    for link in _chain(exc):
        body = getattr(link, "body", None)
        if isinstance(body, dict) and body:
            inner = body.get("error")
            return inner if isinstance(inner, dict) else body
        response = getattr(link, "response", None)
        try:
            text = response.text if response is not None else ""
        except Exception:  # a streamed response that was never read, say
            text = ""
        if not isinstance(text, str) or not text.lstrip().startswith("{"):
            continue
        try:
            doc = json.loads(text)
        except ValueError:
            continue
        if not isinstance(doc, dict):
            continue
        inner = doc.get("error")
        if isinstance(inner, dict):
            return inner
        if isinstance(inner, str):
            return {"message": inner}
        if "message" in doc or "detail" in doc:
            return doc
    return {}


# litellm's message is "litellm.RateLimitError: RateLimitError: OpenAIException - <provider's>".
_PREFIX = re.compile(r"^\s*(?:litellm\.)?[A-Za-z_]*(?:Error|Exception|Timeout)\s*(?::|\s-)\s*")
_RETRIED = re.compile(r"\s*LiteLLM (?:Retried: \d+ times|Max Retries: \d+).*$", re.S)
_MESSAGE_LIMIT = 600


def _provider_message(exc: BaseException, body: dict[str, Any]) -> str:
    """The provider's words: from the error body when there is one, else litellm's message
    without litellm's own prefixes; on one line, control characters made visible."""
    raw = body.get("message") or body.get("detail")
    if raw is not None and not isinstance(raw, str):
        raw = json.dumps(raw)
    text = raw or str(getattr(exc, "message", "") or exc)
    text = _RETRIED.sub("", text)
    while match := _PREFIX.match(text):
        text = text[match.end():]
    text = " ".join(text.split()) or type(exc).__name__
    if len(text) > _MESSAGE_LIMIT:
        text = text[:_MESSAGE_LIMIT - 1] + "…"
    return clean_line(text)


_MISSING_KEY = re.compile(
    r"missing credentials|missing [\w ]{0,40}api[ _-]?key|api_key client option must be set"
    r"|no (?:api )?key (?:is )?(?:set|provided)|didn't provide an api key"
    r"|api[ _-]?key (?:is )?(?:required|not set|not found|missing)", re.I)
_NO_PROVIDER = re.compile(r"llm provider not provided", re.I)
_CONTEXT = re.compile(r"context_length_exceeded|context (?:window|length)|maximum context", re.I)
_NO_MODEL = re.compile(
    r"model_not_found|no such model|(?:unknown|invalid) model|model[^.;]{0,80}"
    r"(?:not found|does not exist|not exist|is not supported)", re.I)
_QUOTA = re.compile(r"insufficient_quota|exceeded your current quota|billing_hard_limit"
                    r"|credit balance is too low", re.I)
_TIMEOUTS = {"Timeout", "APITimeoutError", "TimeoutException", "TimeoutError"}
_CONNECTION = {"APIConnectionError", "ConnectError", "ConnectionError", "TransportError",
               "ClientConnectorError", "ServerDisconnectedError", "ClientOSError"}


def classify_error(exc: BaseException) -> tuple[ErrorKind, int | None, str]:
    """(kind, HTTP status, provider's message) of a failed litellm call.

    litellm's exception classes come first, then what the provider said, then the status: a
    missing key reaches us as a 500 (the openai SDK refuses before sending anything) and a
    refused connection as a 500 wrapping the SDK's connection error, neither of which a
    retry can fix or should be called a server error. Classes are matched by name along the
    chain of causes, so this needs neither litellm nor openai imported.
    """
    chain = list(_chain(exc))
    names = {cls.__name__ for link in chain for cls in type(link).__mro__}
    status = next((s for s in map(_status_of, chain) if s is not None), None)
    body = _error_body(exc)
    message = _provider_message(exc, body)
    code = str(body.get("code") or body.get("type") or "")
    said = f"{code} {message}"
    kind: ErrorKind
    if "ContextWindowExceededError" in names or code == "context_length_exceeded" or (
            status in (400, 413) and _CONTEXT.search(said)):
        kind = "context_length"
    # Nothing reached the provider in these four: the status is litellm's invention, dropped.
    elif _MISSING_KEY.search(message):
        kind = "credentials"
        status = status if status in (401, 403) else None
    elif "LiteLLMUnknownProvider" in names or _NO_PROVIDER.search(message):
        kind, status = "unknown_model", None
    elif names & _TIMEOUTS:
        kind, status = "timeout", None
    elif names & _CONNECTION:
        kind, status = "connection", None
    elif status == 408:
        kind = "timeout"
    elif status == 402 or "BudgetExceededError" in names or _QUOTA.search(said):
        kind = "quota"
    elif code == "model_not_found" or status == 404 or (
            status is not None and 400 <= status < 500 and status not in (401, 403, 429)
            and _NO_MODEL.search(said)):
        kind = "unknown_model"
    elif status in (401, 403) or names & {"AuthenticationError", "PermissionDeniedError"}:
        kind = "authentication"
    elif status == 429 or "RateLimitError" in names:
        kind = "rate_limit"
    elif (status is not None and (status >= 500 or status == 409)) or names & {
            "InternalServerError", "ServiceUnavailableError", "BadGatewayError"}:
        kind = "server"
    elif status is not None and 400 <= status < 500:
        kind = "bad_request"
    else:
        kind = "other"
    return kind, status, message


def _retry_after(exc: BaseException) -> float | None:
    """Seconds the provider asked us to wait (Retry-After, or OpenAI's retry-after-ms)."""
    for link in _chain(exc):
        response = getattr(link, "response", None)
        headers = getattr(response, "headers", None)
        if not headers:
            continue
        for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
            value = headers.get(name)
            try:
                seconds = float(value) * scale if value is not None else None
            except ValueError:
                seconds = None
            if seconds is not None and seconds >= 0:
                return seconds
    return None


def _missing_keys(litellm: Any, model: str, api_base: str | None) -> list[str]:
    """The environment variables litellm's own check says `model` needs and lacks."""
    try:
        found = litellm.validate_environment(model=model, api_base=api_base or None)
    except Exception:
        return []
    return [str(k) for k in found.get("missing_keys") or []]


def _export_hint(missing: list[str], api_base: str | None = None) -> str:
    """'X is not set; export it, or ...': what to set for variables litellm found missing."""
    if not missing:
        return ("export the provider's API key, or set [models] api_key_env to the "
                "variable that holds the key")
    one = len(missing) == 1
    names = missing[0] if one else ", ".join(missing)
    instead = ("set [models] api_base" if all("BASE" in k for k in missing)
               else "set [models] api_key_env to the variable that holds the key")
    # The openai client wants a key even for a local server that checks none.
    anyway = " (any value, if the server at [models] api_base checks none)" if api_base \
        and "BASE" not in instead else ""
    return (f"{names} {'is' if one else 'are'} not set; export {'it' if one else 'them'}"
            f"{anyway}, or {instead}")


@dataclass
class ModelRouter:
    """Role → model, with fallbacks and retry policy taken from the configuration.

    Retry policy: a failure whose kind is in `RETRYABLE_KINDS` (rate limit, timeout,
    connection, server) is tried again up to `max_retries` times, waiting what the provider's
    Retry-After asks or else an exponential backoff with jitter. Any other kind is final for
    that model at once: one request, no retry. The next fallback model is then tried when the
    kind is in `FALLBACK_KINDS` (retries ran out, or the model is unknown, its context window
    too small or its account's quota used up); a missing or refused key and a malformed
    request end the call (another model would hide the problem or fail the same way).

    `api_key_env` names the variable that holds `api_key` (read from it when `api_key` is not
    given); it is only used to tell a person which variable to check.
    """

    roles: dict[str, str]
    fallbacks: dict[str, list[str]] = field(default_factory=dict)
    api_base: str | None = None
    api_key: str | None = None
    max_retries: int = 4
    timeout: float = 120.0
    backoff_base: float = 0.5
    backoff_cap: float = 20.0
    api_key_env: str | None = None

    def model_for(self, role: str) -> str:
        try:
            return self.roles[role]
        except KeyError:
            raise ModelError(f"no model configured for role {role!r} ([models] {role} = ...)") \
                from None

    def _key(self) -> str | None:
        return self.api_key or api_key_from_env(self.api_key_env)

    def _kwargs(self, model: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"timeout": self.timeout, "num_retries": 0, "max_retries": 0}
        if not model.startswith("replay/"):
            if self.api_base:
                kwargs["api_base"] = self.api_base
            key = self._key()
            if key:
                kwargs["api_key"] = key
        return kwargs

    async def complete(
        self,
        role: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        metadata: dict[str, Any] | None = None,
        on_retry: RetryHook | None = None,
        max_tokens: int | None = None,
    ) -> Completion:
        """One completion for `role`, under the retry and fallback policy of the class.

        Raises `ModelError` naming the cause; `on_retry(model, retry number, status, wait,
        cause)` is awaited before each wait.
        """
        limit = {"max_tokens": max_tokens} if max_tokens is not None else {}
        # The first call pays litellm's import (seconds): do it off the event loop so that
        # everything else keeps moving meanwhile.
        litellm = _litellm if _litellm is not None else await asyncio.to_thread(litellm_module)
        primary = self.model_for(role)
        failures: list[ModelError] = []
        last: Exception | None = None
        for model in [primary, *self.fallbacks.get(primary, [])]:
            attempt = 0
            while True:
                attempt += 1
                started = time.perf_counter()
                try:
                    response = await litellm.acompletion(
                        model=model, messages=messages, tools=tools or None,
                        metadata=metadata or {}, **limit, **self._kwargs(model),
                    )
                except Exception as exc:
                    failure = self.error_for(exc, model, attempt)
                    if failure.retryable and attempt <= self.max_retries:
                        wait = _retry_after(exc)
                        if wait is None:
                            wait = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
                            wait *= 0.5 + random.random() / 2
                        if on_retry is not None:
                            cause = f"{_LABELS[failure.kind]}: {failure.provider_message}"
                            await on_retry(model, attempt, failure.status, wait, cause[:500])
                        await asyncio.sleep(wait)
                        continue
                    failures.append(failure)
                    last = exc
                    break
                return self._completion(litellm, response, model, time.perf_counter() - started)
            if failures[-1].kind not in FALLBACK_KINDS:
                break
        raise self._final(failures) from last

    async def probe(self, model: str) -> Completion:
        """One call for one token to `model` itself (`factory doctor --online`): with the
        router's endpoint, key and timeout, but no retry and no fallback, since a fallback
        that answered would hide that this model does not. Raises `ModelError`, worded as a
        run's would be."""
        alone = replace(self, roles={"probe": model}, fallbacks={}, max_retries=0)
        return await alone.complete("probe", [{"role": "user", "content": "Say OK."}],
                                    max_tokens=1)

    @staticmethod
    def _final(failures: list[ModelError]) -> ModelError:
        """The error that ends a call: the last model's, naming every model's cause."""
        final = failures[-1]
        if len(failures) == 1:
            return final
        causes = " | ".join(f"{i}) {f}" for i, f in enumerate(failures, start=1))
        return ModelError(f"{failures[0].model} and its fallbacks failed: {causes}",
                          final.status, kind=final.kind,
                          provider_message=final.provider_message, model=final.model,
                          attempts=final.attempts, failures=tuple(failures))

    def error_for(self, exc: BaseException, model: str, attempts: int = 1) -> ModelError:
        """The `ModelError` for one failed call to `model`: its kind, and a message that names
        the cause, the model and what to set or fix."""
        kind, status, provider_message = classify_error(exc)
        replayed = model.startswith("replay/")
        if replayed and kind == "connection":
            # litellm reports whatever a custom provider raised as a connection error; the
            # replay provider has no network to fail, so that is a bug, not worth a retry.
            kind = "other"
        said = provider_message.rstrip(" .") or provider_message  # "...: <said>; <what to do>"
        code = f" ({status})" if status is not None else ""
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if kind == "credentials":
            text = f"no API key for {model}: {said}; {self._set_key_hint(model)}"
        elif kind == "authentication":
            what = "permission denied" if status == 403 else "authentication failed"
            also = ", and that it may use this model" if status == 403 else ""
            text = f"{what} for {model}{code}: {said}; check the key in {self._key_source(model)}"
            text += also
        elif kind == "unknown_model" and replayed:
            text = (f"unknown replay model or agent for {model}{code}: {said}; check [models] "
                    "and the trajectory file in .factory/replay/")
        elif kind == "unknown_model" and status is None:  # litellm knows no such provider
            text = (f"litellm does not know which provider serves {model}: {said}; write the "
                    "model in [models] as provider/name, e.g. 'openai/gpt-4o-mini' (or "
                    "'openai/<name>' for an OpenAI-compatible server at [models] api_base)")
        elif kind == "unknown_model":
            where = (f", and that {self.api_base} ([models] api_base) serves it" if self.api_base
                     else ", or set [models] api_base to a server that serves it")
            text = (f"unknown model {model}{code}: {said}; check the model name in [models] "
                    f"(litellm's provider/name, e.g. 'openai/gpt-4o-mini'){where}")
        elif kind == "quota":
            text = (f"the quota or credit for {model} is used up{code}: {said}; check the plan "
                    f"and billing of the key in {self._key_source(model)}, or add "
                    "[models] fallbacks")
        elif kind == "rate_limit":
            text = (f"rate limited by {model}{code}{tries}: {said}; lower [run] concurrency, "
                    "raise [models] max_retries, or add [models] fallbacks")
        elif kind == "context_length":
            text = (f"the conversation is too long for {model}'s context window{code}: {said}; "
                    "use a model with a larger window (or add one to [models] fallbacks), or "
                    "split the work into smaller tasks")
        elif kind == "bad_request":
            text = f"{model} rejected the request{code}: {said}"
        elif kind == "timeout":
            text = (f"{model} did not answer within {self.timeout:g} s{tries}: {said}; raise "
                    "[models] timeout_seconds, or check the provider")
        elif kind == "connection":
            where = "" if replayed or not self.api_base else f" at {self.api_base}"
            check = "[models] api_base and the network" if where else "the network"
            text = f"cannot reach {model}{where}{tries}: {said}; check {check}"
        elif kind == "server":
            text = (f"{model}'s provider failed{code}{tries}: {said}; try again later, or add "
                    "[models] fallbacks")
        else:
            text = f"{model} failed{code}: {said}"
        return ModelError(text, status, kind=kind, provider_message=provider_message,
                          model=model, attempts=attempts)

    def _key_source(self, model: str) -> str:
        """Where the key that the provider refused came from, for 'check the key in ...'."""
        if self.api_key_env:
            return f"${self.api_key_env}"
        if self.api_key:
            return "the variable [models] api_key_env names"
        provider = model.split("/", 1)[0] if "/" in model else ""
        candidate = f"{provider.upper()}_API_KEY"
        if provider and candidate in os.environ:
            return f"${candidate}"
        return "the provider's API key variable (or set [models] api_key_env)"

    def _set_key_hint(self, model: str) -> str:
        """What to set when no key was there: the named variable, or what litellm's
        environment check finds missing for the model's provider."""
        if self.api_key_env:
            return f"export {self.api_key_env} (named by [models] api_key_env)"
        litellm = _litellm if _litellm is not None else litellm_module()
        return _export_hint(_missing_keys(litellm, model, self.api_base), self.api_base)

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


ROLES = ("planner", "implementer", "reviewer")


def check_models(config: FactoryConfig) -> list[str]:
    """What stops the configuration's models from working, before a run starts: one line per
    problem, each naming the key, the model and what to set; empty when every model can work.

    Checked for each role's model and each of its fallbacks, offline (no request is sent):
    a `replay/<name>` model needs its trajectory, `.factory/replay/<name>.json`, readable and
    well formed (it is loaded, and so registered, as the engine would load it); any other
    model needs a provider litellm knows (`litellm.get_llm_provider`), to be in litellm's model
    map unless `[models] api_base` points at a server that serves it, and its credentials:
    the variable `[models] api_key_env` names must be set when it is named (the router passes
    that key to every model), else litellm's own environment check
    (`litellm.validate_environment`) must find what the provider needs. litellm is imported
    only when a model other than `replay/` is configured.
    """
    problems: list[str] = []
    for model, keys in model_uses(config).items():
        for problem in model_problems(config, model):
            problems.append(f"{', '.join(keys)} = {model!r}: {problem}")
    return problems


def model_uses(config: FactoryConfig) -> dict[str, list[str]]:
    """Each model the configuration names, once, with the keys that name it (roles first,
    then the review gate's reviewers when the queue runs that gate, each followed by its
    fallbacks, in order): what `check_models` and `factory doctor` check. A reviewer's model
    that cannot work would otherwise surface only when the first entry reaches review, as
    a reviewer that errors on every entry."""
    models = config.models
    where: dict[str, list[str]] = {}
    named = [(f"models.{role}", getattr(models, role)) for role in ROLES]
    if "review" in config.queue.gates:
        named += [(f"gates.review.models[{i}]", model)
                  for i, model in enumerate(config.gates.review.models)]
    for key, primary in named:
        if key not in where.setdefault(primary, []):
            where[primary].append(key)
        for i, fallback in enumerate(models.fallbacks.get(primary, [])):
            key = f"models.fallbacks[{primary!r}][{i}]"
            if key not in where.setdefault(fallback, []):
                where[fallback].append(key)
    return where


@dataclass(frozen=True)
class ModelCheck:
    """One model as `factory doctor` found it: what stops it offline, and, when it was
    called (`--online`), whether it answered (`answered` None: not called; `said` why)."""

    model: str
    keys: tuple[str, ...]
    problems: tuple[str, ...]
    answered: bool | None = None
    said: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems and self.answered is not False


async def check_each_model(config: FactoryConfig,
                           router: ModelRouter | None = None) -> list[ModelCheck]:
    """Every model the configuration names (`model_uses`), checked offline as a run's start
    checks it; with a router, each that passes is then called once for one token (a model
    several keys name is called once). Replayed models are offline by nature: not called."""
    found = []
    for model, keys in model_uses(config).items():
        problems = tuple(await asyncio.to_thread(model_problems, config, model))
        answered, said = None, ""
        if router is not None and problems:
            said = "not called: fix the problems found offline first"
        elif router is not None and model.startswith("replay/"):
            said = "not called: a replayed model plays its trajectory, offline"
        elif router is not None:
            try:
                await router.probe(model)
            except ModelError as exc:
                answered, said = False, str(exc)
            else:
                answered, said = True, "answered a one-token request"
        found.append(ModelCheck(model, tuple(keys), problems, answered, said))
    return found


def model_problems(config: FactoryConfig, model: str) -> list[str]:
    """What stops one model from working, offline (`check_models` says how it is checked)."""
    models = config.models
    if not model.strip():
        return ["no model named; set a litellm model name, e.g. 'openai/gpt-4o-mini'"]
    if model.startswith("replay/"):
        return _replay_problems(config.root, model)
    litellm = litellm_module()
    api_base = models.api_base or None
    try:
        name, provider, _, _ = litellm.get_llm_provider(model=model, api_base=api_base)
    except Exception:
        return ["litellm does not know which provider serves it; write it as provider/name, "
                "e.g. 'openai/gpt-4o-mini' (or 'openai/<name>' for an OpenAI-compatible "
                "server at [models] api_base)"]
    problems = []
    if api_base is None and not _in_model_map(litellm, model, name, provider):
        problems.append(f"litellm does not know this model ({provider} has no {name!r} in "
                        "litellm's model map); check the name, or set [models] api_base to a "
                        "server that serves it")
    if models.api_key_env:
        if not os.environ.get(models.api_key_env):
            problems.append(f"{models.api_key_env} is not set ([models] api_key_env names it); "
                            "export it with the key"
                            + (f" for {api_base}" if api_base else ""))
    else:
        missing = _missing_keys(litellm, model, api_base)
        if missing:
            problems.append(_export_hint(missing, api_base))
    return problems


def _in_model_map(litellm: Any, model: str, name: str, provider: str) -> bool:
    """Whether litellm's model map lists the model for that provider. (Not
    `litellm.get_model_info`: it makes up an entry for names that look like OpenAI's, such as
    'openai/gpt-9'.) The map holds models registered with `litellm.register_model` too."""
    for key in (model, name, f"{provider}/{name}"):
        entry = litellm.model_cost.get(key)
        if isinstance(entry, dict) and str(entry.get("litellm_provider") or "").split("-")[0] \
                in (provider, provider.split("-")[0]):
            return True
    return False


def _replay_problems(root: Path, model: str) -> list[str]:
    name = model.split("/", 1)[1]
    if not name:
        return ["a replay model needs a name: 'replay/<name>' plays .factory/replay/<name>.json"]
    path = replay_path(root, model)
    if not path.is_file():
        return [f"its trajectory {path} does not exist; record one there, or choose "
                "another model"]
    from agents import replay

    try:
        replay.load(name, path)
    except ValueError as exc:
        return [f"its trajectory cannot be played: {exc}"]
    except OSError as exc:
        return [f"its trajectory {path} cannot be read: {exc.strerror or exc}"]
    return []
