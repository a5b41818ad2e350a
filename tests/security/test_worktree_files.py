"""Hostile worktrees against the engine's own file access, and agents over their quota.

The file tools (read_file, write_file, edit_file, list_files, search_code), the quota meter,
the engine's commit and the landing's dependency scan run in the engine's process, with the
engine's privileges, on a tree that an agent's code wrote. Each case leaves something
hostile in a real worktree (links, names of the tools' temporary files, hard links, FIFOs,
sockets, devices, very deep or very wide trees, links swapped in while the tools run) or
goes over a small quota, through the file tools and through commands in both real sandboxes
(bubblewrap and docker), and checks what a user relies on: nothing outside the worktree is
read or written, nothing hangs, the agent gets an error it can act on, and a quota that was
reached is reported as a limit.

A: links and temporary files. B: special files, deep and wide trees. C: quotas, and one
agent run end to end. The file tools run in the engine, not in the sandbox, so class A and B
use the `none` backend; the commands of class C run in bwrap and in docker (docker's fixture
fails, never skips, when no daemon answers).
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agents import beneath
from agents import events as ev
from agents.deps import phantom_imports
from agents.models import ModelRouter
from agents.runtime import AgentLimits, AgentRunner
from agents.sandbox.base import Limits, SandboxContext
from agents.sandbox.none import NoneBackend
from agents.sandbox.quota import DiskMeter, Over, Quota
from agents.sandbox.select import make_backend
from agents.store import Store
from agents.tools import ToolContext, ToolOutcome, call_tool
from agents.tools.registry import MAX_RESULT
from agents.workspace import Workspace, WorkspaceError
from tests.conftest import PROJECT, git, make_repo
from tests.openai_server import ScriptedServer, call

T = TypeVar("T")
SECRET = "TOP-SECRET-5150"
BACKENDS = ["bwrap", "docker"]
KB = 1024
MB = 1024 * 1024


# -- the arena ---------------------------------------------------------------------------


@dataclass
class Tree:
    """A real repository, a real worktree of it, and what lies outside the worktree."""

    ctx: ToolContext
    repo: Path
    worktree: Path
    outside: Path  # a folder next to the worktree: links point here; it must never change
    secret: Path  # a file next to the worktree holding SECRET: it must never be read


def make_worktree(tmp_path: Path) -> tuple[Path, Path]:
    repo = make_repo(tmp_path / "repo", {**PROJECT, ".factory.toml": "[run]\nconcurrency = 1\n"})
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "agent", str(worktree))
    return repo, worktree


@pytest.fixture
async def tree(tmp_path: Path) -> AsyncIterator[Tree]:
    repo, worktree = make_worktree(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_text(SECRET)
    (outside / "keep.txt").write_text(SECRET)
    sandbox = await NoneBackend().open(SandboxContext(worktree=worktree, agent_id="files"))
    try:
        yield Tree(ToolContext(worktree=worktree, sandbox=sandbox), repo, worktree, outside, secret)
    finally:
        await sandbox.close()


def snapshot(*paths: Path) -> dict[str, tuple[object, ...]]:
    """Every entry at and below paths, links not followed: its kind and content (a file's
    bytes and mtime, a link's target, a folder's mtime, which moves when an entry is added
    or removed)."""
    found: dict[str, tuple[object, ...]] = {}
    stack = list(paths)
    while stack:
        path = stack.pop()
        info = path.lstat()
        if stat.S_ISDIR(info.st_mode):
            found[str(path)] = ("folder", info.st_mtime_ns)
            stack.extend(path.iterdir())
        elif stat.S_ISLNK(info.st_mode):
            found[str(path)] = ("link", os.readlink(path))
        else:
            found[str(path)] = ("file", path.read_bytes(), info.st_mtime_ns)
    return found


def holds(root: Path) -> tuple[int, int]:
    """(bytes, entries) below root, counted the way the quota counts: regular files and
    links by their size, every entry (folders too) as one."""
    total = entries = 0
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            info = os.lstat(os.path.join(folder, name))
            entries += 1
            if stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
                total += info.st_size
    return total, entries


async def tool(ctx: ToolContext, name: str, **arguments: Any) -> ToolOutcome:
    return await call_tool(ctx, name, arguments)


async def bounded(make: Callable[[], Coroutine[Any, Any, T]], seconds: float, what: str) -> T:
    """make() run to its end on a thread of its own, with an event loop of its own.

    The file tools do part of their work on the engine's loop: a call that blocked there
    (an open of a FIFO, a read of /dev/zero) would stall `asyncio.wait_for` as well. Here
    the waiting loop stays free, so a hang fails the test after `seconds` instead of
    hanging the suite (the thread is a daemon: it does not hold the interpreter at exit).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def target() -> None:
        try:
            result: Any = asyncio.run(make())
            error: BaseException | None = None
        except BaseException as exc:
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the test gave up on it and its loop is closed

    threading.Thread(target=target, daemon=True, name=f"bounded: {what}").start()
    try:
        return await asyncio.wait_for(done, seconds)
    except TimeoutError:
        pytest.fail(f"{what} did not return within {seconds:g} s: it hangs", pytrace=False)


async def quick(ctx: ToolContext, name: str, seconds: float = 5, **arguments: Any) -> ToolOutcome:
    """A tool call that must come back within `seconds`, whatever the tree holds."""
    return await bounded(lambda: call_tool(ctx, name, arguments), seconds, f"{name}({arguments})")


def refused(out: ToolOutcome, *words: str) -> None:
    """An error for the agent, naming the reason, that reveals nothing of the secret."""
    assert out.is_error, f"not refused: {out.content!r}"
    assert SECRET not in out.content, f"the secret leaked: {out.content!r}"
    for word in words:
        assert word in out.content, f"{word!r} is not in the error: {out.content!r}"


# -- A. links and temporary files -------------------------------------------------------


