"""`factory doctor`: which sandbox backends work on this machine, tried for real."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agents.sandbox.base import Limits, SandboxContext, SandboxError


@dataclass(frozen=True)
class BackendStatus:
    name: str
    works: bool
    reason: str


async def _try_bwrap() -> BackendStatus:
    from agents.sandbox.bwrap import BwrapBackend

    try:
        backend = BwrapBackend(Limits(wall_seconds=20))
    except SandboxError as exc:
        return BackendStatus("bwrap", False, str(exc))
    with tempfile.TemporaryDirectory(prefix="factory-doctor-") as tmp:
        sandbox = await backend.open(SandboxContext(worktree=Path(tmp), agent_id="doctor"))
        try:
            ok = await sandbox.run(["sh", "-c", "echo ok > probe && cat probe"], cwd=Path(tmp))
            net = await sandbox.run(["sh", "-c", "cat /proc/net/dev | wc -l"], cwd=Path(tmp))
        finally:
            await sandbox.close()
    if not ok.ok or ok.stdout.strip() != "ok":
        return BackendStatus("bwrap", False, f"a probe command failed: {ok.stderr.strip()}")
    return BackendStatus("bwrap", True, f"bubblewrap at {shutil.which('bwrap')}; writable "
                         f"worktree, no network ({net.stdout.strip()} lines of /proc/net/dev), "
                         "pids and memory cgroups")


def _docker() -> BackendStatus:
    return BackendStatus("docker", False, "not built yet")


def diagnose(only: list[str] | None = None) -> list[BackendStatus]:
    found = []
    if only is None or "bwrap" in only:
        found.append(asyncio.run(_try_bwrap()) if not _in_loop() else
                     BackendStatus("bwrap", False, "diagnose() called inside an event loop"))
    if only is None or "docker" in only:
        found.append(_docker())
    if only is None or "none" in only:
        found.append(BackendStatus("none", True, "always available; confines nothing"))
    return found


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
