"""The agents' tools on a real worktree, with the plain subprocess backend."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from agents.sandbox.base import Limits, SandboxContext
from agents.sandbox.none import NoneBackend
from agents.tools import ToolContext, call_tool


@pytest.fixture
async def ctx(repo: Path) -> ToolContext:
    sandbox = await NoneBackend().open(SandboxContext(worktree=repo, agent_id="t"))
    return ToolContext(worktree=repo, sandbox=sandbox,
                       test_command="python -m unittest discover -s tests -q",
                       limits=Limits(wall_seconds=5, output_bytes=10_000))


async def test_read_with_offset_and_limit(ctx: ToolContext) -> None:
    out = await call_tool(ctx, "read_file", {"path": "calc/ops.py", "offset": 1, "limit": 1})
    assert out.content == "    return a + b\n" and not out.is_error


async def test_edit_must_match_exactly_once(ctx: ToolContext, repo: Path) -> None:
    twice = await call_tool(ctx, "edit_file", {"path": "calc/ops.py", "search": "return",
                                               "replace": "yield"})
    assert twice.is_error and "occurs 2 times" in twice.content
    missing = await call_tool(ctx, "edit_file", {"path": "calc/ops.py", "search": "nope",
                                                 "replace": "x"})
    assert missing.is_error and "occurs 0 times" in missing.content
    once = await call_tool(ctx, "edit_file", {"path": "calc/ops.py", "search": "a + b",
                                              "replace": "b + a"})
    assert once.changed and "return b + a" in (repo / "calc" / "ops.py").read_text()


async def test_write_reports_whether_anything_changed(ctx: ToolContext) -> None:
    first = await call_tool(ctx, "write_file", {"path": "new/deep/x.py", "content": "x = 1\n"})
    same = await call_tool(ctx, "write_file", {"path": "new/deep/x.py", "content": "x = 1\n"})
    assert first.changed and not same.changed


async def test_list_and_search_skip_git_metadata(ctx: ToolContext) -> None:
    listing = await call_tool(ctx, "list_files", {"path": ".", "pattern": "*.py"})
    files = listing.content.splitlines()
    assert "calc/ops.py" in files and not any(f.startswith(".git") for f in files)
    hits = await call_tool(ctx, "search_code", {"pattern": r"def (add|sub)"})
    assert hits.content.splitlines() == ["calc/ops.py:1: def add(a, b):",
                                         "calc/ops.py:5: def sub(a, b):"]
    bad = await call_tool(ctx, "search_code", {"pattern": "("})
    assert bad.is_error and "invalid regular expression" in bad.content


async def test_run_tests_and_commands_through_the_sandbox(ctx: ToolContext) -> None:
    tests = await call_tool(ctx, "run_tests", {})
    assert not tests.is_error and tests.content.startswith("exit code: 0")
    failing = await call_tool(ctx, "run", {"command": "echo out; echo err >&2; exit 3"})
    assert failing.is_error and "exit code: 3" in failing.content
    assert "out" in failing.content and "err" in failing.content


async def test_run_limits_are_reported(ctx: ToolContext) -> None:
    slow = await call_tool(ctx, "run", {"command": "sleep 30", "timeout": 0.5})
    assert slow.sandbox is not None and slow.sandbox.stop == "timeout"
    flood = await call_tool(ctx, "run", {"command": "yes | head -c 1000000"})
    assert flood.sandbox is not None and flood.sandbox.stop == "output_cap"
    assert "stopped: output_cap" in flood.content


async def test_run_does_not_leak_engine_secrets(ctx: ToolContext,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    out = await call_tool(ctx, "run", {"command": "env"})
    assert "sk-secret-value" not in out.content and "HOME=/tmp" in out.content


async def test_links_pointing_outside_are_refused(ctx: ToolContext, repo: Path,
                                                  tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    os.symlink(secret, repo / "link.txt")
    os.link(secret, repo / "hard.txt")
    for name in ("link.txt", "hard.txt"):
        read = await call_tool(ctx, "read_file", {"path": name})
        assert read.is_error and "top secret" not in read.content
        write = await call_tool(ctx, "write_file", {"path": name, "content": "pwned"})
        assert write.is_error
    assert secret.read_text() == "top secret"


async def test_arguments_are_validated(ctx: ToolContext) -> None:
    out = await call_tool(ctx, "read_file", {"path": "calc/ops.py", "offset": -1})
    assert out.is_error and "offset: Input should be greater than or equal to 0" in out.content
    out = await call_tool(ctx, "finish", "[1, 2]")
    assert out.is_error and "must be a JSON object" in out.content


async def test_output_floods_end_and_are_reported(ctx: ToolContext) -> None:
    """A flood stops at the cap and the command is reported done, every time (a pipe left
    full once kept a killed command from ever being reported)."""
    async with asyncio.timeout(60):
        for _ in range(60):
            flood = await call_tool(ctx, "run", {"command": "yes | head -c 5000000"})
            assert flood.sandbox is not None and flood.sandbox.stop == "output_cap"
