"""The one interface every sandbox backend implements.

The engine only ever calls `Sandbox.run`; which backend sits behind it is a configuration
choice. A backend is opened once per agent (`SandboxBackend.open`) because some backends
(docker) keep a long-lived container per agent so that each command costs little.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from agents.sandbox.quota import DiskMeter, Over

if TYPE_CHECKING:
    from agents.sandbox.identity import RunAs

StopReason = Literal["exit", "timeout", "memory", "output_cap", "denied", "quota"]


@dataclass(frozen=True)
class Limits:
    """Resource ceilings for one command. Defaults suit a unit-test run of a small project."""

    wall_seconds: float = 300.0
    memory_mb: int = 2048
    max_processes: int = 256
    output_bytes: int = 1_000_000


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None
    stdout: str
    stderr: str
    duration: float
    stop: StopReason = "exit"
    detail: str = ""
    over: Over | None = None  # which quota a "quota" stop is about

    @property
    def ok(self) -> bool:
        return self.stop == "exit" and self.exit_code == 0


@dataclass
class SandboxContext:
    """What a backend needs to know about the agent it confines."""

    worktree: Path
    agent_id: str
    # Paths inside the worktree the agent must never write (git metadata, factory config).
    read_only: list[Path] = field(default_factory=list)
    env_allow: list[str] = field(default_factory=list)
    # The agent's quota (shared with its file tools), checked during and after each command.
    meter: DiskMeter | None = None


class Sandbox(Protocol):
    name: str

    async def run(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        limits: Limits | None = None,
    ) -> RunResult: ...

    async def close(self) -> None: ...


class SandboxBackend(Protocol):
    name: str
    # Whom commands run as when it is not the engine's own user (see identity.py).
    run_as: RunAs | None

    async def open(self, ctx: SandboxContext) -> Sandbox: ...


class SandboxError(Exception):
    """A backend that cannot start at all (missing binary, no daemon, bad image)."""


async def checked(result: RunResult, meter: DiskMeter | None,
                  touched: set[Path] | None = None) -> RunResult:
    """The result of a command that ran, with the quota measured after it (only the paths
    it touched, when those are known): a command that left the worktree over its quota is
    reported as stopped for it, whatever its exit."""
    if meter is None or result.stop == "quota":
        return result
    over = await meter.update_async(touched)
    if over is None:
        return result
    return RunResult(result.exit_code, result.stdout, result.stderr, result.duration,
                     "quota", over.message, over)
