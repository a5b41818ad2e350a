"""The `none` backend: commands run as plain host processes in the worktree.

Only chosen when the configuration names it. It still applies the wall-clock and output
limits and scrubs the environment, but it confines nothing: the engine says so loudly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from agents.sandbox.base import Limits, RunResult, SandboxContext, checked
from agents.sandbox.env import scrubbed_env
from agents.sandbox.process import run_process


class NoneSandbox:
    name = "none"

    def __init__(self, ctx: SandboxContext, limits: Limits) -> None:
        self.ctx = ctx
        self.limits = limits

    async def run(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        limits: Limits | None = None,
    ) -> RunResult:
        merged = scrubbed_env(self.ctx.env_allow, extra=env)
        meter = self.ctx.meter
        result = await run_process(argv, cwd, merged, limits or self.limits, timeout,
                                   meter=meter)
        return await checked(result, meter)

    async def close(self) -> None:
        return None


class NoneBackend:
    name = "none"
    confines = False
    run_as = None  # confines nothing: commands run as the engine's own user

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()

    async def open(self, ctx: SandboxContext) -> NoneSandbox:
        return NoneSandbox(ctx, self.limits)
