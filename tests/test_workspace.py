"""Worktrees, branches and the engine's own commits, on real git repositories."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from agents.provenance import trailer_block
from agents.workspace import Workspace, WorkspaceError
from tests.conftest import git


@pytest.fixture
def ws(repo: Path) -> Workspace:
    return Workspace(repo, repo / ".factory" / "worktrees")


async def test_worktree_on_its_own_branch_from_main(ws: Workspace, repo: Path) -> None:
    wt = await ws.create("spec", "task")
    assert wt.path == repo / ".factory" / "worktrees" / "spec--task"
    assert wt.branch == "factory/spec/task"
    assert wt.base_commit == git(repo, "rev-parse", "main").strip()
    assert (wt.path / "calc" / "ops.py").is_file()
    assert git(wt.path, "rev-parse", "--abbrev-ref", "HEAD").strip() == "factory/spec/task"


async def test_two_worktrees_never_see_each_others_uncommitted_files(ws: Workspace) -> None:
    a = await ws.create("s", "a")
    b = await ws.create("s", "b")
    (a.path / "secret_a.py").write_text("A = 1\n")
    (a.path / "calc" / "ops.py").write_text("changed in a\n")
    assert not (b.path / "secret_a.py").exists()
    assert "changed in a" not in (b.path / "calc" / "ops.py").read_text()
    assert git(b.path, "status", "--porcelain").strip() == ""


async def test_commit_writes_changes_with_trailers(ws: Workspace, repo: Path) -> None:
    wt = await ws.create("s", "t")
    (wt.path / "calc" / "ops.py").write_text("def add(a, b):\n    return b + a\n")
    (wt.path / "calc" / "new" / "deep.py").parent.mkdir()
    (wt.path / "calc" / "new" / "deep.py").write_text("X = 1\n")
    (wt.path / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(wt.path / "run.sh", 0o755)
    (wt.path / "tests" / "__init__.py").unlink()
    trailers = {"Factory-Agent": "s.t.1", "Factory-Task": "s/t", "Factory-Spec": "s",
                "Factory-Model": "m", "Factory-Tokens": "12", "Factory-Cost": "0.001"}
    info = await ws.commit(wt, f"Do it\n\n{trailer_block(trailers)}\n")
    assert info is not None
    assert sorted(info.files) == ["calc/new/deep.py", "calc/ops.py", "run.sh",
                                  "tests/__init__.py"]
    numstat = [line.split("\t") for line in
               git(repo, "diff", "--numstat", wt.base_commit, info.commit).splitlines()]
    assert (info.insertions, info.deletions) == (sum(int(n[0]) for n in numstat),
                                                 sum(int(n[1]) for n in numstat))
    assert git(repo, "rev-parse", "factory/s/t").strip() == info.commit
    # The repository is sound after the engine's worktree and commit.
    assert git(repo, "fsck", "--strict", "--no-dangling").strip() == ""
    names = git(repo, "diff", "--name-status", wt.base_commit, info.commit).split("\n")
    assert "D\ttests/__init__.py" in names and "A\tcalc/new/deep.py" in names
    assert git(repo, "ls-tree", info.commit, "run.sh").startswith("100755")
    parsed = git(repo, "log", "-1", "--format=%(trailers:key=Factory-Task,valueonly)",
                 info.commit)
    assert parsed.strip() == "s/t"
    assert git(repo, "show", f"{info.commit}:calc/ops.py") == \
        "def add(a, b):\n    return b + a\n"


async def test_commit_with_no_change_is_none(ws: Workspace) -> None:
    wt = await ws.create("s", "t")
    assert await ws.commit(wt, "nothing") is None


async def test_commit_after_a_lost_record_reuses_the_commit(ws: Workspace) -> None:
    wt = await ws.create("s", "t")
    (wt.path / "n.py").write_text("n = 1\n")
    first = await ws.commit(wt, "once")
    again = await ws.commit(wt, "twice")
    assert first is not None and again is not None and again.commit == first.commit


async def test_remove_deletes_worktree_and_gits_record(ws: Workspace, repo: Path) -> None:
    wt = await ws.create("s", "t")
    ws.remove(wt.path)
    assert not wt.path.exists()
    assert str(wt.path) not in git(repo, "worktree", "list")


async def test_clashing_path_or_branch_is_a_task_error(ws: Workspace, repo: Path) -> None:
    git(repo, "branch", "factory/s/taken")
    with pytest.raises(WorkspaceError, match="a branch of that name exists"):
        await ws.create("s", "taken")
    (repo / ".factory" / "worktrees" / "s--busy").mkdir(parents=True)
    with pytest.raises(WorkspaceError, match="path already exists"):
        await ws.create("s", "busy")
    # Other tasks are unaffected.
    assert (await ws.create("s", "free")).path.is_dir()


async def test_locked_worktree_is_not_removed(ws: Workspace, repo: Path) -> None:
    wt = await ws.create("s", "t")
    git(repo, "worktree", "lock", "--reason", "in use by a human", str(wt.path))
    with pytest.raises(WorkspaceError, match="locked"):
        ws.remove(wt.path)
    assert wt.path.is_dir()


async def test_orphans_are_found(ws: Workspace) -> None:
    keep = await ws.create("s", "keep")
    lost = await ws.create("s", "lost")
    assert ws.orphans({keep.path.resolve()}) == [lost.path]


async def test_a_worktree_is_git_worktree_adds_own(ws: Workspace, repo: Path) -> None:
    wt = await ws.create("s", "t")
    listed = git(repo, "worktree", "list", "--porcelain").split("\n\n")
    assert f"worktree {wt.path}\nHEAD {wt.base_commit}\nbranch refs/heads/{wt.branch}" \
        in listed
    assert git(wt.path, "status", "--porcelain") == ""
    assert git(repo, "worktree", "list", "--porcelain").count("locked") == 0


async def test_creates_and_removes_at_once_take_turns(ws: Workspace, repo: Path) -> None:
    """git 2.39 fails adds that overlap other adds or removes; the engine's take turns."""
    async def one(i: int) -> str:
        wt = await ws.create("s", f"c{i}")
        (wt.path / f"f{i}.txt").write_text(f"{i}\n")
        info = await ws.commit(wt, f"c{i}")
        assert info is not None
        ws.remove(wt.path)  # often while another task's add holds the turn
        return info.commit

    commits = await asyncio.gather(*(one(i) for i in range(16)))
    assert len(set(commits)) == 16
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert not any((repo / ".factory" / "worktrees").iterdir())


