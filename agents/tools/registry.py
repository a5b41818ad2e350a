"""Tool implementations and the dispatcher.

Arguments are validated with pydantic; a malformed or unknown call becomes an error message
for the model, never an exception in the agent. Commands (`run`, `run_tests`) go through the
sandbox; file tools stay in-process and confine themselves (see paths.py).
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from agents.sandbox.base import Limits, RunResult, Sandbox
from agents.tools.paths import PROTECTED_NAMES, PathDenied, resolve_inside

MAX_READ = 200_000
MAX_RESULT = 20_000
SKIP_DIRS = {".git", ".factory", "__pycache__", ".venv", "node_modules", ".pytest_cache"}


@dataclass
class ToolContext:
    worktree: Path
    sandbox: Sandbox
    test_command: str = "python -m pytest -q"
    limits: Limits = field(default_factory=Limits)


@dataclass
class ToolOutcome:
    content: str
    is_error: bool = False
    changed: bool = False
    finished: bool = False
    summary: str = ""
    # Set when a sandboxed command was denied or cut short.
    sandbox: RunResult | None = None
    command: str = ""


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReadFile(_Args):
    """Read a text file of the worktree."""

    path: str = Field(description="Path relative to the worktree root")
    offset: int = Field(0, ge=0, description="First line to return (0-based)")
    limit: int | None = Field(None, ge=1, description="How many lines at most")


class WriteFile(_Args):
    """Create or overwrite a file with the given content."""

    path: str
    content: str


class EditFile(_Args):
    """Replace an exact piece of text in a file (it must occur exactly once)."""

    path: str
    search: str = Field(min_length=1)
    replace: str


class ListFiles(_Args):
    """List files below a folder of the worktree."""

    path: str = "."
    pattern: str | None = Field(None, description="Glob on the file name, e.g. *.py")


class SearchCode(_Args):
    """Search file contents with a regular expression."""

    pattern: str = Field(min_length=1)
    path: str = "."


class Run(_Args):
    """Run a shell command in the worktree, inside the sandbox."""

    command: str = Field(min_length=1)
    timeout: float | None = Field(None, gt=0, le=3600)


class RunTests(_Args):
    """Run the project's test command in the worktree."""


class Finish(_Args):
    """Declare the task done; the engine then commits the worktree."""

    summary: str = Field(min_length=1)


_Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class Ask(_Args):
    """Ask the person supervising the run a question, and wait for the answer. Ask only
    about a decision the spec leaves open and the code cannot settle. When nobody can
    answer, the engine says so at once: then decide yourself and state your assumption in
    the finish summary."""

    question: _Text = Field(max_length=2000)
    options: list[Annotated[_Text, Field(max_length=200)]] = Field(
        default_factory=list, max_length=10,
        description="Answers the person may pick from (they may also write their own)")


def _clip(text: str, limit: int = MAX_RESULT) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... [{len(text) - limit} more characters cut]"


def _result_text(result: RunResult) -> str:
    head = f"exit code: {result.exit_code}" if result.stop == "exit" else \
        f"stopped: {result.stop} ({result.detail})"
    return _clip(f"{head}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}")


async def _read_file(ctx: ToolContext, a: ReadFile) -> ToolOutcome:
    path = resolve_inside(ctx.worktree, a.path)
    if not path.is_file():
        return ToolOutcome(f"{a.path}: no such file", is_error=True)
    if path.stat().st_size > MAX_READ:
        return ToolOutcome(f"{a.path}: file larger than {MAX_READ} bytes", is_error=True)
    lines = path.read_text("utf-8", "replace").splitlines(keepends=True)
    end = a.offset + a.limit if a.limit else None
    return ToolOutcome(_clip("".join(lines[a.offset:end])))


async def _write_file(ctx: ToolContext, a: WriteFile) -> ToolOutcome:
    path = resolve_inside(ctx.worktree, a.path, for_write=True)
    old = path.read_text("utf-8", "replace") if path.is_file() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.factory-tmp")
    tmp.write_text(a.content)
    os.replace(tmp, path)
    return ToolOutcome(f"wrote {a.path} ({len(a.content)} characters)", changed=old != a.content)


async def _edit_file(ctx: ToolContext, a: EditFile) -> ToolOutcome:
    path = resolve_inside(ctx.worktree, a.path, for_write=True)
    if not path.is_file():
        return ToolOutcome(f"{a.path}: no such file", is_error=True)
    text = path.read_text("utf-8", "replace")
    count = text.count(a.search)
    if count != 1:
        return ToolOutcome(
            f"{a.path}: the search text occurs {count} times; it must occur exactly once",
            is_error=True,
        )
    path.write_text(text.replace(a.search, a.replace, 1))
    return ToolOutcome(f"edited {a.path}", changed=a.search != a.replace)


def _walk(root: Path, start: Path) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(start):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name in PROTECTED_NAMES:
                continue
            found.append(str((Path(dirpath) / name).relative_to(root)))
    return found


async def _list_files(ctx: ToolContext, a: ListFiles) -> ToolOutcome:
    start = resolve_inside(ctx.worktree, a.path)
    if not start.is_dir():
        return ToolOutcome(f"{a.path}: not a folder", is_error=True)
    root = Path(os.path.realpath(ctx.worktree))
    files = _walk(root, start)
    if a.pattern:
        from fnmatch import fnmatch

        files = [f for f in files if fnmatch(Path(f).name, a.pattern)]
    return ToolOutcome(_clip("\n".join(files) or "(no files)"))


