"""Tool implementations and the dispatcher.

Arguments are validated with pydantic; a malformed or unknown call becomes an error message
for the model, never an exception in the agent. Commands (`run`, `run_tests`) go through the
sandbox; file tools stay in the engine's process and open every path beneath the worktree's
directory handle (agents/beneath.py: no link followed, regular files only, writes through a
temporary file of the engine's own), within the agent's quota (agents/sandbox/quota.py).
Walks and searches run on a worker thread with bounds on entries, bytes and time, so no
tree an agent leaves can stall the engine's loop.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from agents.beneath import (
    Beneath,
    PathDenied,
    WalkCut,
    kind_of,
    normalise,
    open_regular,
    read_regular,
)
from agents.sandbox.base import Limits, RunResult, Sandbox
from agents.sandbox.quota import DiskMeter, Over, QuotaExceeded

MAX_READ = 200_000
MAX_EDIT = 10 * 1024**2
MAX_RESULT = 20_000
# What the engine keeps for itself: never listed or written; `.factory.toml` may be read.
PROTECTED_NAMES = {".git", ".factory.toml", ".factory"}
SKIP_DIRS = {".git", ".factory", "__pycache__", ".venv", "node_modules", ".pytest_cache"}
# Bounds of one listing or search: entries looked at, bytes read, seconds spent.
WALK_ENTRIES = 200_000
SEARCH_BYTES = 64 * 1024**2
WALK_SECONDS = 10.0


@dataclass
class ToolContext:
    worktree: Path
    sandbox: Sandbox
    test_command: str = "python -m pytest -q"
    limits: Limits = field(default_factory=Limits)
    # The agent's quota, shared with its sandbox; None: no quota (the planner's clean view).
    meter: DiskMeter | None = None
    # Who owns what the file tools create (uid, gid): the user the agent's commands run as.
    owner: tuple[int, int] | None = None


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
    # Set when a write or a command went over the agent's quota.
    limit: Over | None = None


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


def _rel(ctx: ToolContext, raw: str, *, for_write: bool = False) -> str:
    rel = normalise(raw, ctx.worktree)
    top = rel.split("/", 1)[0]
    if top in PROTECTED_NAMES and (for_write or top != ".factory.toml"):
        raise PathDenied(f"{raw}: {top} is managed by the engine")
    return rel


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


async def _read_file(ctx: ToolContext, a: ReadFile) -> ToolOutcome:
    rel = _rel(ctx, a.path)
    with Beneath(ctx.worktree) as tree:
        lines = _text(tree.read(rel, MAX_READ, a.path)).splitlines(keepends=True)
    end = a.offset + a.limit if a.limit else None
    return ToolOutcome(_clip("".join(lines[a.offset:end])))


def _write(ctx: ToolContext, rel: str, raw: str, data: bytes) -> bool:
    """Write through the worktree's handle within the quota; whether the content changed."""
    meter = ctx.meter
    if meter is not None:
        meter.check_write(len(data))
    with Beneath(ctx.worktree) as tree:
        return tree.write(rel, data, raw=raw, owner=ctx.owner,
                          check=meter.charge if meter is not None else None).changed


async def _write_file(ctx: ToolContext, a: WriteFile) -> ToolOutcome:
    data = a.content.encode()
    changed = _write(ctx, _rel(ctx, a.path, for_write=True), a.path, data)
    return ToolOutcome(f"wrote {a.path} ({len(a.content)} characters)", changed=changed)


async def _edit_file(ctx: ToolContext, a: EditFile) -> ToolOutcome:
    rel = _rel(ctx, a.path, for_write=True)
    # A file as large as one write may be (it is written back whole).
    limit = ctx.meter.quota.write_bytes if ctx.meter is not None else MAX_EDIT
    with Beneath(ctx.worktree) as tree:
        text = _text(tree.read(rel, limit, a.path))
    count = text.count(a.search)
    if count != 1:
        return ToolOutcome(
            f"{a.path}: the search text occurs {count} times; it must occur exactly once",
            is_error=True,
        )
    _write(ctx, rel, a.path, text.replace(a.search, a.replace, 1).encode())
    return ToolOutcome(f"edited {a.path}", changed=a.search != a.replace)


def _skip(name: str) -> bool:
    return name in SKIP_DIRS


def _folder(tree: Beneath, rel: str, raw: str) -> None:
    info = tree.lstat(rel)
    if info is None:
        raise PathDenied(f"{raw}: no such folder")
    if not stat.S_ISDIR(info.st_mode):
        raise PathDenied(f"{raw}: not a folder (it is {kind_of(info.st_mode)})")


