"""Honest endings for model calls: every failure has a kind and the provider's own words, only
what a retry can fix is retried, and a configuration whose models cannot work is caught before
a run, offline.

Real parts only: litellm's openai client talks HTTP to the scripted server on 127.0.0.1 (or to
a port nobody listens on, or to a socket that never answers); the server counts requests, so
"not retried" means exactly one request reached it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents import events as ev
from agents.config import FactoryConfig, parse_config
from agents.models import ModelError, ModelRouter, check_models
from agents.runtime import AgentLimits, AgentRunner
from agents.sandbox.base import SandboxContext
from agents.sandbox.none import NoneBackend
from agents.store import Store
from agents.tools import ToolContext
from tests.openai_server import Reply, ScriptedServer, error, provider_error

MODEL = "openai/gpt-4o-mini"
KEY_ENV = "FACTORY_TEST_KEY"
MESSAGES = [{"role": "user", "content": "hello"}]
ROOT = Path(__file__).resolve().parents[1]


def router(server: ScriptedServer | None = None, *, api_base: str | None = None,
           model: str = MODEL, **kw: Any) -> ModelRouter:
    settings: dict[str, Any] = {"api_key": "test-key", "api_key_env": KEY_ENV,
                                "max_retries": 3, "backoff_base": 0.01, **kw}
    return ModelRouter(roles={"implementer": model},
                       api_base=api_base or (server.api_base if server else None), **settings)


async def failure(r: ModelRouter, retries: list[tuple[Any, ...]] | None = None) -> ModelError:
    async def on_retry(*args: Any) -> None:
        if retries is not None:
            retries.append(args)

    with pytest.raises(ModelError) as caught:
        await r.complete("implementer", MESSAGES, on_retry=on_retry)
    return caught.value


# -- errors a retry cannot fix: one request, a kind, the provider's words --------------------

FINAL = [
    pytest.param(provider_error(401, "Incorrect API key provided: sk-test***abcd.",
                                code="invalid_api_key"),
                 "authentication", ["authentication failed for openai/gpt-4o-mini (401)",
                                    f"check the key in ${KEY_ENV}"], id="401"),
    pytest.param(provider_error(403, "Project proj_x does not have access to this model.",
                                type="permission_error"),
                 "authentication", ["permission denied for openai/gpt-4o-mini (403)",
                                    f"check the key in ${KEY_ENV}"], id="403"),
    pytest.param(provider_error(404, "The model `gpt-4o-mini` does not exist or you do not "
                                "have access to it.", code="model_not_found"),
                 "unknown_model", ["unknown model openai/gpt-4o-mini (404)",
                                   "check the model name in [models]"], id="404"),
    pytest.param(provider_error(400, "Your input exceeds the context window of this model. "
                                "Please adjust your input and try again.",
                                code="context_length_exceeded", param="input"),
                 "context_length", ["too long for openai/gpt-4o-mini's context window (400)",
                                    "larger window"], id="400-context"),
    pytest.param(provider_error(400, "Invalid schema for function 'write_file': "
                                "'object' is not of type 'array'.",
                                code="invalid_function_parameters", param="tools[0]"),
                 "bad_request", ["openai/gpt-4o-mini rejected the request (400)"], id="400"),
    pytest.param(provider_error(429, "You exceeded your current quota, please check your plan "
                                "and billing details.", type="insufficient_quota",
                                code="insufficient_quota"),
                 "quota", ["quota or credit for openai/gpt-4o-mini is used up (429)",
                           "billing"], id="429-quota"),
]


@pytest.mark.parametrize(("reply", "kind", "words"), FINAL)
async def test_errors_a_retry_cannot_fix_are_sent_once(
        server: ScriptedServer, reply: Reply, kind: str, words: list[str]) -> None:
    server.script(reply, Reply(content="a retry would get this"))
    retries: list[tuple[Any, ...]] = []
    exc = await failure(router(server), retries)
    assert exc.kind == kind and exc.status == reply.status and not exc.retryable
    assert len(server.requests) == 1 and retries == []
    assert exc.provider_message == reply.error  # the provider's words, kept whole
    assert reply.error.rstrip(".") in str(exc)
    for word in words:
        assert word in str(exc)


async def test_provider_messages_lose_their_control_characters_but_keep_their_text(
        server: ScriptedServer) -> None:
    server.script(provider_error(400, "bad\x1b]0;pwned\x07 tool\r\nschema"))
    exc = await failure(router(server))
    assert exc.provider_message == "bad␛]0;pwned␇ tool schema"
    assert "\x1b" not in str(exc) and "\x07" not in str(exc)


# -- errors a retry can fix -------------------------------------------------------------------

async def test_rate_limit_is_retried_as_retry_after_says_then_succeeds(
        server: ScriptedServer) -> None:
    server.script(error(429, "Rate limit reached for gpt-4o-mini", **{"retry-after": "0"}),
                  error(429, "Rate limit reached for gpt-4o-mini", **{"retry-after-ms": "0"}),
                  Reply(content="hello back"))
    retries: list[tuple[Any, ...]] = []

    async def on_retry(*args: Any) -> None:
        retries.append(args)

    # A backoff of 60 s would time the test out: only the server's Retry-After keeps it short.
    completion = await router(server, backoff_base=60).complete(
        "implementer", MESSAGES, on_retry=on_retry)
    assert completion.message["content"] == "hello back"
    assert len(server.requests) == 3
    assert [(r[1], r[2], r[3]) for r in retries] == [(1, 429, 0.0), (2, 429, 0.0)]
    assert retries[0][4] == "rate limited: Rate limit reached for gpt-4o-mini"


async def test_rate_limit_until_the_limit_fails_with_kind_rate_limit(
        server: ScriptedServer) -> None:
    server.script(*[error(429, "Rate limit reached for gpt-4o-mini: 3 RPM",
                          **{"retry-after": "0"}) for _ in range(5)])
    exc = await failure(router(server, max_retries=2))
    assert exc.kind == "rate_limit" and exc.status == 429 and exc.attempts == 3
    assert len(server.requests) == 3
    assert str(exc).startswith("rate limited by openai/gpt-4o-mini (429) after 3 attempts: "
                               "Rate limit reached for gpt-4o-mini: 3 RPM; lower [run] "
                               "concurrency")


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_retried(server: ScriptedServer, status: int) -> None:
    server.script(error(status, "The server had an error while processing your request."),
                  Reply(content="recovered"))
    completion = await router(server).complete("implementer", MESSAGES)
    assert completion.message["content"] == "recovered" and len(server.requests) == 2


async def test_server_errors_until_the_limit_fail_with_kind_server(
        server: ScriptedServer) -> None:
    server.script(*[error(503, "overloaded, try later") for _ in range(3)])
    exc = await failure(router(server, max_retries=2))
    assert exc.kind == "server" and exc.status == 503 and len(server.requests) == 3
    assert "openai/gpt-4o-mini's provider failed (503) after 3 attempts: overloaded, " \
           "try later" in str(exc)


def free_port() -> int:
    """A port on 127.0.0.1 that nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_refused_connection_is_retried_then_named() -> None:
    base = f"http://127.0.0.1:{free_port()}/v1"
    retries: list[tuple[Any, ...]] = []
    exc = await failure(router(api_base=base, max_retries=2), retries)
    assert exc.kind == "connection" and exc.status is None and exc.attempts == 3
    assert len(retries) == 2
    assert str(exc).startswith(f"cannot reach openai/gpt-4o-mini at {base} after 3 attempts: ")
    assert "check [models] api_base and the network" in str(exc)


