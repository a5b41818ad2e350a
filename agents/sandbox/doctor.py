"""`factory doctor`: which sandbox backends work on this machine, tried for real, the trust
boundary in force (who the engine is, who commands run as, how worktree paths are opened,
the quotas), and whether the repository's test command passes on main in its sandbox: a
repository whose tests cannot pass there lands nothing, however good the agents' work."""

from __future__ import annotations

import asyncio
import os
import re
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


NONE = BackendStatus("none", True, "always available; confines nothing")


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


def _config(config: FactoryConfig | None = None) -> FactoryConfig:
    """`config`, else the configuration `.factory.toml` here gives, so the doctor checks what
    a run would use (the defaults where there is none, or it does not load)."""
    if config is not None:
        return config
    from agents.config import FactoryConfig, load_config
    from agents.errors import FactoryError

    path = Path.cwd() / ".factory.toml"
    if path.exists():
        try:
            return load_config(path)
        except FactoryError:
            pass
    return FactoryConfig()


async def _try_bwrap(config: FactoryConfig) -> BackendStatus:
    from agents.sandbox.bwrap import BwrapBackend

    try:
        backend = BwrapBackend(Limits(wall_seconds=20), run_as=resolve(config.sandbox.run_as))
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


async def _try_docker(image: str | None, config: FactoryConfig) -> BackendStatus:
    """Daemon, image, then a real container: each step says why it failed, if it does."""
    try:
        from agents.sandbox.docker import LOCAL_IMAGE, DockerBackend, DockerUnavailable, connect
    except ImportError as exc:
        return BackendStatus("docker", False, f"the docker SDK is not installed ({exc})")
    image = image or config.sandbox.image or LOCAL_IMAGE
    try:
        client = await asyncio.to_thread(connect, 10.0)
        version = (await asyncio.to_thread(client.version)).get("Version", "?")
    except DockerUnavailable as exc:
        return BackendStatus("docker", False, str(exc))
    with tempfile.TemporaryDirectory(prefix="factory-doctor-") as tmp:
        try:
            backend = DockerBackend(Limits(wall_seconds=20), image=image, root=Path(tmp),
                                    client=client, run_as=resolve(config.sandbox.run_as))
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


def trust(config: FactoryConfig | None = None) -> list[tuple[str, str]]:
    """The trust boundary in force here, as (what, how) lines."""
    sb = _config(config).sandbox
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


async def backends(config: FactoryConfig | None = None, only: list[str] | None = None,
                   image: str | None = None) -> list[BackendStatus]:
    """Each backend (or those in `only`) tried for real with `config`'s identity and image
    (`image` in place of the image it names, else the local image)."""
    config = _config(config)
    found = []
    if only is None or "bwrap" in only:
        found.append(await _try_bwrap(config))
    if only is None or "docker" in only:
        found.append(await _try_docker(image, config))
    if only is None or "none" in only:
        found.append(NONE)
    return found


def diagnose(only: list[str] | None = None, image: str | None = None) -> list[BackendStatus]:
    """`backends` for code that has no event loop running (inside one, it says so instead of
    trying), with the configuration .factory.toml here gives."""
    if not _in_loop():
        return asyncio.run(backends(None, only, image))
    found = [BackendStatus(name, False, "diagnose() called inside an event loop")
             for name in ("bwrap", "docker") if only is None or name in only]
    return [*found, NONE] if only is None or "none" in only else found


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@dataclass(frozen=True)
class TestCheck:
    """The test command's run on main: `reason` says why it did not pass ("" when it did)."""

    command: str
    commit: str
    backend: str
    passed: bool
    reason: str = ""
    output: str = ""
    failing: tuple[str, ...] = ()


# The shell's "command not found" (127) and "found but not executable" (126).
_NOT_THERE = {127: "is not present in the sandbox", 126: "cannot be executed in the sandbox"}


async def check_tests(config: FactoryConfig) -> TestCheck:
    """`[repo] test_command` on main's head, run as the landing step runs it (its own code,
    agents/landing.py): in a fresh sandbox of the configured backend, with its limits and
    quota, over a worktree of main whose git metadata is read-only. Nothing is recorded."""
    from agents.engine import make_sandbox_backend, sandbox_limits, sandbox_quota
    from agents.gitcmd import GitError, git
    from agents.landing import TestedLanding
    from agents.private import exclude_factory, private_dir
    from agents.workspace import Workspace

    command, root = config.repo.test_command, config.root
    try:
        ws = Workspace(root, root / ".factory" / "worktrees", config.repo.main_branch)
    except FactoryError as exc:
        return TestCheck(command, "", config.sandbox.backend, False, str(exc))
    try:
        try:
            commit = ws.main_head()
            backend = make_sandbox_backend(config)
        except (FactoryError, SandboxError) as exc:
            return TestCheck(command, "", config.sandbox.backend, False, str(exc))
        private_dir(root / ".factory")
        exclude_factory(ws.common_dir)
        scratch = root / ".factory" / "landing"  # where a run sweeps what a crash left
        lander = TestedLanding(ws, backend, command, sandbox_limits(config), scratch,
                               _record_nothing, sandbox_quota(config))
        scratch.mkdir(parents=True, exist_ok=True)
        path = scratch / f"doctor-{os.getpid()}-{commit[:12]}"
        try:
            async with ws.add_lock:
                await git("worktree", "add", "-q", "--detach", str(path), commit, cwd=root)
        except GitError as exc:
            return TestCheck(command, commit, backend.name, False,
                             f"cannot check out {config.repo.main_branch}: "
                             f"{exc.stderr.strip()}")
        try:
            passed, output, reason, failing = await lander._run_tests(path, "doctor")
        finally:
            await ws.remove_async(path)
    finally:
        ws.close()
    if not passed:
        reason = _explained(reason, command)
    return TestCheck(command, commit, backend.name, passed, reason, output, tuple(failing))


def _explained(reason: str, command: str) -> str:
    """The landing step's reason, with what an exit of 126 or 127 means here: the command
    (or the interpreter it starts, such as python) is missing from the sandbox, which is not
    the person's machine (docker runs the image's toolchain)."""
    code = re.search(r"\(exit code (\d+)\)", reason)
    said = _NOT_THERE.get(int(code.group(1))) if code else None
    if said is None:
        return reason
    return (f"{reason}; the command {command!r}, or the interpreter it starts, {said}: "
            "install it there (in the docker image, for the docker backend) or change "
            "[repo] test_command")


async def _record_nothing(_: object) -> None:
    """The doctor's test run is no landing: it records no events."""
