"""Worktrees, branches and the engine's own commits, on real git repositories."""

from __future__ import annotations

import os
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
    # git itself agrees with the tree we wrote in-process.
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