def _list(ctx: ToolContext, rel: str, raw: str, pattern: str | None) -> ToolOutcome:
    found: list[str] = []
    note = ""
    with Beneath(ctx.worktree) as tree:
        _folder(tree, rel, raw)
        try:
            for path, _, entry in tree.walk(rel, skip=_skip, max_entries=WALK_ENTRIES,
                                            deadline=time.monotonic() + WALK_SECONDS):
                if entry.is_dir(follow_symlinks=False) or entry.name in PROTECTED_NAMES:
                    continue
                if pattern and not fnmatch(entry.name, pattern):
                    continue
                if entry.is_symlink():
                    path += " (symbolic link)"
                elif not entry.is_file(follow_symlinks=False):
                    path += f" ({kind_of(entry.stat(follow_symlinks=False).st_mode)})"
                found.append(path)
        except WalkCut as cut:
            note = f"\n... (listing cut: {cut.reason})"
    return ToolOutcome(_clip("\n".join(found) + note if found else "(no files)" + note))


async def _list_files(ctx: ToolContext, a: ListFiles) -> ToolOutcome:
    rel = _rel(ctx, a.path)
    return await asyncio.to_thread(_list, ctx, rel, a.path, a.pattern)


def _search(ctx: ToolContext, regex: re.Pattern[str], rel: str, raw: str) -> ToolOutcome:
    hits: list[str] = []
    budget = SEARCH_BYTES
    deadline = time.monotonic() + WALK_SECONDS

    def scan(path: str, data: bytes) -> bool:
        """Look through one file; False once enough was found or time is up."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return True  # binary
        for number, line in enumerate(text.splitlines(), start=1):
            if regex.search(line[:4000]):
                hits.append(f"{path}:{number}: {line.strip()[:200]}")
                if len(hits) >= 200:
                    return False
            if number % 1000 == 0 and time.monotonic() > deadline:
                return False
        return True

    with Beneath(ctx.worktree) as tree:
        info = tree.lstat(rel)
        if info is None:
            raise PathDenied(f"{raw}: no such file or folder")
        if not stat.S_ISDIR(info.st_mode):
            scan(rel, tree.read(rel, MAX_READ, raw))
            return ToolOutcome("\n".join(hits) or "(no matches)")
        try:
            for path, fd, entry in tree.walk(rel, skip=_skip, max_entries=WALK_ENTRIES,
                                             deadline=deadline):
                if not entry.is_file(follow_symlinks=False) or entry.name in PROTECTED_NAMES:
                    continue
                try:
                    file = open_regular(fd, entry.name, path)
                except PathDenied:
                    continue  # swapped for something else meanwhile, or hard-linked
                try:
                    data = read_regular(file, MAX_READ, path)
                except PathDenied:
                    continue  # too large
                finally:
                    os.close(file)
                budget -= len(data)
                if not scan(path, data):
                    break
                if budget < 0 or time.monotonic() > deadline:
                    hits.append("... (search cut: it read as much as one search may)")
                    break
        except WalkCut as cut:
            hits.append(f"... (search cut: {cut.reason})")
    if len(hits) >= 200:
        hits.append("... (more matches cut)")
    return ToolOutcome("\n".join(hits) or "(no matches)")


async def _search_code(ctx: ToolContext, a: SearchCode) -> ToolOutcome:
    try:
        regex = re.compile(a.pattern)
    except re.error as exc:
        return ToolOutcome(f"invalid regular expression: {exc}", is_error=True)
    rel = _rel(ctx, a.path)
    return await asyncio.to_thread(_search, ctx, regex, rel, a.path)


async def _sandboxed(ctx: ToolContext, command: str, timeout: float | None) -> ToolOutcome:
    result = await ctx.sandbox.run(["sh", "-c", command], cwd=ctx.worktree, timeout=timeout,
                                   limits=ctx.limits)
    return ToolOutcome(
        _result_text(result),
        is_error=not result.ok,
        sandbox=result if result.stop not in ("exit", "quota") else None,
        command=command,
        limit=result.over,
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
    except QuotaExceeded as exc:
        return ToolOutcome(f"{name} refused: {exc}; delete files to make room",
                           is_error=True, limit=exc.over)
    except (OSError, UnicodeError) as exc:
        return ToolOutcome(f"{name} failed: {exc}", is_error=True)
    return outcome
