"""Hostile commands, each run as an agent's `run` tool call through every real sandbox
backend (bubblewrap and docker), each blocked on both, and the host checked afterwards."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents.sandbox.base import Limits, SandboxContext
from agents.sandbox.select import make_backend
from agents.tools import ToolContext, ToolOutcome, call_tool
from tests.conftest import PROJECT, git, make_repo

# Every real backend: each hostile command must be blocked on all of them.
BACKENDS = ["bwrap", "docker"]
SECRET = "TOP-SECRET-4242"


@dataclass
class Arena:
    ctx: ToolContext
    repo: Path
    worktree: Path
    outside: Path
    secret: Path


@pytest.fixture(params=BACKENDS)
async def arena(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Arena]:
    repo = make_repo(tmp_path / "repo", {**PROJECT, ".factory.toml": "[run]\nconcurrency = 1\n"})
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "agent", str(worktree))
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    outside = tmp_path / "outside"
    outside.mkdir()
    limits = Limits(wall_seconds=10, memory_mb=256, max_processes=64, output_bytes=200_000)
    # docker's fixture fails (never skips) the test when no daemon answers.
    image = request.getfixturevalue("docker_image") if request.param == "docker" else None
    backend = make_backend(request.param, limits=limits, image=image, root=repo)
    sandbox = await backend.open(SandboxContext(
        worktree=worktree, agent_id="hostile",
        read_only=[worktree / ".git", worktree / ".factory.toml"]))
    try:
        yield Arena(ToolContext(worktree=worktree, sandbox=sandbox, limits=limits), repo,
                    worktree, outside, secret)
    finally:
        await sandbox.close()


async def run(arena: Arena, command: str) -> ToolOutcome:
    return await call_tool(arena.ctx, "run", {"command": command})


def revealed(out: ToolOutcome) -> bool:
    return SECRET in out.content


async def test_write_outside_the_worktree(arena: Arena) -> None:
    target = arena.outside / "pwned.txt"
    await run(arena, f"echo pwned > {target}; echo pwned > ../pwned.txt")
    assert not target.exists() and not (arena.worktree.parent / "pwned.txt").exists()


async def test_write_system_files(arena: Arena) -> None:
    out = await run(arena, "echo 'evil:x:0:0::/:/bin/sh' >> /etc/passwd; touch /usr/bin/evil")
    assert out.is_error and "Read-only file system" in out.content
    assert "evil" not in Path("/etc/passwd").read_text()


async def test_read_a_planted_secret_by_absolute_path(arena: Arena) -> None:
    assert not revealed(await run(arena, f"cat {arena.secret}"))


async def test_read_a_planted_secret_by_relative_path(arena: Arena) -> None:
    assert not revealed(await run(arena, "cat ../secret.txt; cat ../../*/secret.txt"))


async def test_read_ssh_keys(arena: Arena) -> None:
    home = Path.home() / ".ssh"
    out = await run(arena, f"ls -la {home} ~/.ssh; cat {home}/* ~/.ssh/*")
    assert "id_" not in out.content and "BEGIN" not in out.content


async def test_read_api_keys_from_the_environment(arena: Arena,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", f"sk-{SECRET}")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/agent.sock")
    out = await run(arena, "env; cat /proc/self/environ; cat /proc/1/environ")
    assert not revealed(out) and "SSH_AUTH_SOCK" not in out.content


@pytest.fixture
def listener() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()
    assert not accepted, "the sandbox reached a server on the host's loopback"


async def test_connect_to_a_server_on_loopback(arena: Arena, listener: int) -> None:
    out = await run(arena, "python3 -c \"import socket; socket.create_connection(('127.0.0.1', "
                    f"{listener}), timeout=2); print('CONNECTED')\"")
    assert "CONNECTED" not in out.content


async def test_fork_bomb(arena: Arena) -> None:
    out = await run(arena, "bomb() { bomb | bomb & }; bomb; sleep 1; echo done")
    assert "Cannot fork" in out.content or out.sandbox is not None
    assert (await run(arena, "echo alive")).content.count("alive") == 1  # sandbox usable


async def test_memory_bomb(arena: Arena) -> None:
    out = await run(arena, "python3 -c 'x = bytearray(2 * 1024 ** 3); print(len(x))'")
    assert out.sandbox is not None and out.sandbox.stop == "memory"


async def test_infinite_loop(arena: Arena) -> None:
    out = await call_tool(arena.ctx, "run", {"command": "while true; do :; done",
                                             "timeout": 1})
    assert out.sandbox is not None and out.sandbox.stop == "timeout"


async def test_a_gigabyte_of_stdout(arena: Arena) -> None:
    out = await run(arena, "head -c 1000000000 /dev/zero | tr '\\0' x")
    assert out.sandbox is not None and out.sandbox.stop == "output_cap"
    assert out.sandbox.duration < 10


async def test_symlink_pointing_outside(arena: Arena) -> None:
    out = await run(arena, f"ln -s {arena.secret} link && cat link")
    assert not revealed(out)
    # The file tools refuse the link as well.
    read = await call_tool(arena.ctx, "read_file", {"path": "link"})
    assert read.is_error and not revealed(read)


async def test_hardlink_pointing_outside(arena: Arena) -> None:
    out = await run(arena, f"ln {arena.secret} hard && cat hard")
    assert not revealed(out) and not (arena.worktree / "hard").exists()


async def test_proc_1_root(arena: Arena) -> None:
    out = await run(arena, f"cat /proc/1/root{arena.secret}; ls /proc/1/root/root; "
                    "cat /proc/1/root/etc/shadow")
    assert not revealed(out) and "root:" not in out.content


async def test_write_git_hooks(arena: Arena) -> None:
    hooks = arena.repo / ".git" / "hooks"
    before = sorted(p.name for p in hooks.iterdir())
    out = await run(arena, "mkdir -p .git/hooks && echo 'curl evil' > .git/hooks/pre-commit; "
                    f"echo evil > {hooks}/post-checkout; cat .git")
    assert sorted(p.name for p in hooks.iterdir()) == before
    assert "gitdir:" in out.content  # the pointer is readable, not writable
    assert (arena.worktree / ".git").read_text().startswith("gitdir:")


async def test_set_core_hooks_path(arena: Arena) -> None:
    await run(arena, "git config core.hooksPath /tmp/hooks; git config --global "
              "core.hooksPath /tmp/hooks")
    config = (arena.repo / ".git" / "config").read_text()
    assert "hooksPath" not in config


async def test_edit_the_factory_configuration(arena: Arena) -> None:
    before = (arena.worktree / ".factory.toml").read_text()
    out = await run(arena, "echo 'backend = \"none\"' >> .factory.toml; rm -f .factory.toml; "
                    "mv .factory.toml x.toml")
    assert out.is_error
    assert (arena.worktree / ".factory.toml").read_text() == before


async def test_signal_the_engine(arena: Arena) -> None:
    out = await run(arena, f"kill -9 {os.getpid()}; kill -9 -1; kill -STOP {os.getppid()}")
    assert out is not None  # we are still here to assert anything at all
    os.kill(os.getpid(), 0)


async def test_setuid(arena: Arena) -> None:
    out = await run(arena, "python3 -c 'import os; os.setuid(1000); print(\"BECAME\", "
                    "os.getuid())'; cp /usr/bin/id ./id && chmod u+s ./id; ls -l ./id")
    assert "BECAME" not in out.content
    # The bit is stripped as soon as the command ends, and the agent's timeline says so.
    copied = arena.worktree / "id"
    assert copied.exists() and not copied.stat().st_mode & 0o6000
    assert out.sandbox is not None and out.sandbox.stop == "denied"
    assert "setuid" in out.sandbox.detail


async def test_mount(arena: Arena) -> None:
    out = await run(arena, "mkdir -p m && mount -t tmpfs none m && echo MOUNTED; "
                    "mount --bind / m && echo MOUNTED")
    assert "MOUNTED" not in out.content


async def test_write_a_kernel_setting(arena: Arena) -> None:
    # Commands are uid 0 of a user namespace mapped to the engine's uid: when that is the
    # host's root, a writable /proc/sys would take their writes (core_pattern runs a program
    # as root on the host). Writing the current value back changes nothing if it went through.
    out = await run(arena, "v=$(cat /proc/sys/kernel/core_pattern) && "
                    "printf '%s\\n' \"$v\" > /proc/sys/kernel/core_pattern && echo WROTE")
    assert "WROTE" not in out.content


async def test_take_over_pid_1(arena: Arena) -> None:
    # Whatever is pid 1 outlives each command: no command may trace it, read its memory or
    # its environment, use its file descriptors, or kill it.
    out = await run(arena, "python3 -c \"import ctypes; libc = ctypes.CDLL(None); "
                    "print('ATTACHED' if libc.ptrace(16, 1, 0, 0) == 0 else 'refused')\"; "
                    "head -c 16 /proc/1/mem && echo READMEM; tr '\\0' '\\n' < /proc/1/environ; "
                    "for fd in /proc/1/fd/*; do cat $fd < /dev/null && echo OPENED $fd; done; "
                    "kill -9 1; kill -TERM 1; kill -INT 1")
    assert "ATTACHED" not in out.content and "READMEM" not in out.content
    assert "OPENED" not in out.content and "PATH=" not in out.content
    assert (await run(arena, "echo alive")).content.count("alive") == 1


async def test_private_tmp_does_not_reach_the_host(arena: Arena) -> None:
    marker = Path("/tmp") / f"factory-hostile-{os.getpid()}"
    out = await run(arena, f"echo x > {marker} && echo WROTE")
    assert "WROTE" in out.content and not marker.exists()


async def test_a_normal_command_still_works(arena: Arena) -> None:
    out = await run(arena, "python3 -m unittest discover -s tests -q && echo made > made.txt")
    assert not out.is_error, out.content
    assert (arena.worktree / "made.txt").read_text() == "made\n"