async def test_a_link_as_the_last_component_is_never_followed(tree: Tree) -> None:
    wt = tree.worktree
    (wt / "link.txt").symlink_to(tree.secret)
    (wt / "dangling.txt").symlink_to(tree.outside / "created.txt")
    (wt / "calc" / "deep.py").symlink_to(tree.secret)
    before = snapshot(tree.outside, tree.secret)
    for path in ("link.txt", "dangling.txt", "calc/deep.py", f"{wt}/link.txt"):
        refused(await tool(tree.ctx, "read_file", path=path), "denied", "symbolic link")
        refused(
            await tool(tree.ctx, "write_file", path=path, content="pwned\n"),
            "denied",
            "symbolic link",
        )
        refused(
            await tool(tree.ctx, "edit_file", path=path, search=SECRET, replace="pwned"),
            "denied",
            "symbolic link",
        )
        refused(
            await tool(tree.ctx, "search_code", pattern="SECRET", path=path),
            "denied",
            "symbolic link",
        )
    assert snapshot(tree.outside, tree.secret) == before
    assert not (tree.outside / "created.txt").exists()
    # The links themselves are left as they were, not replaced by the engine's file.
    assert os.readlink(wt / "link.txt") == str(tree.secret)
    assert os.readlink(wt / "dangling.txt") == str(tree.outside / "created.txt")


async def test_a_linked_folder_never_leads_outside(tree: Tree) -> None:
    wt = tree.worktree
    (wt / "a").symlink_to(tree.outside, target_is_directory=True)
    (wt / "calc" / "lib").symlink_to(tree.outside, target_is_directory=True)
    (wt / "up").symlink_to("../outside", target_is_directory=True)  # relative, climbing out
    before = snapshot(tree.outside, tree.secret)
    for folder in ("a", "calc/lib", "up"):
        for path in (f"{folder}/x.txt", f"{folder}/new/deeper/x.txt", f"{folder}/f.txt"):
            refused(
                await tool(tree.ctx, "write_file", path=path, content="pwned\n"),
                "denied",
                "symbolic link",
            )
        refused(
            await tool(tree.ctx, "read_file", path=f"{folder}/f.txt"), "denied", "symbolic link"
        )
        refused(
            await tool(
                tree.ctx, "edit_file", path=f"{folder}/keep.txt", search=SECRET, replace="pwned"
            ),
            "denied",
            "symbolic link",
        )
        refused(await tool(tree.ctx, "list_files", path=folder), "denied", "symbolic link")
        refused(
            await tool(tree.ctx, "search_code", pattern="SECRET", path=folder),
            "denied",
            "symbolic link",
        )
    # Walks of the whole worktree show the links as links and never go through them.
    listing = await tool(tree.ctx, "list_files", path=".")
    assert "a (symbolic link)" in listing.content.splitlines()
    assert "a/f.txt" not in listing.content and SECRET not in listing.content
    assert (await tool(tree.ctx, "search_code", pattern="TOP-SECRET")).content == "(no matches)"
    assert snapshot(tree.outside, tree.secret) == before


async def test_a_link_to_a_file_inside_the_worktree_is_not_followed_either(tree: Tree) -> None:
    wt = tree.worktree
    ops = wt / "calc" / "ops.py"
    original = ops.read_text()
    (wt / "alias.py").symlink_to("calc/ops.py")
    (wt / "absolute.py").symlink_to(ops)
    (wt / "pkg").symlink_to("calc", target_is_directory=True)
    for path in ("alias.py", "absolute.py", "pkg/ops.py"):
        out = await tool(tree.ctx, "read_file", path=path)
        refused(out, "denied", "symbolic link")
        assert "def add" not in out.content
        refused(
            await tool(tree.ctx, "write_file", path=path, content="pwned\n"),
            "denied",
            "symbolic link",
        )
        refused(
            await tool(tree.ctx, "edit_file", path=path, search="a + b", replace="a - b"),
            "denied",
            "symbolic link",
        )
    refused(
        await tool(tree.ctx, "write_file", path="pkg/new.py", content="X = 1\n"),
        "denied",
        "symbolic link",
    )
    assert ops.read_text() == original and not (wt / "calc" / "new.py").exists()
    assert (wt / "alias.py").is_symlink() and (wt / "absolute.py").is_symlink()


async def test_dot_dot_and_absolute_paths_outside_are_refused(tree: Tree) -> None:
    wt = tree.worktree
    # A sibling whose name starts with the worktree's: a prefix test on strings would let it in.
    sibling = Path(f"{wt}-evil")
    sibling.mkdir()
    (sibling / "x.txt").write_text(SECRET)
    paths = [
        "../secret.txt",
        "calc/../../secret.txt",
        "./../outside/f.txt",
        "calc/../../outside/new.txt",
        "..",
        "../",
        str(tree.secret),
        str(tree.outside / "f.txt"),
        str(tree.outside / "new.txt"),
        f"{wt}/../secret.txt",
        f"{wt}/calc/../../outside/f.txt",
        f"{sibling}/x.txt",
        "/etc/passwd",
        "//etc/passwd",
        "/",
        "calc/\0/x.py",
    ]
    before = snapshot(tree.outside, tree.secret, sibling)
    passwd = Path("/etc/passwd").read_bytes()
    calls: list[tuple[str, dict[str, str]]] = [
        ("read_file", {}),
        ("write_file", {"content": "pwned\n"}),
        ("edit_file", {"search": SECRET, "replace": "pwned"}),
        ("list_files", {}),
        ("search_code", {"pattern": "SECRET|root"}),
    ]
    for path in paths:
        for name, extra in calls:
            out = await call_tool(tree.ctx, name, {"path": path, **extra})
            assert out.is_error and out.content.startswith("denied:"), (name, path, out.content)
            assert SECRET not in out.content and "root:" not in out.content, (name, path)
    assert snapshot(tree.outside, tree.secret, sibling) == before
    assert Path("/etc/passwd").read_bytes() == passwd
    # An absolute path inside the worktree is the agent's to use.
    ok = await tool(tree.ctx, "write_file", path=f"{wt}/calc/abs.py", content="A = 1\n")
    assert not ok.is_error, ok.content
    assert (wt / "calc" / "abs.py").read_text() == "A = 1\n"


