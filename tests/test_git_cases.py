"""The engine's worktrees and commits against plain git, case by case.

For each case the same change is made twice from the same commit: (a) in a worktree made by
`Workspace.create` and committed by `Workspace.commit`, and (b) in a plain `git clone` of the
same repository, committed with `git add -A && git commit`. The two commits must have the
same tree (trees are named by their content, so the same id means the same files, modes and
links) and change the same paths; and the checkout the agent starts from must be the one
`git worktree add` and `git clone` give (smudge filters applied, modes, links).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agents.workspace import Workspace
from tests.conftest import PROJECT, git, make_repo


@dataclass(frozen=True)
class Case:
    change: Callable[[Path], None]  # what the agent does, in the root of its checkout
    files: dict[str, str] = field(default_factory=dict)  # committed before the agent starts
    seed: Callable[[Path], None] | None = None  # more of that commit (links, modes)
    config: dict[str, str] = field(default_factory=dict)  # the repository's (and clone's)
    committed: frozenset[str] = frozenset()  # paths the commit must change
    left_out: frozenset[str] = frozenset()  # paths it must not


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)


def ignores(root: Path) -> None:
    write(root, {"pkg/build/out.bin": b"\x00built", "pkg/src.py": "S = 2\n",
                 "keep.log": "kept\n", "debug.log": "noise\n", "pkg/keep.log": "kept too\n"})


def negation(root: Path) -> None:
    write(root, {"a.gen": "x\n", "pkg/wanted.gen": "w\n", "pkg/other.gen": "o\n",
                 "data/drop.csv": "1\n", "data/keep/me.csv": "2\n"})


def tracked_but_ignored(root: Path) -> None:
    write(root, {"vendor/lib.py": "changed = True\n", "vendor/new.py": "untracked\n"})


def vendored(root: Path) -> None:
    write(root, {"vendor/lib.py": "old = 1\n"})
    git(root, "add", "-f", "vendor/lib.py")  # tracked although an ignore rule matches it


def crlf(root: Path) -> None:
    write(root, {"notes.txt": b"one\r\ntwo\r\n", "raw.bin": b"one\r\ntwo\r\n"})


def filtered(root: Path) -> None:
    write(root, {"new.up": "written in lower case\n", "plain.txt": "not filtered\n"})


def links(root: Path) -> None:
    os.symlink("calc/ops.py", root / "ops_link.py")
    os.symlink("nowhere/at/all", root / "dangling")
    (root / "old_link").unlink()
    os.symlink("tests", root / "old_link")  # a link that now points elsewhere


def link_seed(root: Path) -> None:
    os.symlink("calc", root / "old_link")


def modes(root: Path) -> None:
    os.chmod(root / "calc" / "ops.py", 0o755)
    write(root, {"run.sh": "#!/bin/sh\necho run\n"})
    os.chmod(root / "run.sh", 0o755)
    os.chmod(root / "tool.sh", 0o644)


def mode_seed(root: Path) -> None:
    write(root, {"tool.sh": "#!/bin/sh\n"})
    os.chmod(root / "tool.sh", 0o755)


def file_to_folder(root: Path) -> None:
    (root / "calc" / "ops.py").unlink()
    write(root, {"calc/ops.py/__init__.py": "from .core import *\n",
                 "calc/ops.py/core.py": "def add(a, b):\n    return a + b\n"})
    shutil.rmtree(root / "tests")
    write(root, {"tests": "a file where a folder was\n"})


def deletions(root: Path) -> None:
    (root / "calc" / "ops.py").unlink()
    (root / "tests" / "__init__.py").unlink()
    shutil.rmtree(root / "docs")


CASES = {
    "nested-gitignore": Case(
        ignores, files={".gitignore": PROJECT[".gitignore"] + "*.log\n!keep.log\n",
                        "pkg/.gitignore": "build/\n", "pkg/__init__.py": ""},
        committed=frozenset({"pkg/src.py", "keep.log", "pkg/keep.log"}),
        left_out=frozenset({"pkg/build/out.bin", "debug.log"})),
    "negation": Case(
        negation, files={".gitignore": PROJECT[".gitignore"] + "*.gen\n/data/*\n!/data/keep/\n",
                         "pkg/.gitignore": "!wanted.gen\n"},
        committed=frozenset({"pkg/wanted.gen", "data/keep/me.csv"}),
        left_out=frozenset({"a.gen", "pkg/other.gen", "data/drop.csv"})),
    "tracked-but-ignored": Case(
        tracked_but_ignored, seed=vendored,
        files={".gitignore": PROJECT[".gitignore"] + "vendor/\n"},
        committed=frozenset({"vendor/lib.py"}), left_out=frozenset({"vendor/new.py"})),
    "eol": Case(
        crlf, files={".gitattributes": "*.txt text eol=lf\n"},
        committed=frozenset({"notes.txt", "raw.bin"})),
    "clean-smudge": Case(
        filtered, files={".gitattributes": "*.up filter=upper\n", "old.up": "shout\n"},
        config={"filter.upper.clean": "tr a-z A-Z", "filter.upper.smudge": "tr A-Z a-z"},
        committed=frozenset({"new.up", "plain.txt"})),
    "symlinks": Case(links, seed=link_seed,
                     committed=frozenset({"ops_link.py", "dangling", "old_link"})),
    "exec-bit": Case(modes, seed=mode_seed,
                     committed=frozenset({"calc/ops.py", "run.sh", "tool.sh"})),
    "file-replaced-by-folder": Case(
        file_to_folder,
        committed=frozenset({"calc/ops.py", "calc/ops.py/__init__.py", "calc/ops.py/core.py",
                             "tests", "tests/__init__.py", "tests/test_ops.py"})),
    "deletions": Case(deletions, files={"docs/a.md": "a\n", "docs/b/c.md": "c\n"},
                      committed=frozenset({"calc/ops.py", "tests/__init__.py", "docs/a.md",
                                           "docs/b/c.md"})),
}


def build(root: Path, case: Case) -> Path:
    """The user's repository: the demo project, then the case's own commit."""
    make_repo(root)
    for key, value in case.config.items():
        git(root, "config", key, value)
    write(root, dict(case.files))
    if case.seed is not None:
        case.seed(root)
    git(root, "add", "-A")
    git(root, "commit", "-q", "--allow-empty", "-m", "the case's repository")
    return root


def clone(repo: Path, dest: Path, case: Case) -> Path:
    # The repository's configuration in place before the clone checks anything out.
    options = [arg for key, value in case.config.items() for arg in ("-c", f"{key}={value}")]
    git(repo.parent, "clone", "-q", *options, str(repo), str(dest))
    return dest


def checkout(root: Path) -> dict[str, tuple[str, str | bytes]]:
    """Every file of a checkout as git wrote it: kind (file, exec, link) and content."""
    out: dict[str, tuple[str, str | bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            if name == ".git":
                continue
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if full.is_symlink():
                out[rel] = ("link", os.readlink(full))
            else:
                kind = "exec" if full.stat().st_mode & stat.S_IXUSR else "file"
                out[rel] = (kind, full.read_bytes())
    return out


def changed(root: Path, base: str, commit: str) -> list[str]:
    out = git(root, "diff-tree", "-r", "-z", "--no-renames", "--name-only", base, commit)
    return sorted(p for p in out.split("\0") if p)


@pytest.mark.parametrize("name", list(CASES))
async def test_the_engine_commits_what_git_commits(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    repo = build(tmp_path / "repo", case)
    plain = clone(repo, tmp_path / "clone", case)
    base = git(repo, "rev-parse", "main").strip()
    assert git(plain, "rev-parse", "HEAD").strip() == base

    ws = Workspace(repo, repo / ".factory" / "worktrees")
    try:
        wt = await ws.create("case", name.replace("-", ""))
        git(repo, "worktree", "add", "-q", "--detach", str(tmp_path / "by-git"), base)
        # The agent starts from the checkout git itself gives, by worktree or by clone.
        assert checkout(wt.path) == checkout(tmp_path / "by-git") == checkout(plain)

        case.change(wt.path)
        info = await ws.commit(wt, f"{name}\n")
        assert info is not None
        case.change(plain)
        git(plain, "add", "-A")
        git(plain, "commit", "-q", "-m", f"{name}\n")

        assert git(repo, "rev-parse", f"{info.commit}^{{tree}}") == \
            git(plain, "rev-parse", "HEAD^{tree}")
        files = changed(plain, base, "HEAD")
        assert info.files == files == changed(repo, base, info.commit)
        assert case.committed <= set(files), case.committed - set(files)
        assert not case.left_out & set(files), case.left_out & set(files)
        assert not case.left_out & set(git(repo, "ls-tree", "-r", "--name-only",
                                           info.commit).splitlines())
        # Nothing is left for git to commit: the worktree is as git's status expects.
        assert git(wt.path, "status", "--porcelain") == git(plain, "status", "--porcelain")
        ws.remove(wt.path)
    finally:
        ws.close()


async def test_the_checkout_is_smudged_as_git_smudges_it(tmp_path: Path) -> None:
    case = CASES["clean-smudge"]
    repo = build(tmp_path / "repo", case)
    # Stored through the clean filter, checked out through the smudge filter.
    assert git(repo, "show", "main:old.up") == "SHOUT\n"
    ws = Workspace(repo, repo / ".factory" / "worktrees")
    try:
        wt = await ws.create("case", "smudge")
        assert (wt.path / "old.up").read_text() == "shout\n"
        assert (clone(repo, tmp_path / "clone", case) / "old.up").read_text() == "shout\n"
        assert git(wt.path, "status", "--porcelain") == ""
        (wt.path / "old.up").write_text("quiet now\n")
        info = await ws.commit(wt, "smudged and cleaned\n")
        assert info is not None and info.files == ["old.up"]
        assert git(repo, "show", f"{info.commit}:old.up") == "QUIET NOW\n"
    finally:
        ws.close()