async def _search_code(ctx: ToolContext, a: SearchCode) -> ToolOutcome:
    try:
        regex = re.compile(a.pattern)
    except re.error as exc:
        return ToolOutcome(f"invalid regular expression: {exc}", is_error=True)
    start = resolve_inside(ctx.worktree, a.path)
    root = Path(os.path.realpath(ctx.worktree))
    hits: list[str] = []
    for rel in _walk(root, start) if start.is_dir() else [str(start.relative_to(root))]:
        file = root / rel
        if file.is_symlink() or file.stat().st_size > MAX_READ:
            continue
        try:
            text = file.read_text("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if regex.search(line):
                hits.append(f"{rel}:{number}: {line.strip()[:200]}")
                if len(hits) >= 200:
                    return ToolOutcome("\n".join(hits) + "\n... (more matches cut)")
    return ToolOutcome("\n".join(hits) or "(no matches)")


async def _sandboxed(ctx: ToolContext, command: str, timeout: float | None) -> ToolOutcome:
    result = await ctx.sandbox.run(["sh", "-c", command], cwd=ctx.worktree, timeout=timeout,
                                   limits=ctx.limits)
    return ToolOutcome(
        _result_text(result),
        is_error=not result.ok,
        sandbox=result if result.stop != "exit" else None,
        command=command,
    )


async def _run(ctx: ToolContext, a: Run) -> ToolOutcome:
    return await _sandboxed(ctx, a.command, a.timeout)


async def _run_tests(ctx: ToolContext, a: RunTests) -> ToolOutcome:
    return await _sandboxed(ctx, ctx.test_command, None)


async def _finish(ctx: ToolContext, a: Finish) -> ToolOutcome:
    return ToolOutcome("finished", finished=True, summary=a.summary)


async def _ask(ctx: ToolContext, a: Ask) -> ToolOutcome:
    # The agent's loop answers `ask` itself (it knows who is asking); reaching here means
    # the caller has nobody to put the question to.
    return ToolOutcome("nobody can be asked here: decide yourself and state your assumption "
                       "in the finish summary", is_error=True)


ToolFn = Callable[[ToolContext, Any], Awaitable[ToolOutcome]]
TOOLS: dict[str, tuple[type[_Args], ToolFn]] = {
    "read_file": (ReadFile, _read_file),
    "write_file": (WriteFile, _write_file),
    "edit_file": (EditFile, _edit_file),
    "list_files": (ListFiles, _list_files),
    "search_code": (SearchCode, _search_code),
    "run": (Run, _run),
    "run_tests": (RunTests, _run_tests),
    "finish": (Finish, _finish),
    "ask": (Ask, _ask),
}


_SPEC_CACHE: dict[tuple[str, ...] | None, list[dict[str, Any]]] = {}


def tool_specs(names: list[str] | None = None) -> list[dict[str, Any]]:
    """OpenAI-style function specs, generated from the argument models (one schema source)."""
    key = tuple(names) if names is not None else None
    cached = _SPEC_CACHE.get(key)
    if cached is None:
        cached = _SPEC_CACHE[key] = _build_specs(names)
    return cached


def _build_specs(names: list[str] | None) -> list[dict[str, Any]]:
    specs = []
    for name, (model, _) in TOOLS.items():
        if names is not None and name not in names:
            continue
        schema = model.model_json_schema()
        schema.pop("title", None)
        specs.append({"type": "function", "function": {
            "name": name, "description": inspect.cleandoc(model.__doc__ or ""),
            "parameters": schema,
        }})
    return specs


TOOL_SPECS = tool_specs()


def _validation_message(name: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(arguments)"
        parts.append(f"{loc}: {err['msg']}")
    return f"invalid arguments for {name}: " + "; ".join(parts)


def parse_arguments(name: str, arguments: str | dict[str, Any]) -> _Args | ToolOutcome:
    """A tool call's validated arguments, or the error outcome that goes back to the model."""
    entry = TOOLS.get(name)
    if entry is None:
        return ToolOutcome(
            f"unknown tool {name!r}; available tools: {', '.join(TOOLS)}", is_error=True
        )
    model = entry[0]
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return ToolOutcome(f"arguments for {name} are not valid JSON: {exc}", is_error=True)
    else:
        parsed = arguments
    if not isinstance(parsed, dict):
        return ToolOutcome(f"arguments for {name} must be a JSON object", is_error=True)
    try:
        return model.model_validate(parsed)
    except ValidationError as exc:
        return ToolOutcome(_validation_message(name, exc), is_error=True)


async def call_tool(ctx: ToolContext, name: str, arguments: str | dict[str, Any]) -> ToolOutcome:
    """Run one tool call; every failure is returned as an error outcome for the model."""
    args = parse_arguments(name, arguments)
    if isinstance(args, ToolOutcome):
        return args
    fn = TOOLS[name][1]
    try:
        outcome = await fn(ctx, args)
    except PathDenied as exc:
        return ToolOutcome(f"denied: {exc}", is_error=True)
    except (OSError, UnicodeError) as exc:
        return ToolOutcome(f"{name} failed: {exc}", is_error=True)
    return outcome