async def test_planted_temp_file_names_are_skipped_never_followed(tree: Tree) -> None:
    wt = tree.worktree
    # The names `Beneath._replace` tries next: `.factory-tmp-<pid>-<n>`, n from a counter.
    pid = os.getpid()
    first = next(beneath._counter) + 1
    planted: dict[Path, str] = {}
    for folder in (wt, wt / "calc"):
        for n in range(first, first + 40):
            path = folder / f".factory-tmp-{pid}-{n}"
            kind = ("link", "dangling", "fifo", "hard", "folder")[n % 5]
            if kind == "link":
                path.symlink_to(tree.secret)
            elif kind == "dangling":
                path.symlink_to(tree.outside / f"planted-{n}.txt")
            elif kind == "fifo":
                os.mkfifo(path)
            elif kind == "hard":
                os.link(tree.secret, path)
            else:
                path.mkdir()
            planted[path] = kind
    before = snapshot(tree.outside, tree.secret)
    targets = {
        path: os.readlink(path) for path, kind in planted.items() if kind in ("link", "dangling")
    }
    outs = [
        await quick(tree.ctx, "write_file", path="target.txt", content="fresh\n"),
        await quick(
            tree.ctx, "write_file", path="calc/ops.py", content="def add(a, b):\n    return a + b\n"
        ),
        await quick(tree.ctx, "edit_file", path="calc/ops.py", search="a + b", replace="b + a"),
        await quick(tree.ctx, "write_file", path="target.txt", content="fresher\n"),
    ]
    assert not [o.content for o in outs if o.is_error]
    for path, content in (
        (wt / "target.txt", "fresher\n"),
        (wt / "calc" / "ops.py", "def add(a, b):\n    return b + a\n"),
    ):
        info = path.lstat()
        assert stat.S_ISREG(info.st_mode) and info.st_nlink == 1
        assert path.read_text() == content
    assert snapshot(tree.outside, tree.secret) == before
    assert not list(tree.outside.glob("planted-*"))
    for path, kind in planted.items():
        mode = path.lstat().st_mode
        expected = {
            "link": stat.S_ISLNK,
            "dangling": stat.S_ISLNK,
            "fifo": stat.S_ISFIFO,
            "hard": stat.S_ISREG,
            "folder": stat.S_ISDIR,
        }[kind]
        assert expected(mode), f"{path.name} ({kind}) was replaced"
        if kind in ("link", "dangling"):
            assert os.readlink(path) == targets[path]
    # The engine's own temporary files are gone: only the planted names remain.
    left = {p for folder in (wt, wt / "calc") for p in folder.glob(".factory-tmp-*")}
    assert left == set(planted)


