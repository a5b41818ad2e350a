"""The bwrap backend's per-agent sandbox: one set of namespaces serves all of an agent's
commands, yet each command starts from the state a sandbox of its own would give it, and
nothing a command leaves (processes, scratch files, IPC objects) reaches the next one."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agents.sandbox.base import Limits, RunResult, SandboxContext
from agents.sandbox.bwrap import BwrapBackend, BwrapSandbox, SetuidGuard
from tests.conftest import PROJECT, git, make_repo

LIMITS = Limits(wall_seconds=10, memory_mb=256, max_processes=64, output_bytes=200_000)


@pytest.fixture
async def worktree(tmp_path: Path) -> Path:
    # Under /tmp (pytest's tmp_path): the sandbox's /tmp then holds the directories above
    # the worktree's mount point, which the wipe between commands must leave alone.
    repo = make_repo(tmp_path / "repo", PROJECT)
    tree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "agent", str(tree))
    return tree


@pytest.fixture
async def sandbox(worktree: Path) -> AsyncIterator[BwrapSandbox]:
    box = await BwrapBackend(LIMITS).open(SandboxContext(
        worktree=worktree, agent_id="bwrap-test",
        read_only=[worktree / ".git", worktree / ".factory.toml"]))
    try:
        yield box
    finally:
        await box.close()


async def sh(box: BwrapSandbox, command: str, **kwargs: float) -> RunResult:
    return await box.run(["sh", "-c", command], cwd=box.ctx.worktree, **kwargs)


async def test_one_sandbox_serves_every_command(sandbox: BwrapSandbox) -> None:
    first = await sh(sandbox, "cat /proc/1/cmdline | tr '\\0' ' '")
    keep = sandbox.keep
    for _ in range(3):
        assert (await sh(sandbox, "true")).ok
    assert sandbox.keep == keep and len(keep) == 2
    assert "/run/factory-launcher.py" in first.stdout


async def test_each_command_starts_from_empty_scratch_space(sandbox: BwrapSandbox,
                                                            worktree: Path) -> None:
    left = await sh(sandbox, "echo x > /tmp/a; mkdir -p /tmp/d/e; touch /tmp/d/e/f; "
                    "chmod 000 /tmp/d; echo y > /dev/shm/b; touch /dev/mqueue/q; "
                    "python3 -c \"import ctypes; print('shm', ctypes.CDLL(None)"
                    ".shmget(1234, 4096, 0o1600))\"")
    assert left.ok and "shm 0" in left.stdout, left
    seen = await sh(sandbox, "ls -A /tmp/a /tmp/d /dev/shm/b /dev/mqueue/q 2>&1; "
                    "tail -n +2 /proc/sysvipc/shm")
    assert seen.stdout.count("No such file") == 4 and "1234" not in seen.stdout, seen
    # The wipe never reaches through the mount point into the worktree.
    assert (worktree / "calc" / "ops.py").exists()


async def test_a_renamed_mount_point_directory_means_a_new_sandbox(
        sandbox: BwrapSandbox, worktree: Path) -> None:
    top = "/" + "/".join(worktree.resolve().parts[1:3])  # e.g. /tmp/pytest-of-root
    await sh(sandbox, "true")
    keep = sandbox.keep
    moved = await sh(sandbox, f"mv {top} /tmp/moved && echo MOVED; echo x > /tmp/moved/x")
    assert "MOVED" in moved.stdout, moved
    after = await sh(sandbox, "ls calc; ls -A /tmp")
    assert sandbox.keep != keep  # the launcher would not wipe across it: a fresh sandbox
    assert "ops.py" in after.stdout and "moved" not in after.stdout
    assert (worktree / "calc" / "ops.py").read_text().startswith("def add")


async def test_what_a_command_leaves_running_ends_with_it(sandbox: BwrapSandbox) -> None:
    started = time.perf_counter()
    out = await sh(sandbox, "sleep 60 & sleep 61 > /dev/null 2>&1 & echo started")
    assert out.ok and out.stdout == "started\n"
    assert time.perf_counter() - started < 5  # not held until the wall-clock limit
    assert sandbox.group.pids() == set(sandbox.keep)
    assert "sleep" not in (await sh(sandbox, "ps -e")).stdout


async def test_a_cancelled_command_is_killed_and_the_sandbox_reused(
        sandbox: BwrapSandbox) -> None:
    await sh(sandbox, "true")
    keep = sandbox.keep
    job = asyncio.ensure_future(sh(sandbox, "echo x > /tmp/x; sleep 30"))
    await asyncio.sleep(0.5)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    after = await sh(sandbox, "ps -e; ls -A /tmp")
    assert "sleep" not in after.stdout and "x\n" not in after.stdout
    assert sandbox.keep == keep


async def test_commands_take_turns(sandbox: BwrapSandbox) -> None:
    results = await asyncio.gather(*(sh(sandbox, f"sleep 0.2; echo {n}") for n in range(3)))
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n"]


async def test_a_created_read_only_path_is_bound_from_then_on(sandbox: BwrapSandbox,
                                                              worktree: Path) -> None:
    config = worktree / ".factory.toml"
    assert not config.exists()
    await sh(sandbox, "echo '[run]' > .factory.toml")  # not there yet: nothing to protect
    out = await sh(sandbox, "echo 'backend = \"none\"' >> .factory.toml")
    assert "Read-only file system" in out.stderr
    assert config.read_text() == "[run]\n"


async def test_commands_hold_only_their_own_descriptors(sandbox: BwrapSandbox) -> None:
    out = await sh(sandbox, "ls /proc/self/fd")
    assert out.stdout.split() == ["0", "1", "2", "3"]  # 3: ls's own listing of the dir


async def test_exit_codes_and_what_cannot_start(sandbox: BwrapSandbox, worktree: Path) -> None:
    assert (await sh(sandbox, "exit 3")).exit_code == 3
    assert (await sh(sandbox, "kill -9 $$")).exit_code == 137
    missing = await sandbox.run(["no-such-program"], cwd=worktree)
    assert missing.stop == "denied" and "no-such-program" in missing.detail
    nowhere = await sandbox.run(["true"], cwd=worktree / "no-such-dir")
    assert nowhere.stop == "denied" and "no-such-dir" in nowhere.detail
    assert (await sh(sandbox, "echo alive")).stdout == "alive\n"


async def test_nested_user_namespaces_are_refused(sandbox: BwrapSandbox) -> None:
    out = await sh(sandbox, "unshare -U sh -c 'echo NESTED'; unshare -Ur sh -c 'echo NESTED'")
    assert "NESTED" not in out.stdout


async def test_a_sandbox_killed_from_outside_is_made_again(sandbox: BwrapSandbox) -> None:
    await sh(sandbox, "true")
    for pid in sandbox.keep:
        os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.2)  # between two commands
    out = await sh(sandbox, "echo again")
    assert out.ok and out.stdout == "again\n"


async def test_close_leaves_nothing_behind(worktree: Path) -> None:
    box = await BwrapBackend(LIMITS).open(SandboxContext(worktree=worktree, agent_id="close"))
    await sh(box, "sleep 60 &")
    keep, dirs = box.keep, box.group.dirs
    await box.close()
    assert not any(Path(f"/proc/{pid}").exists() for pid in keep)
    assert not any(d.exists() for d in dirs)


def _setuid_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o4755)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def test_setuid_guard_finds_bits_wherever_they_were_set(tmp_path: Path) -> None:
    root = tmp_path / "wt"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "old.sh").write_text("x")
    (root / ".git").write_text("gitdir: elsewhere\n")
    guard = SetuidGuard(root)
    assert guard.reset() == [] and guard.fd is not None
    (root / "a" / "b" / "old.sh").chmod(0o6755)  # an existing file
    _setuid_file(root / "new" / "deep" / "x")  # in directories made since
    _setuid_file(root / "sub" / ".git" / "hook")  # a .git a command made is no hiding place
    fd = os.open(root / "a" / "made", os.O_CREAT | os.O_WRONLY, 0o4755)  # born with it
    os.close(fd)
    os.link(root / "a" / "b" / "old.sh", root / "a" / "link")
    found = guard.check()
    assert sorted(found) == ["a/b/old.sh", "a/made", "new/deep/x", "sub/.git/hook"]
    assert all(_mode(p) & 0o6000 == 0 for p in root.rglob("*") if p.is_file())
    (root / "a" / "link").chmod(0o4700)  # through another name of the same file
    assert guard.check() in (["a/link"], ["a/b/old.sh"])  # either name: it is one file
    assert _mode(root / "a" / "link") == 0o700
    assert guard.check() == []  # nothing changed since


def test_setuid_guard_walks_again_when_it_cannot_follow(tmp_path: Path) -> None:
    root = tmp_path / "wt"
    (root / "a" / "b").mkdir(parents=True)
    guard = SetuidGuard(root)
    guard.reset()
    (root / "a").rename(root / "z")  # every path below the moved directory changed
    _setuid_file(root / "z" / "b" / "x")
    assert guard.check() == ["z/b/x"]
    _setuid_file(root / "z" / "b" / "y")  # and the new watches follow the new paths
    assert guard.check() == ["z/b/y"]
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    for n in range(limit + 10):  # more events than the queue holds: a full walk
        (root / f"f{n}").touch()
    _setuid_file(root / "z" / "last")
    assert "z/last" in guard.check()
    guard.close()
