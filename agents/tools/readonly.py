"""The read-only subset of the tools, for agents that judge a tree they must not change.

A reviewer reads the queue's merged tree: the implementer's work, hostile ground, and the
very tree the queue goes on to test. It gets `read_file`, `list_files` and `search_code`
(beneath the tree's directory handle, agents/beneath.py: no link followed, regular files
only, bounded in entries, bytes and time) and nothing else. Offering only those names is not
enough: the registry's `call_tool` runs any tool it knows, offered or not, so a model that
names `write_file` anyway (a diff can tell it to) would write. `call_read_only` refuses
every other name before the registry sees it, and the context's sandbox runs no command.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agents.sandbox.base import Limits, RunResult
from agents.tools.registry import ToolContext, ToolOutcome, call_tool, tool_specs

READ_ONLY_TOOLS: tuple[str, ...] = ("read_file", "list_files", "search_code")


class NoCommands:
    """A sandbox that runs nothing: a read-only agent has no command to run."""

    name = "deny"

    async def run(self, argv: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None,
                  timeout: float | None = None, limits: Limits | None = None) -> RunResult:
        return RunResult(None, "", "commands are not available here", 0.0, "denied",
                         "this agent reads; it runs no command")

    async def close(self) -> None:
        return None


def read_only_context(tree: Path) -> ToolContext:
    """A tool context over `tree` in which only reads can happen."""
    return ToolContext(worktree=tree, sandbox=NoCommands(), test_command="")


def read_only_specs() -> list[dict[str, Any]]:
    return tool_specs(list(READ_ONLY_TOOLS))


async def call_read_only(ctx: ToolContext, name: str,
                         arguments: str | dict[str, Any]) -> ToolOutcome:
    """One read-only tool call; any other tool's name is an error for the model."""
    if name not in READ_ONLY_TOOLS:
        return ToolOutcome(f"{name!r} is not available here; the tools are "
                           f"{', '.join(READ_ONLY_TOOLS)} (read-only)", is_error=True)
    return await call_tool(ctx, name, arguments)