@pytest.mark.parametrize("kind", ["link", "dangling", "fifo", "hard", "file"])
async def test_a_name_planted_after_the_look_before_a_new_file_is_not_followed(
    tree: Tree, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new file is made at its own name with O_EXCL. Something planted there between the
    # engine's look (nothing there) and the create is never opened or followed: the write
    # goes through a temporary file renamed over the planted name.
    wt = tree.worktree
    target = wt / "calc" / "fresh.py"
    looked = beneath.Beneath._old

    def plant_after_look(self: beneath.Beneath, parent: int, name: str, data: bytes,
                         raw: str) -> tuple[os.stat_result | None, bool]:
        seen = looked(self, parent, name, data, raw)
        if name == target.name and not os.path.lexists(target):
            if kind == "link":
                target.symlink_to(tree.secret)
            elif kind == "dangling":
                target.symlink_to(tree.outside / "planted.txt")
            elif kind == "fifo":
                os.mkfifo(target)
            elif kind == "hard":
                os.link(tree.secret, target)
            else:
                target.write_text("the agent's own\n")
        return seen

    monkeypatch.setattr(beneath.Beneath, "_old", plant_after_look)
    before = snapshot(tree.outside, tree.secret)
    out = await quick(tree.ctx, "write_file", path="calc/fresh.py", content="NEW = 1\n")
    assert not out.is_error, out.content
    info = target.lstat()
    assert stat.S_ISREG(info.st_mode) and info.st_nlink == 1
    assert target.read_text() == "NEW = 1\n"
    assert snapshot(tree.outside, tree.secret) == before
    assert not (tree.outside / "planted.txt").exists()
    assert not list((wt / "calc").glob(".factory-tmp-*"))


async def test_a_hard_link_to_an_outside_file_is_refused(tree: Tree) -> None:
    wt = tree.worktree
    os.link(tree.secret, wt / "hard.txt")
    os.link(tree.outside / "f.txt", wt / "calc" / "hard.py")
    before = snapshot(tree.outside, tree.secret)
    for path in ("hard.txt", "calc/hard.py"):
        refused(await tool(tree.ctx, "read_file", path=path), "denied", "hard-linked")
        refused(
            await tool(tree.ctx, "write_file", path=path, content="pwned\n"),
            "denied",
            "hard-linked",
        )
        refused(
            await tool(tree.ctx, "edit_file", path=path, search=SECRET, replace="pwned"),
            "denied",
            "hard-linked",
        )
        refused(
            await tool(tree.ctx, "search_code", pattern="TOP-SECRET", path=path),
            "denied",
            "hard-linked",
        )
    assert (await tool(tree.ctx, "search_code", pattern="TOP-SECRET")).content == "(no matches)"
    assert snapshot(tree.outside, tree.secret) == before
    assert (wt / "hard.txt").stat().st_ino == tree.secret.stat().st_ino  # left as it was


async def test_the_engines_own_files_are_never_written(tree: Tree) -> None:
    wt = tree.worktree
    pointer = (wt / ".git").read_text()
    config = (wt / ".factory.toml").read_text()
    hooks = sorted(p.name for p in (tree.repo / ".git" / "hooks").iterdir())
    repo_config = (tree.repo / ".git" / "config").read_text()
    for path in (
        ".git",
        ".git/hooks/pre-commit",
        ".git/config",
        ".factory",
        ".factory/store/factory.db",
        ".factory.toml",
        "./.factory.toml",
        "calc/../.factory.toml",
        f"{wt}/.factory.toml",
        f"{wt}/.git",
        ".factory/../.git",
    ):
        refused(
            await tool(tree.ctx, "write_file", path=path, content="evil\n"),
            "denied",
            "managed by the engine",
        )
        refused(
            await tool(tree.ctx, "edit_file", path=path, search="concurrency", replace="evil"),
            "denied",
            "managed by the engine",
        )
    for path in (".git", ".git/config", ".factory", ".factory/store"):
        refused(await tool(tree.ctx, "read_file", path=path), "denied", "managed by the engine")
        refused(await tool(tree.ctx, "list_files", path=path), "denied", "managed by the engine")
    assert (wt / ".git").read_text() == pointer
    assert (wt / ".factory.toml").read_text() == config
    assert not (wt / ".factory").exists()
    assert sorted(p.name for p in (tree.repo / ".git" / "hooks").iterdir()) == hooks
    assert (tree.repo / ".git" / "config").read_text() == repo_config
    # The configuration may be read; listings leave the engine's files out.
    read = await tool(tree.ctx, "read_file", path=".factory.toml")
    assert not read.is_error and "concurrency" in read.content
    listing = (await tool(tree.ctx, "list_files", path=".")).content.splitlines()
    assert ".git" not in listing and ".factory.toml" not in listing


# The race: processes (true parallelism, no GIL between them and the engine) swap links in
# while the tools run. "folder": `sub` (a real folder) and `sub-swap` (a link to the outside
# folder) trade places atomically, again and again (renameat2 RENAME_EXCHANGE). "link" and
# "hard": `file.txt` is renamed over, in turn, by a symbolic (or hard) link to the secret and
# by a regular file. Each prints how many swaps it made, and leaves the real thing in place.
SWAPPER = r"""
import ctypes, os, sys, time
mode, root, target, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
end = time.monotonic() + seconds
swaps = 0
if mode == "folder":
    libc = ctypes.CDLL(None, use_errno=True)
    os.symlink(target, "sub-swap", dir_fd=fd)
    def exchange():
        if libc.renameat2(fd, b"sub", fd, b"sub-swap", 2) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), "renameat2")
    while time.monotonic() < end:
        exchange()
        swaps += 1
    if os.path.islink(os.path.join(root, "sub")):
        exchange()
else:
    def regular():
        tmp = os.open("swap.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
        os.write(tmp, b"inside file\n")
        os.close(tmp)
    while time.monotonic() < end:
        if swaps % 2:
            regular()
        elif mode == "link":
            os.symlink(target, "swap.tmp", dir_fd=fd)
        else:
            os.link(target, "swap.tmp", dst_dir_fd=fd)
        os.rename("swap.tmp", "file.txt", src_dir_fd=fd, dst_dir_fd=fd)
        swaps += 1
    regular()
    os.rename("swap.tmp", "file.txt", src_dir_fd=fd, dst_dir_fd=fd)
print(swaps)
"""

RACE_CALLS: list[tuple[str, dict[str, str]]] = [
    ("read_file", {"path": "sub/f.txt"}),
    ("write_file", {"path": "sub/f.txt", "content": "inside\n"}),
    ("edit_file", {"path": "sub/f.txt", "search": "inside", "replace": "inside"}),
    ("write_file", {"path": "sub/made/x.txt", "content": "made\n"}),
    ("list_files", {"path": "sub"}),
    ("search_code", {"pattern": "TOP-SECRET|inside", "path": "sub"}),
    ("read_file", {"path": "file.txt"}),
    ("write_file", {"path": "file.txt", "content": "inside file\n"}),
    ("edit_file", {"path": "file.txt", "search": "inside", "replace": "inside"}),
    ("search_code", {"pattern": "TOP-SECRET", "path": "."}),
    ("list_files", {"path": "."}),
]


async def hammer(
    ctx: ToolContext, swappers: list[subprocess.Popen[str]], calls: list[tuple[str, dict[str, str]]]
) -> tuple[list[tuple[str, dict[str, str], ToolOutcome]], list[str]]:
    """Tool calls, one after another, for as long as the swappers run."""
    results: list[tuple[str, dict[str, str], ToolOutcome]] = []
    crashes: list[str] = []
    n = 0
    while n < len(calls) or any(p.poll() is None for p in swappers):
        name, args = calls[n % len(calls)]
        if calls is RACE_CALLS and n % 7 == 0:
            name, args = "write_file", {"path": f"sub/new-{n}.txt", "content": "new\n"}
        n += 1
        try:
            out = await call_tool(ctx, name, args)
        except Exception as exc:  # the engine must turn every failure into an outcome
            crashes.append(f"{name}({args}): {exc!r}")
        else:
            results.append((name, args, out))
    return results, crashes


def start_swapper(mode: str, root: Path, target: Path) -> subprocess.Popen[str]:
    """One SWAPPER process of `mode` on root, for two seconds."""
    return subprocess.Popen(
        [sys.executable, "-c", SWAPPER, mode, str(root), str(target), "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def race(
    tree: Tree,
    tmp_path: Path,
    modes: list[str],
    calls: list[tuple[str, dict[str, str]]] = RACE_CALLS,
) -> list[tuple[str, dict[str, str], ToolOutcome]]:
    """`calls`, round and round, while the swappers of `modes` run (two seconds), checked
    for what must hold whatever the timing: every call returned an outcome (no exception),
    every error is one the agent can read, nothing outside changed, and the race was real."""
    wt = tree.worktree
    (wt / "sub").mkdir()
    (wt / "sub" / "f.txt").write_text("inside\n")
    (wt / "file.txt").write_text("inside file\n")
    tree.ctx.meter = DiskMeter(wt, Quota())  # the quota's walks and charges race too
    before = snapshot(tree.outside, tree.secret)
    top = sorted(p.name for p in tmp_path.iterdir())
    targets = {"folder": tree.outside, "link": tree.secret, "hard": tree.secret}
    swappers = [start_swapper(mode, wt, targets[mode]) for mode in modes]
    try:
        results, crashes = await bounded(
            lambda: hammer(tree.ctx, swappers, calls), 40, "the tool calls during the race"
        )
    finally:
        for proc in swappers:
            if proc.poll() is None:
                proc.kill()
        reports = [proc.communicate(timeout=10) for proc in swappers]
    assert [p.returncode for p in swappers] == [0] * len(modes), reports
    assert all(int(out) > 100 for out, _ in reports), reports  # the swaps really happened
    assert not crashes, crashes[:5]
    assert len(results) >= 200
    assert snapshot(tree.outside, tree.secret) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == top
    unclear = [
        (name, args, out.content)
        for name, args, out in results
        if out.is_error
        and not out.content.startswith("denied:")
        and " failed: " not in out.content
        and "occurs 0 times" not in out.content
    ]
    assert not unclear, unclear[:5]
    # The race was real: reads through the swapped path both went through and were denied.
    path = "sub/f.txt" if "folder" in modes else "file.txt"
    reads = [out for name, args, out in results if name == "read_file" and args["path"] == path]
    assert any(not o.is_error for o in reads) and any(o.is_error for o in reads)
    return results


async def test_links_swapped_in_while_the_tools_run(tree: Tree, tmp_path: Path) -> None:
    results = await race(tree, tmp_path, ["folder", "link"])
    leaked = [
        (name, args, out.content[:200]) for name, args, out in results if SECRET in out.content
    ]
    assert not leaked, leaked[:5]
    reads = [out for name, args, out in results if name == "read_file" and not out.is_error]
    assert {o.content for o in reads} <= {"inside\n", "inside file\n"}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_sandboxed_command_cannot_plant_a_hard_link_to_anything_outside(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    # The refusal of hard-linked files guards against links planted from outside; it cannot
    # be made race-free (a rename can drop a file's link count before its old name stops
    # resolving). What keeps agents from racing it: their commands cannot make such a link
    # at all, not even to what their sandbox shows them read-only (another mount: EXDEV).
    async with confined(request, tmp_path, backend, Quota()) as box:
        targets = ["/usr/bin/env", "/etc/passwd", sys.executable, str(Path(sys.prefix))]
        script = "; ".join(f"ln {t} hard{n} && echo LINKED{n}" for n, t in enumerate(targets))
        out = await run(box, script)
        assert "LINKED" not in out.content, out.content
        assert not any(box.worktree.glob("hard*"))
        made = await run(box, "echo inside > a.txt && ln a.txt b.txt && echo LINKED")
        assert "LINKED" in made.content  # a link inside the worktree is allowed...
        read = await call_tool(box.ctx, "read_file", {"path": "b.txt"})
        refused(read, "denied", "hard-linked")  # ...and still never read through


# -- B. special files, deep and wide trees ----------------------------------------------

SPECIAL = ["fifo", "socket", "null", "zero", "full"]
DEVICES = {"null": 3, "zero": 5, "full": 7}  # minors of /dev/null, /dev/zero, /dev/full
KIND_WORD = {
    "fifo": "FIFO",
    "socket": "socket",
    "null": "character device",
    "zero": "character device",
    "full": "character device",
}


def make_special(path: Path, kind: str) -> None:
    """A FIFO, a unix socket or (as root) a character device like /dev/null at path."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        # Bound through the folder's descriptor: a socket's path may hold only 108 bytes.
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(f"/proc/self/fd/{fd}/{path.name}")
        finally:
            os.close(fd)
    else:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, DEVICES[kind]))


@pytest.mark.parametrize("kind", SPECIAL)
async def test_a_special_file_is_refused_at_once_and_named(tree: Tree, kind: str) -> None:
    rel = "calc/helpers.py"  # a name an agent would open (and no kind's word in it)
    path = tree.worktree / rel
    make_special(path, kind)
    mode = path.lstat().st_mode
    for name, extra in (
        ("read_file", {}),
        ("edit_file", {"search": "a", "replace": "b"}),
        ("write_file", {"content": "x = 1\n"}),
        ("search_code", {"pattern": "a"}),
    ):
        out = await quick(tree.ctx, name, path=rel, **extra)
        assert out.is_error and out.content.startswith("denied:"), (name, out.content)
        assert KIND_WORD[kind] in out.content, (
            f"{name} on a {kind}: {out.content!r} does not say it is a {KIND_WORD[kind]}"
        )
    assert path.lstat().st_mode == mode  # still there, not replaced by a regular file


def special_folder(root: Path) -> Path:
    folder = root / "special"
    folder.mkdir()
    for kind in SPECIAL:
        make_special(folder / kind, kind)
    (folder / "devzero").symlink_to("/dev/zero")
    (folder / "to_fifo").symlink_to("fifo")
    (folder / "needle.py").write_text("NEEDLE = 1\n")
    return folder


async def test_a_listing_marks_special_files(tree: Tree) -> None:
    special_folder(tree.worktree)
    out = await quick(tree.ctx, "list_files", path="special")
    lines = set(out.content.splitlines())
    expected = {
        "special/fifo (a FIFO)",
        "special/socket (a socket)",
        "special/null (a character device)",
        "special/zero (a character device)",
        "special/full (a character device)",
        "special/devzero (symbolic link)",
        "special/to_fifo (symbolic link)",
        "special/needle.py",
    }
    assert expected <= lines, out.content


async def test_a_search_over_special_files_finishes(tree: Tree) -> None:
    special_folder(tree.worktree)
    started = time.monotonic()
    out = await quick(tree.ctx, "search_code", pattern="NEEDLE")
    assert "special/needle.py:1: NEEDLE = 1" in out.content
    assert time.monotonic() - started < 5
    # The quota's walk over the same tree returns too, and counts no device's "size".
    meter = DiskMeter(tree.worktree, Quota(disk_bytes=MB))
    assert await bounded(meter.measure_async, 5, "the quota's measure") is None


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace(
        make_repo(tmp_path / "repo"), tmp_path / "repo" / ".factory" / "worktrees"
    )
    yield workspace
    workspace.close()


async def test_the_commit_leaves_special_files_out_and_does_not_hang(ws: Workspace) -> None:
    wt = await ws.create("s", "t")
    (wt.path / "new.py").write_text("X = 1\n")
    (wt.path / "calc" / "more.py").write_text("Y = 2\n")
    for folder in (wt.path, wt.path / "calc"):
        for kind in SPECIAL:
            make_special(folder / f"left_{kind}", kind)
    info = await bounded(
        lambda: ws.commit(wt, "commit\n", DiskMeter(wt.path, Quota())), 20, "the commit"
    )
    assert info is not None and info.files == ["calc/more.py", "new.py"]
    tracked = git(ws.root, "ls-tree", "-r", "--name-only", info.commit).split()
    assert "new.py" in tracked and not [name for name in tracked if "left_" in name]


@pytest.mark.parametrize("kind", ["fifo", "socket", "zero"])
async def test_a_tracked_file_replaced_by_a_special_file_is_a_clear_commit_error(
    ws: Workspace, kind: str
) -> None:
    wt = await ws.create("s", f"t-{kind}")
    (wt.path / "calc" / "ops.py").unlink()
    make_special(wt.path / "calc" / "ops.py", kind)
    with pytest.raises(WorkspaceError, match=r"calc/ops\.py.*regular files"):
        await bounded(lambda: ws.commit(wt, "commit\n"), 20, "the commit")
    assert ws.ref_sha(f"refs/heads/{wt.branch}") == wt.base_commit  # nothing committed


async def test_phantom_imports_reads_no_special_file_and_nothing_outside(tmp_path: Path) -> None:
    root = tmp_path / "branch"
    root.mkdir()
    (root / "pyproject.toml").write_text(
        '[project]\nname = "x"\nversion = "1"\ndependencies = ["pyyaml"]\n'
    )
    os.mkfifo(root / "requirements-dev.txt")  # globbed as a requirements file, then refused
    (root / "ok.py").write_text("import requests\nimport yaml\n")
    evil = tmp_path / "evil.py"
    evil.write_text("import evilpkg\n")
    os.mkfifo(root / "fifo.py")
    (root / "zero.py").symlink_to("/dev/zero")
    make_special(root / "dev.py", "zero")
    make_special(root / "sock.py", "socket")
    (root / "link.py").symlink_to(evil)
    os.link(evil, root / "hard.py")
    changed = [
        "ok.py",
        "fifo.py",
        "zero.py",
        "dev.py",
        "sock.py",
        "link.py",
        "hard.py",
        "../evil.py",
        str(evil),
        "missing.py",
    ]

    async def scan() -> dict[str, list[str]]:
        return await asyncio.to_thread(phantom_imports, root, changed)

    assert await bounded(scan, 5, "phantom_imports") == {"requests": ["ok.py"]}


def nest(top: Path, depth: int, leaf: tuple[str, str]) -> None:
    """top/d/d/.../d (depth folders), with the file leaf = (name, text) at the bottom."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        file = os.open(leaf[0], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
        os.write(file, leaf[1].encode())
        os.close(file)
    finally:
        os.close(fd)


async def test_a_folder_nested_500_deep_is_cut_not_followed_to_the_bottom(tree: Tree) -> None:
    wt = tree.worktree
    (wt / "top.txt").write_text("NEEDLE top\n")
    nest(wt / "zdeep", 500, ("bottom.txt", "NEEDLE bottom\n"))  # walked last, by name
    listing = await quick(tree.ctx, "list_files", path=".")
    assert "top.txt" in listing.content.splitlines()
    assert "listing cut" in listing.content and "nested more than" in listing.content
    search = await quick(tree.ctx, "search_code", pattern="NEEDLE")
    assert "top.txt:1: NEEDLE top" in search.content
    assert "search cut" in search.content and "bottom" not in search.content


async def test_fifty_thousand_files_are_listed_and_searched_within_bounds(tree: Tree) -> None:
    wt = tree.worktree
    (wt / "many").mkdir()
    fd = os.open(wt / "many", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(50_000):
            file = os.open(f"f{i:05d}.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
            os.write(file, b"hit\n")
            os.close(file)
    finally:
        os.close(fd)
    listing = await quick(tree.ctx, "list_files", 10, path="many")
    assert listing.content.startswith("many/f00000.txt\n")
    assert "more characters cut" in listing.content
    assert len(listing.content) < MAX_RESULT + 100
    search = await quick(tree.ctx, "search_code", 10, pattern="hit", path="many")
    assert search.content.startswith("many/f00000.txt:1: hit")
    assert "more matches cut" in search.content
    # A files quota far below the tree's size is found at once, however large the tree.
    meter = DiskMeter(wt, Quota(files=1000))
    over = await bounded(meter.measure_async, 5, "the quota's measure")
    assert over is not None and over.limit == "files"
    metered = ToolContext(worktree=wt, sandbox=tree.ctx.sandbox, meter=meter)
    out = await quick(metered, "write_file", path="one-more.txt", content="x\n")
    assert out.limit is not None and out.limit.limit == "files"
    assert not (wt / "one-more.txt").exists()


# -- C. quotas --------------------------------------------------------------------------


async def metered(tree: Tree, quota: Quota) -> ToolContext:
    """The tree's tools within quota; the same meter is the (none) sandbox's."""
    meter = DiskMeter(tree.worktree, quota)
    sandbox = await NoneBackend().open(
        SandboxContext(worktree=tree.worktree, agent_id="quota", meter=meter)
    )
    return ToolContext(worktree=tree.worktree, sandbox=sandbox, meter=meter)


def over_limit(out: ToolOutcome, limit: str) -> Over:
    """The outcome reports the quota `limit` as reached, as an Over the timeline records."""
    assert isinstance(out.limit, Over), (
        f"the outcome's limit is {out.limit!r}, not an Over; content: {out.content[:300]!r}"
    )
    assert out.limit.limit == limit, out.limit
    assert out.is_error
    return out.limit


async def test_one_write_larger_than_the_write_quota_is_refused(tree: Tree) -> None:
    ctx = await metered(tree, Quota(disk_bytes=MB, files=1000, write_bytes=1000))
    wt = tree.worktree
    out = await tool(ctx, "write_file", path="big.txt", content="x" * 1001)
    over = over_limit(out, "write")
    assert (over.used, over.allowed) == (1001, 1000)
    assert "refused" in out.content and "1,000 bytes allowed" in out.content
    assert not (wt / "big.txt").exists()
    # An edit writes the whole file back: one that makes it larger than a write may be is
    # refused the same way.
    ops = wt / "calc" / "ops.py"
    before = ops.read_text()
    out = await tool(
        ctx,
        "edit_file",
        path="calc/ops.py",
        search="return a + b",
        replace="return a + b" + " " * 1000,
    )
    over_limit(out, "write")
    assert ops.read_text() == before
    # Exactly the limit passes.
    assert not (await tool(ctx, "write_file", path="exact.txt", content="y" * 1000)).is_error
    assert (wt / "exact.txt").stat().st_size == 1000


async def test_writes_that_together_pass_the_disk_quota_are_refused(tree: Tree) -> None:
    wt = tree.worktree
    used, _ = holds(wt)
    quota = used + 10_000
    ctx = await metered(tree, Quota(disk_bytes=quota, files=1000, write_bytes=8000))
    assert not (await tool(ctx, "write_file", path="a.txt", content="a" * 6000)).is_error
    assert not (await tool(ctx, "write_file", path="b.txt", content="B" + "b" * 2999)).is_error
    out = await tool(ctx, "write_file", path="c.txt", content="c" * 2000)
    over = over_limit(out, "disk")
    assert over.allowed == quota and over.used > quota
    assert not (wt / "c.txt").exists()
    out = await tool(ctx, "edit_file", path="b.txt", search="B", replace="B" + "x" * 2000)
    over_limit(out, "disk")
    assert (wt / "b.txt").stat().st_size == 3000
    # Room made by shrinking a file is room again.
    assert not (await tool(ctx, "write_file", path="a.txt", content="a" * 100)).is_error
    assert not (await tool(ctx, "write_file", path="c.txt", content="c" * 2000)).is_error
    assert holds(wt)[0] <= quota


async def test_new_files_past_the_files_quota_are_refused(tree: Tree) -> None:
    wt = tree.worktree
    _, entries = holds(wt)
    ctx = await metered(tree, Quota(disk_bytes=MB, files=entries + 3, write_bytes=1000))
    for i in range(3):
        assert not (await tool(ctx, "write_file", path=f"n{i}.txt", content="n\n")).is_error
    over = over_limit(await tool(ctx, "write_file", path="n3.txt", content="n\n"), "files")
    assert over.allowed == entries + 3
    assert not (wt / "n3.txt").exists()
    # Overwriting a file adds none.
    assert not (await tool(ctx, "write_file", path="n0.txt", content="again\n")).is_error
    assert holds(wt)[1] <= entries + 3


async def test_a_write_refused_by_the_files_quota_leaves_no_folders_behind(tree: Tree) -> None:
    wt = tree.worktree
    _, entries = holds(wt)
    ctx = await metered(tree, Quota(disk_bytes=MB, files=entries, write_bytes=1000))
    out = await tool(ctx, "write_file", path="n1/n2/n3/x.txt", content="x\n")
    over_limit(out, "files")
    assert not (wt / "n1").exists(), "the refused write left the folders n1/n2/n3 in the worktree"
    assert holds(wt)[1] <= entries


async def test_the_folders_a_write_makes_count_toward_the_files_quota(tree: Tree) -> None:
    wt = tree.worktree
    _, entries = holds(wt)
    ctx = await metered(tree, Quota(disk_bytes=MB, files=entries + 2, write_bytes=1000))
    assert ctx.meter is not None and ctx.meter.measure() is None  # as after any command
    out = await tool(ctx, "write_file", path="p1/p2/p3/p4/p5/x.txt", content="x\n")
    held = holds(wt)[1]
    assert held <= entries + 2, (
        f"the worktree holds {held} entries, over its quota of {entries + 2}, after "
        f"write_file answered {out.content!r}"
    )


@dataclass
class Confined:
    ctx: ToolContext
    worktree: Path
    meter: DiskMeter


@asynccontextmanager
async def confined(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, quota: Quota, wall: float = 20.0
) -> AsyncIterator[Confined]:
    """A real worktree, a real sandbox of `backend` and file tools, sharing one meter."""
    repo, worktree = make_worktree(tmp_path)
    limits = Limits(wall_seconds=wall, memory_mb=256, max_processes=64, output_bytes=200_000)
    # docker's fixture fails (never skips) the test when no daemon answers.
    image = request.getfixturevalue("docker_image") if backend == "docker" else None
    chosen = make_backend(backend, limits=limits, image=image, root=repo)  # type: ignore[arg-type]
    meter = DiskMeter(worktree, quota)
    sandbox = await chosen.open(
        SandboxContext(
            worktree=worktree,
            agent_id=f"quota-{backend}",
            meter=meter,
            read_only=[worktree / ".git", worktree / ".factory.toml"],
        )
    )
    owner = chosen.run_as.owner if chosen.run_as is not None else None
    try:
        yield Confined(
            ToolContext(
                worktree=worktree, sandbox=sandbox, limits=limits, meter=meter, owner=owner
            ),
            worktree,
            meter,
        )
    finally:
        await sandbox.close()


async def run(box: Confined, command: str, timeout: float | None = None) -> ToolOutcome:
    args: dict[str, Any] = {"command": command}
    if timeout is not None:
        args["timeout"] = timeout
    return await asyncio.wait_for(call_tool(box.ctx, "run", args), 60)


SMALL = Quota(disk_bytes=MB, files=1000, write_bytes=100 * KB)
# A background writer that grows a file while the command itself only sleeps.
GROW = "(while :; do head -c 100K /dev/zero >> grow; sleep 0.05; done) & sleep 30"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_command_writing_past_the_disk_quota_in_one_go_is_stopped(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    async with confined(request, tmp_path, backend, SMALL) as box:
        out = await run(box, "head -c 50M /dev/zero > big; echo rc=$?")
        # The kernel cut the write at RLIMIT_FSIZE (SIGXFSZ: exit status 128 + 25).
        cut = "rc=153" in out.content or "File size limit exceeded" in out.content
        assert cut, out.content
        over_limit(out, "disk")
        assert "stopped: quota" in out.content
        assert (box.worktree / "big").stat().st_size <= MB
        assert holds(box.worktree)[0] <= MB + 64 * KB


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_command_making_too_many_files_is_stopped(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    async with confined(request, tmp_path, backend, SMALL) as box:
        # It lingers after making them, so that the poll (not only the measure after the
        # command) is what stops it, on every run.
        started = time.monotonic()
        out = await run(box, "for i in $(seq 1 5000); do : > f$i; done; echo done; sleep 10")
        took = time.monotonic() - started
        assert "stopped: quota" in out.content, out.content[:300]
        assert took < 8, f"stopped after {took:.1f} s, not at the first polls"
        over_limit(out, "files")


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_poll_stops_a_command_whose_background_writer_grows_a_file(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    async with confined(request, tmp_path, backend, SMALL) as box:
        started = time.monotonic()
        out = await run(box, GROW)
        took = time.monotonic() - started
        assert "stopped: quota" in out.content, out.content[:300]
        assert took < 8, f"stopped after {took:.1f} s, not at the first polls (wall 20 s)"
        over_limit(out, "disk")
        grown = box.worktree / "grow"
        size = grown.stat().st_size
        await asyncio.sleep(0.6)
        assert grown.stat().st_size == size <= MB  # the writer is dead


@pytest.mark.parametrize("backend", BACKENDS)
async def test_tmp_in_the_sandbox_is_capped_at_the_disk_quota(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    async with confined(request, tmp_path, backend, SMALL) as box:
        # Each file is under RLIMIT_FSIZE (the quota): only the tmpfs's size can stop them.
        out = await run(
            box, "for i in 1 2 3 4; do head -c 600K /dev/zero > /tmp/f$i || echo FAILED$i; done"
        )
        assert "No space left on device" in out.content and "FAILED2" in out.content, out.content


@pytest.mark.parametrize("backend", BACKENDS)
async def test_dev_shm_in_the_sandbox_is_capped_at_the_disk_quota(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    # agents/sandbox/quota.py: "Scratch space (/tmp, /dev/shm) is a tmpfs of at most the
    # disk quota in both backends".
    async with confined(request, tmp_path, backend, SMALL) as box:
        out = await run(
            box,
            "for i in 1 2 3 4; do head -c 600K /dev/zero > /dev/shm/f$i || "
            "echo FAILED$i; done; df -k /dev/shm",
        )
        assert "No space left on device" in out.content and "FAILED2" in out.content, out.content


@pytest.mark.parametrize("backend", BACKENDS)
async def test_scratch_space_is_wiped_after_each_command(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    # agents/sandbox/quota.py: scratch space is "wiped after each command": what one command
    # leaves there does not carry over, nor add up across commands.
    async with confined(request, tmp_path, backend, SMALL) as box:
        first = await run(box, "echo left > /tmp/left && echo left > /dev/shm/left && echo WROTE")
        assert "WROTE" in first.content, first.content
        out = await run(
            box, "test -e /tmp/left && echo TMP-KEPT; test -e /dev/shm/left && echo SHM-KEPT; true"
        )
        assert "KEPT" not in out.content, out.content


@pytest.mark.parametrize("backend", BACKENDS)
async def test_files_nested_deeper_than_a_walk_goes_still_count(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    async with confined(request, tmp_path, backend, SMALL) as box:
        out = await run(
            box,
            "p=$(printf 'd/%.0s' $(seq 1 140)); mkdir -p $p && "
            "for i in 1 2 3; do head -c 400K /dev/zero > $p/big$i; done; echo made",
        )
        assert "made" in out.content, out.content
        assert isinstance(out.limit, Over) and "stopped: quota" in out.content, out.content
        refused(await tool(box.ctx, "write_file", path="w.txt", content="w\n"), "refused")


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_folder_made_again_within_one_command_is_measured_again(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    async with confined(request, tmp_path, backend, SMALL) as box:
        first = await run(box, "mkdir x && echo a > x/a")
        assert not first.is_error, first.content
        # The same folder removed and made again, then filled past the quota (each file
        # under RLIMIT_FSIZE), faster than the first poll.
        out = await run(
            box,
            "rm -rf x && mkdir x && for i in 1 2 3; do "
            "head -c 600K /dev/zero > x/f$i; done; echo made",
        )
        assert "made" in out.content, out.content
        assert holds(box.worktree)[0] > 1.5 * MB  # the worktree really is over
        over_limit(out, "disk")
        refused(await tool(box.ctx, "write_file", path="w.txt", content="w\n"), "refused")


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_command_cut_short_for_another_reason_reports_no_quota_limit(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    async with confined(request, tmp_path, backend, SMALL) as box:
        out = await run(box, "sleep 5", timeout=1)
        assert out.sandbox is not None and out.sandbox.stop == "timeout", out.content
        assert out.limit is None, f"a timeout reported the quota limit {out.limit!r}"
        out = await run(box, "head -c 1000000 /dev/zero | tr '\\0' x")
        assert out.sandbox is not None and out.sandbox.stop == "output_cap", out.content[:200]
        assert out.limit is None, f"an output cap reported the quota limit {out.limit!r}"


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested-140-deep"])
async def test_the_commit_is_refused_over_the_quota(ws: Workspace, nested: bool) -> None:
    wt = await ws.create("s", "t")
    folder = wt.path
    if nested:
        nest(wt.path / "deep", 140, ("leaf.txt", "leaf\n"))
        folder = wt.path / "deep" / "/".join(["d"] * 140)
    for i in range(3):
        (folder / f"blob{i}.bin").write_bytes(b"\0" * 400 * KB)
    meter = DiskMeter(wt.path, SMALL)
    with pytest.raises(WorkspaceError, match="not committed: the worktree holds more than"):
        await bounded(lambda: ws.commit(wt, "commit\n", meter), 20, "the commit")
    assert ws.ref_sha(f"refs/heads/{wt.branch}") == wt.base_commit


# -- C, end to end: an agent over its quota ---------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_agent_over_its_quota_reads_the_refusal_and_the_store_records_it(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    backend: str,
    store: Store,
    server: ScriptedServer,
) -> None:
    quota = Quota(disk_bytes=MB, files=1000, write_bytes=1000)
    async with confined(request, tmp_path, backend, quota) as box:
        server.script(
            call("write_file", {"path": "big.txt", "content": "x" * 2000}),
            # Cut short, but not for the quota: a sandbox limit, no quota limit.
            call("run", {"command": "sleep 5", "timeout": 1}),
            call("run", {"command": GROW}),
            call("finish", {"summary": "stopped at the quota"}),
        )
        runner = AgentRunner(
            store=store,
            agent_id="s.t.1",
            spec_id="s",
            task_id="t",
            role="implementer",
            key="s/t",
            tools=box.ctx,
            limits=AgentLimits(),
            router=ModelRouter(
                roles={"implementer": "openai/gpt-4o-mini"},
                api_base=server.api_base,
                api_key="test-key",
                max_retries=3,
                backoff_base=0.01,
            ),
            opening=[{"role": "system", "content": "work"}, {"role": "user", "content": "task"}],
        )
        result = await asyncio.wait_for(runner.run(), 60)
        assert not (box.worktree / "big.txt").exists()
    assert result.status == "finished", result
    events = [e.event for e in await store.read_events(agent_id="s.t.1")]
    limits = [(e.tool, e.limit) for e in events if isinstance(e, ev.LimitReached)]
    assert limits == [("write_file", "write"), ("run", "disk")]
    tools = [e for e in events if isinstance(e, ev.ToolExecuted)]
    assert tools[0].is_error and "refused" in tools[0].result and "1,000 bytes" in tools[0].result
    assert tools[1].is_error and "stopped: timeout" in tools[1].result
    assert tools[2].is_error and "stopped: quota" in tools[2].result
    assert [e.stop for e in events if isinstance(e, ev.SandboxLimited)] == ["timeout"]
    # The model read the refusal in the request of its next turn.
    assert "refused" in server.requests[1]["messages"][-1]["content"]