@pytest.fixture
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """An endpoint that accepts connections and never answers; yields its URL and the
    connections it accepted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.05)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1", accepted
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


async def test_timeout_is_retried_then_named(
        silent_server: tuple[str, list[socket.socket]]) -> None:
    base, accepted = silent_server
    exc = await failure(router(api_base=base, max_retries=1, timeout=0.3))
    assert exc.kind == "timeout" and exc.status is None and exc.attempts == 2
    assert len(accepted) == 2
    assert "openai/gpt-4o-mini did not answer within 0.3 s after 2 attempts" in str(exc)
    assert "raise [models] timeout_seconds" in str(exc)


# -- fallbacks ----------------------------------------------------------------------------------

def fallback_router(server: ScriptedServer) -> ModelRouter:
    return router(server, model="openai/gpt-4o",
                  fallbacks={"openai/gpt-4o": ["openai/gpt-4o-mini"]})


@pytest.mark.parametrize("reply", [
    provider_error(404, "The model `gpt-4o` does not exist.", code="model_not_found"),
    provider_error(400, "This model's maximum context length is 128000 tokens.",
                   code="context_length_exceeded"),
], ids=["unknown_model", "context_length"])
async def test_a_fallback_is_tried_at_once_when_another_model_may_work(
        server: ScriptedServer, reply: Reply) -> None:
    server.script(reply, Reply(content="from the fallback"))
    completion = await fallback_router(server).complete("implementer", MESSAGES)
    assert completion.model == "openai/gpt-4o-mini"
    assert [r["model"] for r in server.requests] == ["gpt-4o", "gpt-4o-mini"]


@pytest.mark.parametrize("reply", [
    provider_error(401, "Incorrect API key provided.", code="invalid_api_key"),
    provider_error(400, "Invalid 'messages[0].role'.", code="invalid_value"),
], ids=["authentication", "bad_request"])
async def test_no_fallback_hides_a_refused_key_or_a_malformed_request(
        server: ScriptedServer, reply: Reply) -> None:
    server.script(reply, Reply(content="a fallback would get this"))
    exc = await failure(fallback_router(server))
    assert [r["model"] for r in server.requests] == ["gpt-4o"]
    assert exc.model == "openai/gpt-4o" and exc.failures == ()


async def test_when_every_model_fails_the_message_names_each_cause(
        server: ScriptedServer) -> None:
    server.script(provider_error(400, "This model's maximum context length is 8192 tokens.",
                                 code="context_length_exceeded"),
                  provider_error(404, "The model `gpt-4o-mini` does not exist.",
                                 code="model_not_found"))
    exc = await failure(fallback_router(server))
    assert exc.kind == "unknown_model" and exc.model == "openai/gpt-4o-mini"
    assert [f.kind for f in exc.failures] == ["context_length", "unknown_model"]
    text = str(exc)
    assert text.startswith("openai/gpt-4o and its fallbacks failed: 1) the conversation is "
                           "too long for openai/gpt-4o's context window (400)")
    assert "2) unknown model openai/gpt-4o-mini (404): The model `gpt-4o-mini` does not " \
           "exist" in text


# -- a missing key: caught before the run, and never sent ------------------------------------

OPENAI_CONFIG = f"""\
[models]
planner = "{MODEL}"
implementer = "{MODEL}"
reviewer = "{MODEL}"
"""


@pytest.fixture
def no_openai_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE",
                 KEY_ENV):
        monkeypatch.delenv(name, raising=False)


def config(tmp_path: Path, text: str) -> FactoryConfig:
    return parse_config(text, tmp_path / ".factory.toml")


async def test_a_missing_key_is_reported_before_the_run_and_never_sent(
        tmp_path: Path, server: ScriptedServer, no_openai_key: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_models(config(tmp_path, OPENAI_CONFIG)) == [
        "models.planner, models.implementer, models.reviewer = 'openai/gpt-4o-mini': "
        "OPENAI_API_KEY is not set; export it, or set [models] api_key_env to the variable "
        "that holds the key"]
    # Point the provider's default endpoint at the scripted server: had the call gone out,
    # the server would have seen it.
    monkeypatch.setenv("OPENAI_BASE_URL", server.api_base)
    bare = ModelRouter(roles={"implementer": MODEL}, max_retries=3, backoff_base=0.01)
    retries: list[tuple[Any, ...]] = []
    exc = await failure(bare, retries)
    assert exc.kind == "credentials" and exc.status is None and retries == []
    assert server.requests == []
    assert str(exc).startswith("no API key for openai/gpt-4o-mini: Missing credentials")
    assert str(exc).endswith("; OPENAI_API_KEY is not set; export it, or set [models] "
                             "api_key_env to the variable that holds the key")
    # The same router with the key set reaches that very server.
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    server.script(Reply(content="now it works"))
    completion = await bare.complete("implementer", MESSAGES)
    assert completion.message["content"] == "now it works" and len(server.requests) == 1


async def test_a_named_key_variable_that_is_unset_is_named(
        server: ScriptedServer, no_openai_key: None) -> None:
    exc = await failure(ModelRouter(roles={"implementer": MODEL}, api_base=server.api_base,
                                    api_key_env=KEY_ENV))
    assert exc.kind == "credentials" and server.requests == []
    assert str(exc).endswith(f"; export {KEY_ENV} (named by [models] api_key_env)")


async def test_a_model_no_provider_serves_fails_without_a_request(
        server: ScriptedServer) -> None:
    exc = await failure(router(server, model="gpt-nonsense"))
    assert exc.kind == "unknown_model" and exc.status is None and server.requests == []
    assert str(exc).startswith("litellm does not know which provider serves gpt-nonsense: "
                               "LLM Provider NOT provided")


# -- the preflight ----------------------------------------------------------------------------

@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection or name lookup during the test fails loudly."""
    from agents.models import litellm_module

    litellm_module()  # importing litellm is not the check's doing

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"the preflight used the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def write_trajectory(root: Path, name: str, doc: dict[str, Any] | str) -> Path:
    path = root / ".factory" / "replay" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_replay_model_with_its_trajectory_is_fine(tmp_path: Path, offline: None) -> None:
    write_trajectory(tmp_path, "demo", {"format": "factory-replay/1", "agents": {}})
    assert check_models(config(tmp_path, "")) == []


