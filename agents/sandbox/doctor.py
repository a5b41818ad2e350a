"""`factory doctor`: which sandbox backends work on this machine, tried for real, and the
trust boundary in force (who the engine is, who commands run as, how worktree paths are
opened, the quotas)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agents.beneath import openat2_available
from agents.errors import FactoryError
from agents.sandbox.base import Limits, RunResult, Sandbox, SandboxContext, SandboxError
from agents.sandbox.identity import command_user, resolve
from agents.sandbox.quota import POLL_SECONDS

if TYPE_CHECKING:
    from agents.config import FactoryConfig


@dataclass(frozen=True)
class BackendStatus:
    name: str
    works: bool
    reason: str


async def _probe(sandbox: Sandbox, tmp: Path) -> tuple[RunResult, RunResult]:
    """A write in the worktree and a look at the network devices and at who the command is,
    then close the sandbox."""
    try:
        ok = await sandbox.run(["sh", "-c", "echo ok > probe && cat probe"], cwd=tmp)
        net = await sandbox.run(
            ["sh", "-c", "echo $(cat /proc/net/dev | wc -l) $(id -u):$(id -g)"], cwd=tmp)
    finally:
        await sandbox.close()
    return ok, net


def _net_and_user(net: RunResult) -> tuple[str, str]:
    lines, _, user = net.stdout.strip().partition(" ")
    return lines, user or "?"


def _config() -> FactoryConfig:
    """The configuration `.factory.toml` here gives, so the doctor checks what a run would
    use (the defaults where there is none, or it does not load)."""
    from agents.config import FactoryConfig, load_config
    from agents.errors import FactoryError

    path = Path.cwd() / ".factory.toml"
    if path.exists():
        try:
            return load_config(path)
        except FactoryError:
            pass
    return FactoryConfig()


async def _try_bwrap() -> BackendStatus:
    from agents.sandbox.bwrap import BwrapBackend

    try:
        backend = BwrapBackend(Limits(wall_seconds=20), run_as=resolve(_config().sandbox.run_as))
    except (SandboxError, FactoryError) as exc:
        return BackendStatus("bwrap", False, str(exc))
    with tempfile.TemporaryDirectory(prefix="factory-doctor-") as tmp:
        sandbox = await backend.open(SandboxContext(worktree=Path(tmp), agent_id="doctor"))
        ok, net = await _probe(sandbox, Path(tmp))
    if not ok.ok or ok.stdout.strip() != "ok":
        return BackendStatus("bwrap", False, f"a probe command failed: {ok.stderr.strip()}")
    lines, user = _net_and_user(net)
    return BackendStatus("bwrap", True, f"bubblewrap at {shutil.which('bwrap')}; commands ran "
                         f"as uid:gid {user}; writable worktree, no network ({lines} lines of "
                         "/proc/net/dev), pids and memory cgroups")


def _configured_image() -> str | None:
    """The image `.factory.toml` here names, so the doctor checks what a run would use."""
    return _config().sandbox.image or None


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
                                    client=client, run_as=resolve(_config().sandbox.run_as))
            sandbox = await backend.open(SandboxContext(worktree=Path(tmp),
                                                        agent_id="doctor"))
        except DockerUnavailable as exc:
            return BackendStatus("docker", False, f"dockerd {version} answers, but {exc}")
        ok, net = await _probe(sandbox, Path(tmp))
    if not ok.ok or ok.stdout.strip() != "ok":
        return BackendStatus("docker", False, f"a probe command in {image} failed: "
                             f"{(ok.detail or ok.stderr).strip()}")
    kind = "host toolchain" if backend.host_toolchain else "its own toolchain"
    lines, user = _net_and_user(net)
    return BackendStatus("docker", True, f"dockerd {version}; image {image} ({kind}); "
                         f"commands ran as uid:gid {user}; writable worktree, no network "
                         f"({lines} lines of /proc/net/dev), pids and memory limits")


def trust() -> list[tuple[str, str]]:
    """The trust boundary in force here, as (what, how) lines."""
    config = _config()
    sb = config.sandbox
    engine = f"uid {os.geteuid()}, gid {os.getegid()}" + \
        (" (root)" if os.geteuid() == 0 else "")
    try:
        run_as = resolve(sb.run_as)
    except FactoryError as exc:
        commands = f"cannot start: {exc}"
    else:
        who = command_user(run_as)
        commands = (f"uid {who.uid}, gid {who.gid} (bwrap and docker; [sandbox] run_as = "
                    f"{sb.run_as!r}); the none backend runs them as the engine")
        if run_as is None and os.geteuid() == 0:
            commands += " (root!)"
    paths = ("openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV"
             if openat2_available() else
             "component by component with O_NOFOLLOW (this kernel has no openat2)")
    quota = (f"{sb.quota_disk_mb} MB and {sb.quota_files:,} files per worktree (scratch "
             f"space too), {sb.quota_write_mb:g} MB per write; checked on every write, "
             f"every {POLL_SECONDS:g} s during a command and after it")
    return [("engine runs as", engine), ("commands run as", commands),
            ("worktree paths opened by", paths), ("quotas", quota)]


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
