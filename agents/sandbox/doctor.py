"""`factory doctor`: which sandbox backends work on this machine, tried for real."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agents.sandbox.base import Limits, RunResult, Sandbox, SandboxContext, SandboxError


@dataclass(frozen=True)
class BackendStatus:
    name: str
    works: bool
    reason: str


async def _probe(sandbox: Sandbox, tmp: Path) -> tuple[RunResult, RunResult]:
    """A write in the worktree and a look at the network devices, then close the sandbox."""
    try:
        ok = await sandbox.run(["sh", "-c", "echo ok > probe && cat probe"], cwd=tmp)
        net = await sandbox.run(["sh", "-c", "cat /proc/net/dev | wc -l"], cwd=tmp)
    finally:
        await sandbox.close()
    return ok, net


async def _try_bwrap() -> BackendStatus:
    from agents.sandbox.bwrap import BwrapBackend

    try:
        backend = BwrapBackend(Limits(wall_seconds=20))
    except SandboxError as exc:
        return BackendStatus("bwrap", False, str(exc))
    with tempfile.TemporaryDirectory(prefix="factory-doctor-") as tmp:
        sandbox = await backend.open(SandboxContext(worktree=Path(tmp), agent_id="doctor"))
        ok, net = await _probe(sandbox, Path(tmp))
    if not ok.ok or ok.stdout.strip() != "ok":
        return BackendStatus("bwrap", False, f"a probe command failed: {ok.stderr.strip()}")
    return BackendStatus("bwrap", True, f"bubblewrap at {shutil.which('bwrap')}; writable "
                         f"worktree, no network ({net.stdout.strip()} lines of /proc/net/dev), "
                         "pids and memory cgroups")


def _configured_image() -> str | None:
    """The image `.factory.toml` here names, so the doctor checks what a run would use."""
    from agents.config import load_config
    from agents.errors import FactoryError

    path = Path.cwd() / ".factory.toml"
    if not path.exists():
        return None
    try:
        return load_config(path).sandbox.image or None
    except FactoryError:
        return None


async def _try_docker(image: str | None) -> BackendStatus:
    """Daemon, image, then a real container: each step says why it failed, if it does."""
    try:
        from agents.sandbox.docker import LOCAL_IMAGE, DockerBackend, DockerUnavailable, connect
    except ImportError as exc:
        return BackendStatus("docker", False, f"the docker SDK is not installed ({exc})")
    image = image or _configured_image() or LOCAL_IMAGE
    try:
        client = await asyncio.to_thread(connect, 10.0)
        version = (await asyncio.to_thread(client.version)).get("Version", "?")
    except DockerUnavailable as exc:
        return BackendStatus("docker", False, str(exc))
    with tempfile.TemporaryDirectory(prefix="factory-doctor-") as tmp:
        try:
            backend = DockerBackend(Limits(wall_seconds=20), image=image, root=Path(tmp),
                                    client=client)
            sandbox = await backend.open(SandboxContext(worktree=Path(tmp),
                                                        agent_id="doctor"))
        except DockerUnavailable as exc:
            return BackendStatus("docker", False, f"dockerd {version} answers, but {exc}")
        ok, net = await _probe(sandbox, Path(tmp))
    if not ok.ok or ok.stdout.strip() != "ok":
        return BackendStatus("docker", False, f"a probe command in {image} failed: "
                             f"{(ok.detail or ok.stderr).strip()}")
    kind = "host toolchain" if backend.host_toolchain else "its own toolchain"
    return BackendStatus("docker", True, f"dockerd {version}; image {image} ({kind}); "
                         f"writable worktree, no network ({net.stdout.strip()} lines of "
                         "/proc/net/dev), pids and memory limits")


def diagnose(only: list[str] | None = None, image: str | None = None) -> list[BackendStatus]:
    """`image` defaults to the one .factory.toml here names, else the local image."""
    found = []
    if only is None or "bwrap" in only:
        found.append(asyncio.run(_try_bwrap()) if not _in_loop() else
                     BackendStatus("bwrap", False, "diagnose() called inside an event loop"))
    if only is None or "docker" in only:
        found.append(asyncio.run(_try_docker(image)) if not _in_loop() else
                     BackendStatus("docker", False, "diagnose() called inside an event loop"))
    if only is None or "none" in only:
        found.append(BackendStatus("none", True, "always available; confines nothing"))
    return found


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