async def test_a_remove_during_an_add_leaves_the_record_to_git(ws: Workspace,
                                                               repo: Path) -> None:
    wt = await ws.create("s", "t")
    async with ws.add_lock:  # as while another task's `git worktree add` runs
        ws.remove(wt.path)
        assert not wt.path.exists()
        assert not any((repo / ".factory" / "worktrees").iterdir())
        assert "prunable" in git(repo, "worktree", "list")  # git's record, left for git
    assert str(wt.path) not in git(repo, "worktree", "list")  # forgotten as the turn ended
    await ws.discard("s", "t")
    again = await ws.create("s", "t")
    assert again.path == wt.path
    assert git(repo, "worktree", "list").count(str(wt.path)) == 1


async def test_a_locked_worktree_is_not_set_aside_either(ws: Workspace, repo: Path) -> None:
    wt = await ws.create("s", "t")
    git(repo, "worktree", "lock", "--reason", "in use by a human", str(wt.path))
    async with ws.add_lock:
        with pytest.raises(WorkspaceError, match="in use by a human"):
            ws.remove(wt.path)
    assert wt.path.is_dir()


async def test_a_surviving_worktree_is_attached(ws: Workspace) -> None:
    wt = await ws.create("s", "t")
    (wt.path / "work.py").write_text("w = 1\n")
    assert ws.attach("s", "t", wt.base_commit) == wt
    assert ws.attach("s", "other", wt.base_commit) is None


async def test_an_add_cut_short_is_not_attached_and_discard_clears_it(
        ws: Workspace, repo: Path) -> None:
    wt = await ws.create("s", "t")
    # What `git worktree add` leaves when it is killed before it is done.
    git(repo, "worktree", "lock", "--reason", "initializing", str(wt.path))
    assert ws.attach("s", "t", wt.base_commit) is None
    await ws.discard("s", "t")
    assert not wt.path.exists() and not ws.branch_exists(wt.branch)
    assert str(wt.path) not in git(repo, "worktree", "list")
    assert (await ws.create("s", "t")).path == wt.path


async def test_a_half_gone_worktree_is_removed_and_forgotten(ws: Workspace,
                                                             repo: Path) -> None:
    no_pointer = await ws.create("s", "a")
    (no_pointer.path / ".git").unlink()
    no_folder = await ws.create("s", "b")
    git(repo, "worktree", "lock", "--reason", "initializing", str(no_folder.path))
    shutil.rmtree(no_folder.path)
    ws.remove(no_pointer.path)
    ws.remove(no_folder.path)
    assert not no_pointer.path.exists()
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    # Their branches are discard's to delete, and it does.
    await ws.discard("s", "a")
    await ws.discard("s", "b")
    assert git(repo, "branch", "--list", "factory/*") == ""


async def test_a_checkout_git_refuses_is_a_task_error_and_leaves_nothing(
        ws: Workspace, repo: Path) -> None:
    (repo / ".gitattributes").write_text("*.bad filter=bad\n")
    (repo / "x.bad").write_text("x\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a file only a failing filter checks out")
    git(repo, "config", "filter.bad.smudge", "false")
    git(repo, "config", "filter.bad.required", "true")
    with pytest.raises(WorkspaceError, match="smudge filter bad failed"):
        await ws.create("s", "t")
    assert not ws.worktree_path("s", "t").exists()
    assert not ws.branch_exists("factory/s/t")
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


async def test_what_git_will_not_remove_outside_the_engines_folder_is_left(
        ws: Workspace, repo: Path) -> None:
    with pytest.raises(WorkspaceError, match="is a main working tree"):
        ws.remove(repo)
    stray = repo / "calc"
    with pytest.raises(WorkspaceError, match="not a working tree"):
        ws.remove(stray)
    assert (repo / "calc" / "ops.py").is_file() and (repo / ".git").is_dir()


async def test_a_cancelled_create_ends_its_turn_only_when_git_is_done(
        ws: Workspace, repo: Path) -> None:
    job = asyncio.ensure_future(ws.create("s", "t"))
    await asyncio.sleep(0)  # the job takes its turn and starts git
    assert ws.add_lock.locked()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert not ws.add_lock.locked()
    # git was let finish: no record half written for the next add to trip on.
    listed = git(repo, "worktree", "list", "--porcelain")
    assert "locked" not in listed and str(ws.worktree_path("s", "t")) in listed
    await ws.discard("s", "t")
    assert (await ws.create("s", "t")).path == ws.worktree_path("s", "t")
