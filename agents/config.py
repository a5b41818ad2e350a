"""`.factory.toml` → validated pydantic models, with errors that name file, line and key.

Unknown keys are errors (a typo must not silently become a default), and every message says
what was expected and what was found. Values are written back with tomlkit so that a
person's comments survive.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import tomlkit
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, Strict, ValidationError

from agents.errors import FactoryError, LocatedError

CONFIG_NAME = ".factory.toml"


class ConfigError(LocatedError):
    pass


# Numbers are strict: `usd = "20"`, `concurrency = true` or `runners = 2.0` is an error that
# names the key and what was expected, never a value quietly converted into one nobody wrote.
# Only the numbers: pydantic's lax mode converts nothing else this configuration holds.
Int = Annotated[int, Strict()]
Number = Annotated[float, Strict()]  # an integer is a number too: `usd = 20` is fine


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelsConfig(_Section):
    planner: str = "replay/demo"
    implementer: str = "replay/demo"
    reviewer: str = "replay/demo"
    fallbacks: dict[str, list[str]] = {}
    api_base: str = ""
    api_key_env: str = ""
    max_retries: Int = Field(4, ge=0, le=20)
    timeout_seconds: Number = Field(120, gt=0)


class RunConfig(_Section):
    concurrency: Int = Field(4, ge=1, le=10_000)
    max_steps: Int = Field(40, ge=1)
    task_retries: Int = Field(1, ge=0, le=10)
    stuck_repeats: Int = Field(3, ge=2)
    stuck_idle_steps: Int = Field(12, ge=1)
    # How long an agent waits for a person to answer its question before the engine answers.
    question_timeout_seconds: Number = Field(600, gt=0)
    # How long a rejected or cancelled task's branch is kept for a person to inspect (or
    # retry) before `factory gc` deletes it.
    keep_rejected_hours: Number = Field(24, ge=0)


class BudgetLimit(_Section):
    tokens: Int | None = Field(None, ge=0)
    usd: Number | None = Field(None, ge=0)


class BudgetsConfig(_Section):
    run: BudgetLimit = BudgetLimit(tokens=2_000_000, usd=20.0)
    spec: BudgetLimit = BudgetLimit()
    agent: BudgetLimit = BudgetLimit()


class SandboxConfig(_Section):
    backend: Literal["auto", "bwrap", "docker", "none"] = "auto"
    image: str = ""
    env_allow: list[str] = []
    wall_seconds: Number = Field(300, gt=0)
    memory_mb: Int = Field(2048, ge=64)
    max_processes: Int = Field(256, ge=8)
    output_bytes: Int = Field(1_000_000, ge=1024)
    # What one agent's worktree may hold, and the largest single write of its file tools.
    quota_disk_mb: Int = Field(2048, ge=1)
    quota_files: Int = Field(100_000, ge=100)
    quota_write_mb: Number = Field(10, gt=0)
    # Whom commands run as: "auto" (uid and gid 65533 when the engine is root, else the
    # engine's own user) or "UID:GID".
    run_as: str = "auto"


class RepoConfig(_Section):
    main_branch: str = "main"
    test_command: str = "python -m pytest -q"
    specs_dir: str = "specs"


class QueueConfig(_Section):
    # Which entries wait for a person before they land: "never", "high" (high risk only),
    # "medium" (medium and high) or "always".
    approval: Literal["never", "high", "medium", "always"] = "never"
    # How entries are tested on their way to main (agents/queue/chain.py): "serial" (one
    # at a time), "batch" (several entries in one test run, bisected when it fails),
    # "speculative" (each entry tested on top of the ones ahead, several at once) or
    # "speculative-batch" (batches, several at once, each on top of the ones ahead).
    mode: Literal["serial", "batch", "speculative", "speculative-batch"] = "speculative-batch"
    # Test runs at once, each in its own sandbox.
    runners: Int = Field(default=2, ge=1, le=64)
    # How many times a rejected entry goes back to its agent with the gate's findings (its
    # conversation continues; for a conflict, with the new main merged in) before the
    # rejection is final. 0: a rejection is final at once.
    resubmits: Int = Field(default=2, ge=0, le=10)
    # The gates an entry's merged tree meets before it is tested, in this order (agents/gates:
    # "boundaries", "overlap", "policy", "dependencies", "races", "review", or a name from
    # [gates.command]). The engine's own paths are always protected, whatever this says.
    gates: list[str] = ["boundaries", "overlap", "policy", "dependencies", "races"]


class PolicyGateConfig(_Section):
    # A folder of the user's own .rego policies, read from main's version of the repository
    # (never from the entry's branch); empty: the default policies only.
    folder: str = ""


class RacesGateConfig(_Section):
    # Entries that touch code using threads, asyncio, multiprocessing, sockets or databases
    # (judged from its imports), or paths matching `globs`, have their tests run this many
    # times in fresh sandboxes, each with its own order and seed; any failure denies.
    runs: Int = Field(default=9, ge=1, le=50)
    globs: list[str] = []
    # Every entry, whatever it touches.
    always: bool = False


class ReviewGateConfig(_Section):
    # Reviewer agents (the reviewer role) per entry, and the rule their votes meet:
    # "majority", "unanimous", or "K" (at least K approvals).
    reviewers: Int = Field(default=3, ge=1, le=9)
    rule: str = "majority"
    # Models to spread the reviewers over; empty: [models] reviewer for all of them.
    models: list[str] = []
    timeout_seconds: Number = Field(300, gt=0, le=3600)
    # How a reviewer that errors or times out counts: "reject", "approve" or "abstain".
    on_error: Literal["reject", "approve", "abstain"] = "reject"


class GatesConfig(_Section):
    policy: PolicyGateConfig = PolicyGateConfig()
    races: RacesGateConfig = RacesGateConfig()
    review: ReviewGateConfig = ReviewGateConfig()
    # Your own gates: name = a script in the repository, read from main and run in the
    # sandbox on the merged tree, that prints {"verdict": ..., "findings": [...]} as JSON.
    command: dict[str, str] = {}


class StoreConfig(_Section):
    path: str = ".factory/factory.db"


# What a person may be wanted for (agents/notify.py says when each counts).
NotifyEvent = Literal["question_asked", "queue_entered", "queue_paused", "tests_quarantined",
                      "run_finished"]


class NotifyConfig(_Section):
    # A shell command run in the repository for each notification, with the event as JSON
    # on its stdin (a desktop notifier, a chat webhook script); empty: none.
    command: str = ""
    # Which events ring attached consoles and run the command.
    events: list[NotifyEvent] = ["question_asked", "queue_entered", "queue_paused",
                                 "tests_quarantined", "run_finished"]
    # A command still running after this long is killed (and a notice says so).
    timeout_seconds: Number = Field(10, gt=0, le=600)


class FactoryConfig(_Section):
    models: ModelsConfig = ModelsConfig()
    run: RunConfig = RunConfig()
    budgets: BudgetsConfig = BudgetsConfig()
    sandbox: SandboxConfig = SandboxConfig()
    repo: RepoConfig = RepoConfig()
    queue: QueueConfig = QueueConfig()
    gates: GatesConfig = GatesConfig()
    store: StoreConfig = StoreConfig()
    notify: NotifyConfig = NotifyConfig()

    _root: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def root(self) -> Path:
        return self._root

    @property
    def store_path(self) -> Path:
        return (self._root / self.store.path).resolve()

    @property
    def specs_path(self) -> Path:
        return (self._root / self.repo.specs_dir).resolve()


def _describe_expected(error: dict[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    match kind:
        case "int_type" | "int_parsing" | "int_from_float":
            return "expected an integer"
        case "float_type" | "float_parsing":
            return "expected a number"
        case "string_type":
            return "expected a string"
        case "bool_type" | "bool_parsing":
            return "expected true or false"
        case "list_type":
            return "expected a list"
        case "dict_type" | "model_type" | "model_attributes_type":
            return "expected a table"
        case "literal_error":
            return f"expected one of {ctx.get('expected', '')}"
        case "greater_than_equal":
            return f"expected a value >= {ctx.get('ge')}"
        case "greater_than":
            return f"expected a value > {ctx.get('gt')}"
        case "less_than_equal":
            return f"expected a value <= {ctx.get('le')}"
        case _:
            return str(error["msg"]).lower()


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key -> line, for `[table]` headers and `key = value` lines."""
    lines: dict[str, int] = {}
    table = ""
    header = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\s\"]+?)\s*\]\s*(#.*)?$")
    assign = re.compile(r"^\s*([A-Za-z0-9_\-\"]+(?:\s*\.\s*[A-Za-z0-9_\-\"]+)*)\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        if m := header.match(line):
            table = re.sub(r"\s+", "", m.group(1)).replace('"', "")
            lines.setdefault(table, number)
        elif m := assign.match(line):
            key = re.sub(r"\s+", "", m.group(1)).replace('"', "")
            lines.setdefault(f"{table}.{key}" if table else key, number)
    return lines


def _locate(lines: dict[str, int], loc: tuple[Any, ...]) -> int | None:
    parts = [str(p) for p in loc]
    while parts:
        found = lines.get(".".join(parts))
        if found is not None:
            return found
        parts.pop()
    return None


def parse_config(text: str, path: Path) -> FactoryConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line = int(m.group(1)) if m else None
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise ConfigError(f"invalid TOML: {message}", path=path, line=line) from None
    try:
        config = FactoryConfig.model_validate(raw)
    except ValidationError as exc:
        lines = _key_lines(text)
        errors = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            key = ".".join(str(p) for p in loc)
            line = _locate(lines, loc)
            if error["type"] == "extra_forbidden":
                section = ".".join(str(p) for p in loc[:-1])
                model: Any = FactoryConfig
                for part in loc[:-1]:
                    model = model.model_fields[str(part)].annotation
                known = ", ".join(model.model_fields)
                where = f"[{section}]" if section else "the top level"
                message = f"unknown key {loc[-1]!r} in {where}; known keys: {known}"
            else:
                found = error.get("input")
                message = f"{_describe_expected(error)}, got {found!r}"
            errors.append(ConfigError(message, path=path, line=line, key=key))
        first = errors[0]
        if len(errors) > 1:
            first.message += "".join(f"\n{e}" for e in errors[1:])
        raise first from None
    config._root = path.parent.resolve()
    return config


def load_config(path: Path) -> FactoryConfig:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("no configuration file here (run `factory init` to write one)",
                          path=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=path) from None
    return parse_config(text, path)


def find_config(start: Path) -> Path | None:
    for folder in (start.resolve(), *start.resolve().parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


DEFAULT_CONFIG = """\
# Factory configuration. Every key is optional; the values shown are the defaults.
# Unknown keys are errors, so a typo never silently falls back to a default.

[models]
# litellm model names per role (any provider litellm knows, e.g. "openai/gpt-4o-mini").
# "replay/<name>" plays recorded trajectories from .factory/replay/<name>.json, offline.
planner = "replay/demo"
implementer = "replay/demo"
reviewer = "replay/demo"
# Models to try, in order, when one keeps failing: { "openai/gpt-4o" = ["openai/gpt-4o-mini"] }
fallbacks = {}
# An OpenAI-compatible endpoint (a proxy, a local server); empty means the provider default.
api_base = ""
# The NAME of the environment variable holding the API key (never the key itself).
api_key_env = ""
# Retries with exponential backoff on 429 and 5xx before falling back or failing.
max_retries = 4
timeout_seconds = 120

[run]
# Agents working at once. Raise it when your model's rate limit allows.
concurrency = 4
# Model calls one agent may make before it is stopped.
max_steps = 40
# Fresh attempts for a task whose agent failed or got stuck.
task_retries = 1
# The same tool call with the same arguments this many times in a row means stuck.
stuck_repeats = 3
# This many steps without any change to the worktree means stuck.
stuck_idle_steps = 12
# How long an agent waits for a person to answer its question (the console's inbox)
# before the engine answers for them. Runs nobody supervises (headless) answer at once.
question_timeout_seconds = 600
# How long a rejected or cancelled task's branch (factory/<spec>/<task>) is kept, for a
# person to inspect or retry, before `factory gc` deletes it.
keep_rejected_hours = 24

# Budgets stop agents before a call would exceed them. Omit a key for no limit.
[budgets.run]
tokens = 2000000
usd = 20.0

[budgets.spec]

[budgets.agent]

[sandbox]
# "auto" (bubblewrap when it works here), "bwrap", "docker", or "none" (unsandboxed: loud).
backend = "auto"
# Docker image for the docker backend.
image = ""
# Environment variables passed into sandboxes (everything else is scrubbed).
env_allow = []
wall_seconds = 300
memory_mb = 2048
max_processes = 256
output_bytes = 1000000
# Quotas per agent: bytes and files of its worktree (and scratch space), and the largest
# single write of a file tool. Over quota, the command stops and the agent is told.
quota_disk_mb = 2048
quota_files = 100000
quota_write_mb = 10
# Whom agents' commands and landing tests run as: "auto" (uid and gid 65533 when the engine
# runs as root, else the engine's own user) or "UID:GID".
run_as = "auto"

[repo]
main_branch = "main"
# What must pass before a branch lands, run in the sandbox on the merged tree.
test_command = "python -m pytest -q"
specs_dir = "specs"

[queue]
# Which branches wait for a person's approval before landing: "never", "high" (high-risk
# only), "medium" (medium and high) or "always". Headless runs with pending approvals wait.
approval = "never"
# How entries are tested on their way to main: "serial" (one at a time), "batch" (several
# in one test run, split when it fails), "speculative" (each on top of the ones ahead,
# several at once) or "speculative-batch" (batches, several at once).
mode = "speculative-batch"
# Test runs at once, each in its own sandbox.
runners = 2
# How many times a rejected entry goes back to its agent with the gate's findings before
# its rejection is final (0: at once).
resubmits = 2
# The gates an entry's merged tree meets before it is tested, in this order: "boundaries",
# "overlap" (the same lines as changes ahead, even where git merges them), "policy",
# "dependencies", "races", "review", or a name from [gates.command]. The engine's own
# paths (.factory/, .factory.toml) are protected whatever this says.
gates = ["boundaries", "overlap", "policy", "dependencies", "races"]

[gates.policy]
# A folder of your own .rego policies (OPA v1 syntax), always read from main's version of
# the repository, never from the entry's branch; empty: the default policies only.
folder = ""

[gates.races]
# Entries touching code that uses threads, asyncio, multiprocessing, sockets or databases
# (or paths matching `globs`; or every entry with `always`) run their tests this many
# times in fresh sandboxes, each with its own order and seed; any failure denies (9 runs
# catch a test failing 30% of the time 96% of the time; tests/bench/bench_gates.py).
runs = 9
globs = []
always = false

[gates.review]
# Reviewer agents per entry (when "review" is in [queue] gates) and the rule their votes
# meet: "majority", "unanimous" or "K" (at least K approvals).
reviewers = 3
rule = "majority"
# Models to spread the reviewers over; empty: [models] reviewer.
models = []
timeout_seconds = 300
# How a reviewer that errors or times out counts: "reject", "approve" or "abstain".
on_error = "reject"

[gates.command]
# Your own gates: name = "path/to/script", read from main and run in the sandbox on the
# merged tree; it prints {"verdict": "pass"|"warn"|"needs_approval"|"deny",
# "findings": [{"file": ..., "line": ..., "rule": ..., "message": ...}]} as JSON.

[store]
# The SQLite store (event log and projections); keep it out of git.
path = ".factory/factory.db"

[notify]
# When an agent asks a question, an entry waits for approval, the queue pauses, tests are
# quarantined or a run ends, attached consoles ring (and show a desktop notification where
# the terminal supports it), and this shell command runs in the repository with the event
# as JSON on its stdin, e.g. "notify-send Factory \"$(jq -r .message)\"". Empty: no command.
command = ""
# Which of those events notify.
events = ["question_asked", "queue_entered", "queue_paused", "tests_quarantined", "run_finished"]
# A command still running after this many seconds is killed; a notice says so.
timeout_seconds = 10
"""


def default_config_text() -> str:
    return DEFAULT_CONFIG


def init_project(root: Path) -> list[Path]:
    from agents.specs import EXAMPLE_SPEC

    root.mkdir(parents=True, exist_ok=True)
    config = root / CONFIG_NAME
    if config.exists():
        raise FactoryError(f"{config}: already exists; not overwriting it")
    written = [config]
    config.write_text(DEFAULT_CONFIG)
    specs = root / "specs"
    specs.mkdir(exist_ok=True)
    example = specs / "example.md"
    if not example.exists():
        example.write_text(EXAMPLE_SPEC)
        written.append(example)
    ignore = root / ".gitignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    if ".factory/" not in (line.strip() for line in lines):
        with ignore.open("a") as handle:
            if lines and lines[-1].strip():
                handle.write("\n") if not ignore.read_text().endswith("\n") else None
            handle.write(".factory/\n")
        written.append(ignore)
    return written


def save_value(path: Path, dotted_key: str, value: Any) -> None:
    """Set one value, keeping the file's comments and layout."""
    doc = tomlkit.parse(path.read_text()) if path.exists() else tomlkit.document()
    *tables, key = dotted_key.split(".")
    node: Any = doc
    for name in tables:
        if name not in node:
            node[name] = tomlkit.table()
        node = node[name]
    node[key] = value
    text = tomlkit.dumps(doc)
    parse_config(text, path)  # never write a file that would not load
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
