"""The docker backend against a real daemon and real containers: results, limits,
isolation, and the container lifecycle (removed on close, swept at start)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest

from agents.errors import FactoryError
from agents.sandbox.base import Limits, SandboxContext
from agents.sandbox.docker import (
    LABEL_AGENT,
    LABEL_ROOT,
    DockerBackend,
    DockerSandbox,
    split_trailer,
)
from agents.sandbox.doctor import diagnose
from agents.sandbox.env import scrubbed_env
from agents.sandbox.select import make_backend
from tests.docker_support import docker_client, docker_image  # noqa: F401  (fixture)

LIMITS = Limits(wall_seconds=20, memory_mb=192, max_processes=64, output_bytes=100_000)


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    path = tmp_path / "wt"
    path.mkdir()
    (path / ".factory.toml").write_text("[run]\n")
    return path


@pytest.fixture
def backend(docker_image: str, tmp_path: Path) -> DockerBackend:  # noqa: F811
    made = make_backend("docker", limits=LIMITS, image=docker_image, root=tmp_path)
    assert isinstance(made, DockerBackend)
    return made


@pytest.fixture
async def sandbox(backend: DockerBackend, worktree: Path) -> AsyncIterator[DockerSandbox]:
    opened = await backend.open(SandboxContext(worktree=worktree, agent_id="agent-1",
                                               read_only=[worktree / ".factory.toml"]))
    try:
        yield opened
    finally:
        await opened.close()


def inspect(sandbox: DockerSandbox) -> dict:
    return docker_client().api.inspect_container(sandbox.container)


async def test_run_exit_codes_and_host_paths(sandbox: DockerSandbox, worktree: Path) -> None:
    ok = await sandbox.run(["sh", "-c", "pwd; echo out; echo err >&2; echo made > f.txt"],
                           cwd=worktree)
    assert ok.ok and ok.stop == "exit"
    # The worktree sits at its host path, so paths in tool output mean the same thing.
    assert ok.stdout == f"{worktree.resolve()}\nout\n" and ok.stderr == "err\n"
    assert (worktree / "f.txt").read_text() == "made\n"
    failed = await sandbox.run(["sh", "-c", "exit 3"], cwd=worktree)
    assert failed.exit_code == 3 and failed.stop == "exit" and not failed.ok
    # argv reaches the program as is: no shell in between re-reads it.
    echo = await sandbox.run(["echo", "a\\nb", "$HOME", "*"], cwd=worktree)
    assert echo.stdout == "a\\nb $HOME *\n"


async def test_a_missing_program_is_denied(sandbox: DockerSandbox, worktree: Path) -> None:
    result = await sandbox.run(["no-such-program", "x"], cwd=worktree)
    assert result.stop == "denied" and "no-such-program" in result.detail
    assert (await sandbox.run(["true"], cwd=worktree)).ok


async def test_a_cwd_that_does_not_exist_is_denied(sandbox: DockerSandbox,
                                                   worktree: Path) -> None:
    result = await sandbox.run(["true"], cwd=worktree / "missing")
    assert result.stop == "denied" and "docker exec failed" in result.detail


async def test_timeout_kills_the_command_and_what_it_started(sandbox: DockerSandbox,
                                                             worktree: Path) -> None:
    result = await sandbox.run(["sh", "-c", "sleep 31 & sleep 32"], cwd=worktree, timeout=1)
    assert result.stop == "timeout" and result.exit_code is None
    assert result.duration < 6
    left = await sandbox.run(["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"],
                             cwd=worktree)
    assert "sleep 31" not in left.stdout and "sleep 32" not in left.stdout


async def test_processes_left_behind_are_killed_when_a_command_ends(
        sandbox: DockerSandbox, worktree: Path) -> None:
    started = await sandbox.run(["sh", "-c", "sleep 33 > /dev/null 2>&1 &"], cwd=worktree)
    assert started.ok
    left = await sandbox.run(["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"],
                             cwd=worktree)
    assert "sleep 33" not in left.stdout


async def test_a_cancelled_command_does_not_run_on(sandbox: DockerSandbox,
                                                   worktree: Path) -> None:
    job = asyncio.ensure_future(sandbox.run(["sh", "-c", "sleep 34"], cwd=worktree))
    await asyncio.sleep(0.5)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    left = await sandbox.run(["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"],
                             cwd=worktree)
    assert left.ok and "sleep 34" not in left.stdout


async def test_read_only_paths_hold_through_a_symlinked_worktree(backend: DockerBackend,
                                                                 tmp_path: Path,
                                                                 worktree: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    seen = link / "wt"
    sandbox = await backend.open(SandboxContext(worktree=seen, agent_id="linked",
                                                read_only=[seen / ".factory.toml"]))
    try:
        result = await sandbox.run(["sh", "-c", "echo y >> .factory.toml; echo x > ok.txt"],
                                   cwd=seen)
    finally:
        await sandbox.close()
    assert "Read-only file system" in result.stderr
    assert (worktree / ".factory.toml").read_text() == "[run]\n"
    assert (worktree / "ok.txt").read_text() == "x\n"


async def test_output_cap(sandbox: DockerSandbox, worktree: Path) -> None:
    result = await sandbox.run(["sh", "-c", "head -c 500000000 /dev/zero | tr '\\0' x"],
                               cwd=worktree)
    assert result.stop == "output_cap" and result.exit_code is None
    assert len(result.stdout) + len(result.stderr) <= LIMITS.output_bytes
    assert result.duration < 10
    # Just under the cap is fine, and the wrapper's status line is not counted against it.
    under = await sandbox.run(["sh", "-c", f"head -c {LIMITS.output_bytes - 10} /dev/zero"],
                              cwd=worktree)
    assert under.ok and len(under.stdout) == LIMITS.output_bytes - 10 and under.stderr == ""


async def test_memory_limit(sandbox: DockerSandbox, worktree: Path) -> None:
    result = await sandbox.run(
        ["python3", "-c", "x = bytearray(512 * 1024 ** 2); print('ALLOCATED')"], cwd=worktree)
    assert result.stop == "memory" and "192 MB" in result.detail
    assert "ALLOCATED" not in result.stdout
    small = await sandbox.run(["python3", "-c", "x = bytearray(32 * 1024 ** 2); print('ok')"],
                              cwd=worktree)
    assert small.ok and small.stdout == "ok\n"
    config = inspect(sandbox)["HostConfig"]
    assert config["Memory"] == config["MemorySwap"] == 192 * 1024 ** 2


async def test_a_memory_kill_of_a_child_is_reported_too(sandbox: DockerSandbox,
                                                        worktree: Path) -> None:
    result = await sandbox.run(
        ["sh", "-c", "python3 -c 'x = bytearray(512 * 1024 ** 2)'; echo survived"],
        cwd=worktree)
    assert result.stop == "memory" and "survived" in result.stdout


async def test_process_limit(sandbox: DockerSandbox, worktree: Path) -> None:
    result = await sandbox.run(["sh", "-c", "for i in $(seq 200); do sleep 2 & done; wait"],
                               cwd=worktree)
    assert "Cannot fork" in result.stderr or "fork" in result.stderr.lower()
    assert inspect(sandbox)["HostConfig"]["PidsLimit"] == LIMITS.max_processes
    assert (await sandbox.run(["echo", "alive"], cwd=worktree)).stdout == "alive\n"


async def test_network_none(sandbox: DockerSandbox, worktree: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        result = await sandbox.run(
            ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', "
             f"{port}), timeout=2); print('CONNECTED')"], cwd=worktree)
        devices = await sandbox.run(["cat", "/proc/net/dev"], cwd=worktree)
    finally:
        server.close()
    assert "CONNECTED" not in result.stdout and result.exit_code != 0
    interfaces = [line.split(":")[0].strip() for line in devices.stdout.splitlines()[2:]]
    assert interfaces == ["lo"]
    assert inspect(sandbox)["HostConfig"]["NetworkMode"] == "none"


async def test_only_the_worktree_is_writable(sandbox: DockerSandbox, worktree: Path) -> None:
    result = await sandbox.run(
        ["sh", "-c", "touch /x; touch /usr/x; touch /etc/x; echo y >> .factory.toml; "
         "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; touch /tmp/x && echo TMP"],
        cwd=worktree)
    assert result.stderr.count("Read-only file system") == 4
    assert "CapEff:\t0000000000000000" in result.stdout and "NoNewPrivs:\t1" in result.stdout
    assert "TMP" in result.stdout
    assert (worktree / ".factory.toml").read_text() == "[run]\n"
    config = inspect(sandbox)["HostConfig"]
    assert config["ReadonlyRootfs"] and config["CapDrop"] == ["ALL"]
    writable = [m["Destination"] for m in inspect(sandbox)["Mounts"] if m["RW"]]
    assert writable == [str(worktree.resolve())]


async def test_environment_is_scrubbed_like_bwrap(sandbox: DockerSandbox, worktree: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    result = await sandbox.run(["env"], cwd=worktree, env={"EXTRA": "1"})
    keys = {line.split("=", 1)[0] for line in result.stdout.splitlines()}
    # bwrap's --chdir sets PWD as well.
    assert keys == set(scrubbed_env(extra={"EXTRA": "1"})) | {"PWD"}
    assert "sk-secret" not in result.stdout


async def test_container_is_labelled_and_removed_on_close(backend: DockerBackend,
                                                          worktree: Path) -> None:
    sandbox = await backend.open(SandboxContext(worktree=worktree, agent_id="agent/7"))
    labels = inspect(sandbox)["Config"]["Labels"]
    assert labels[LABEL_AGENT] == "agent/7" and labels[LABEL_ROOT] == str(backend.root)
    assert backend.leftovers() == [sandbox.container]
    await sandbox.close()
    assert backend.leftovers() == []
    with pytest.raises(docker.errors.NotFound):
        docker_client().api.inspect_container(sandbox.container)
    closed = await sandbox.run(["true"], cwd=worktree)
    assert closed.stop == "denied"


async def test_sweep_removes_what_a_previous_run_left(docker_image: str,  # noqa: F811
                                                      tmp_path: Path, worktree: Path) -> None:
    first = DockerBackend(LIMITS, image=docker_image, root=tmp_path / "repo")
    other = DockerBackend(LIMITS, image=docker_image, root=tmp_path / "other-repo")
    # Opened and never closed: what an engine that crashed leaves running.
    crashed = [await first.open(SandboxContext(worktree=worktree, agent_id=f"a{i}"))
               for i in range(2)]
    unrelated = await other.open(SandboxContext(worktree=worktree, agent_id="b"))
    try:
        restarted = DockerBackend(LIMITS, image=docker_image, root=tmp_path / "repo")
        assert sorted(restarted.leftovers()) == sorted(s.container for s in crashed)
        assert await restarted.sweep() == 2
        assert restarted.leftovers() == []
        # Another repository's agents are none of this run's business.
        assert other.leftovers() == [unrelated.container]
    finally:
        await unrelated.close()
        for sandbox in crashed:
            await sandbox.close()


async def test_a_killed_container_is_started_again(sandbox: DockerSandbox,
                                                   worktree: Path) -> None:
    docker_client().api.kill(sandbox.container)
    result = await sandbox.run(["echo", "back"], cwd=worktree)
    assert result.ok and result.stdout == "back\n"


def test_trailer_is_taken_only_from_the_end() -> None:
    nonce = "factory-0123456789abcdef"
    text, trailer = split_trailer(f"x {nonce} ran 0 0 0\nmore\n".encode(), nonce)
    assert trailer is None and text.endswith(b"more\n")
    text, trailer = split_trailer(f"err\n{nonce} ran 4 1 2\n".encode(), nonce)
    assert text == b"err\n" and trailer is not None
    assert (trailer.exit_code, trailer.oom_before, trailer.oom_after) == (4, 1, 2)


def test_errors_say_what_to_do(docker_image: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    with pytest.raises(FactoryError, match=r"\[sandbox\] image"):
        make_backend("docker", limits=LIMITS)
    with pytest.raises(FactoryError, match="docker pull factory-absent:1"):
        make_backend("docker", limits=LIMITS, image="factory-absent:1")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(FactoryError, match="dockerd --bridge=none"):
        make_backend("docker", limits=LIMITS, image=docker_image)
    status = diagnose(only=["docker"], image=docker_image)[0]
    assert not status.works and "does not answer" in status.reason


def test_doctor_reports_a_working_docker(docker_image: str) -> None:  # noqa: F811
    status = diagnose(only=["docker"], image=docker_image)[0]
    assert status.works, status.reason
    assert "host toolchain" in status.reason and "no network" in status.reason
    missing = diagnose(only=["docker"], image="factory-absent:1")[0]
    assert not missing.works and "not on this machine" in missing.reason