def test_replay_model_without_its_trajectory(tmp_path: Path, offline: None) -> None:
    path = tmp_path / ".factory" / "replay" / "demo.json"
    assert check_models(config(tmp_path, "")) == [
        "models.planner, models.implementer, models.reviewer = 'replay/demo': its trajectory "
        f"{path} does not exist; record one there, or choose another model"]


def test_replay_model_with_a_broken_trajectory(tmp_path: Path, offline: None) -> None:
    path = write_trajectory(tmp_path, "demo", {"format": "something-else"})
    [problem] = check_models(config(tmp_path, ""))
    assert problem.endswith(f"its trajectory cannot be played: {path}: expected \"format\": "
                            "\"factory-replay/1\"")


def test_a_replay_only_preflight_does_not_import_litellm(tmp_path: Path) -> None:
    write_trajectory(tmp_path, "demo", {"format": "factory-replay/1", "agents": {}})
    code = ("import sys\nfrom pathlib import Path\nfrom agents.config import parse_config\n"
            "from agents.models import check_models\n"
            f"root = Path({str(tmp_path)!r})\n"
            "assert check_models(parse_config('', root / '.factory.toml')) == []\n"
            "print('litellm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "False"


LOCAL_SERVER = f"""\
[models]
planner = "openai/my-local-model"
implementer = "openai/my-local-model"
reviewer = "replay/demo"
api_base = "http://127.0.0.1:8000/v1"
api_key_env = "{KEY_ENV}"
"""


def test_api_base_with_a_named_key_variable_that_is_unset(
        tmp_path: Path, offline: None, no_openai_key: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    write_trajectory(tmp_path, "demo", {"format": "factory-replay/1", "agents": {}})
    assert check_models(config(tmp_path, LOCAL_SERVER)) == [
        "models.planner, models.implementer = 'openai/my-local-model': FACTORY_TEST_KEY is "
        "not set ([models] api_key_env names it); export it with the key for "
        "http://127.0.0.1:8000/v1"]
    # Set, it is enough: a model litellm does not list is fine behind an api_base.
    monkeypatch.setenv(KEY_ENV, "local-key")
    assert check_models(config(tmp_path, LOCAL_SERVER)) == []


def test_api_base_without_a_key_still_needs_the_providers_variable(
        tmp_path: Path, offline: None, no_openai_key: None) -> None:
    text = LOCAL_SERVER.replace(f'api_key_env = "{KEY_ENV}"\n', "")
    write_trajectory(tmp_path, "demo", {"format": "factory-replay/1", "agents": {}})
    assert check_models(config(tmp_path, text)) == [
        "models.planner, models.implementer = 'openai/my-local-model': OPENAI_API_KEY is not "
        "set; export it (any value, if the server at [models] api_base checks none), or set "
        "[models] api_key_env to the variable that holds the key"]


def test_unknown_model_without_api_base(tmp_path: Path, offline: None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    text = OPENAI_CONFIG.replace(f'reviewer = "{MODEL}"', 'reviewer = "openai/gpt-9"') \
        .replace(f'planner = "{MODEL}"', 'planner = "gpt-nonsense"')
    assert check_models(config(tmp_path, text)) == [
        "models.planner = 'gpt-nonsense': litellm does not know which provider serves it; "
        "write it as provider/name, e.g. 'openai/gpt-4o-mini' (or 'openai/<name>' for an "
        "OpenAI-compatible server at [models] api_base)",
        "models.reviewer = 'openai/gpt-9': litellm does not know this model (openai has no "
        "'gpt-9' in litellm's model map); check the name, or set [models] api_base to a "
        "server that serves it",
    ]


def test_fallbacks_are_checked_too(tmp_path: Path, offline: None,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    text = OPENAI_CONFIG + f'fallbacks = {{ "{MODEL}" = ["openai/gpt-4o", "replay/spare"] }}\n'
    spare = tmp_path / ".factory" / "replay" / "spare.json"
    assert check_models(config(tmp_path, text)) == [
        "models.fallbacks['openai/gpt-4o-mini'][1] = 'replay/spare': its trajectory "
        f"{spare} does not exist; record one there, or choose another model"]


def test_a_good_configuration_has_no_problems(tmp_path: Path, offline: None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    write_trajectory(tmp_path, "demo", {"format": "factory-replay/1", "agents": {}})
    text = OPENAI_CONFIG.replace(f'reviewer = "{MODEL}"', 'reviewer = "replay/demo"') \
        + '[run]\nconcurrency = 2\n'
    assert check_models(config(tmp_path, text)) == []


def test_the_review_gates_models_are_checked_when_the_queue_runs_it(
        tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    reviewers = '[gates.review]\nmodels = ["openai/gpt-9", "replay/critic", "openai/gpt-9"]\n'
    critic = tmp_path / ".factory" / "replay" / "critic.json"
    on = OPENAI_CONFIG + '[queue]\ngates = ["boundaries", "review"]\n\n' + reviewers
    assert check_models(config(tmp_path, on)) == [
        "gates.review.models[0], gates.review.models[2] = 'openai/gpt-9': litellm does not "
        "know this model (openai has no 'gpt-9' in litellm's model map); check the name, or "
        "set [models] api_base to a server that serves it",
        "gates.review.models[1] = 'replay/critic': its trajectory "
        f"{critic} does not exist; record one there, or choose another model"]
    # Not in [queue] gates: no reviewer runs, so nothing of theirs can stop a run.
    assert check_models(config(tmp_path, OPENAI_CONFIG + reviewers)) == []


# -- through the agent: its ending names the cause --------------------------------------------

async def test_an_agent_ended_by_a_401_says_why(store: Store, server: ScriptedServer,
                                                repo: Path) -> None:
    server.script(provider_error(401, "Incorrect API key provided: sk-test***abcd.",
                                 code="invalid_api_key"))
    sandbox = await NoneBackend().open(SandboxContext(worktree=repo, agent_id="s.t.1"))
    agent = AgentRunner(
        store=store, router=router(server), agent_id="s.t.1", spec_id="s", task_id="t",
        role="implementer", key="s/t",
        tools=ToolContext(worktree=repo, sandbox=sandbox, test_command="true"),
        opening=[{"role": "system", "content": "work"}, {"role": "user", "content": "task"}],
        limits=AgentLimits(),
    )
    result = await agent.run()
    expected = ("model error: authentication failed for openai/gpt-4o-mini (401): Incorrect "
                f"API key provided: sk-test***abcd; check the key in ${KEY_ENV}")
    assert result.status == "failed" and result.summary == expected
    assert len(server.requests) == 1
    events = [e.event for e in await store.read_events(agent_id="s.t.1")]
    notices = [e for e in events if isinstance(e, ev.Notice)]
    assert [(n.level, n.message) for n in notices] == [("error", expected)]
    finished = [e for e in events if isinstance(e, ev.AgentFinished)]
    assert [(f.status, f.summary) for f in finished] == [("failed", expected)]
    assert not [e for e in events if isinstance(e, ev.ModelRetry)]
