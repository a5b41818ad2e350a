"""The one interface every sandbox backend implements.

The engine only ever calls `Sandbox.run`; which backend sits behind it is a configuration
choice. A backend is opened once per agent (`SandboxBackend.open`) because some backends
(docker) keep a long-lived container per agent so that each command costs little.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

StopReason = Literal["exit", "timeout", "memory", "output_cap", "denied"]


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

    async def open(self, ctx: SandboxContext) -> Sandbox: ...


class SandboxError(Exception):
    """A backend that cannot start at all (missing binary, no daemon, bad image)."""
