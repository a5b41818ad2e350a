"""Boundaries on the result: what a change actually touches, against the spec's Boundaries
(deny) and the task's paths (warn), on real repositories."""

from __future__ import annotations

from pathlib import Path

from agents.gates.base import GateInput, Verdict, changes_between
from agents.gates.boundaries import BoundariesGate
from tests.conftest import git, make_repo

BASE = {"pkg/core.py": "X = 1\n", "pkg/util.py": "Y = 1\n", "docs/guide.md": "# guide\n",
        "tests/test_core.py": "def test_x():\n    assert True\n"}


async def given(tmp_path: Path, change: dict[str, str | None], boundaries: tuple[str, ...],
                task_paths: tuple[str, ...]) -> GateInput:
    root = make_repo(tmp_path / "repo", BASE)
    for rel, text in change.items():
        if text is None:
            (root / rel).unlink()
        else:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "change")
    before, after = git(root, "rev-parse", "HEAD~1", "HEAD").split()
    return GateInput(repo=root, tree=root, base=before, merged=after, main=before,
                     entry_commit=after, spec_id="s", task_id="t", boundaries=boundaries,
                     task_paths=task_paths, changes=await changes_between(root, before, after))


async def test_inside_the_tasks_paths_passes(tmp_path: Path) -> None:
    verdict = await BoundariesGate().check(await given(
        tmp_path, {"pkg/core.py": "X = 2\n"}, ("pkg/", "tests/"), ("pkg/core.py",)))
    assert verdict.verdict == Verdict.PASS and verdict.findings == []


async def test_outside_the_specs_boundaries_is_denied_even_a_deletion(tmp_path: Path) -> None:
    verdict = await BoundariesGate().check(await given(
        tmp_path, {"pkg/core.py": "X = 2\n", "docs/guide.md": None}, ("pkg/",),
        ("pkg/core.py",)))
    assert verdict.verdict == Verdict.DENY
    assert [(f.rule, f.file) for f in verdict.findings] == [("boundaries.spec", "docs/guide.md")]
    assert verdict.summary.startswith("docs/guide.md: outside the spec's Boundaries (pkg/)")


async def test_inside_the_spec_but_outside_the_task_warns(tmp_path: Path) -> None:
    verdict = await BoundariesGate().check(await given(
        tmp_path, {"pkg/core.py": "X = 2\n", "pkg/util.py": "Y = 2\n"}, ("pkg/**",),
        ("pkg/core.py",)))
    assert verdict.verdict == Verdict.WARN
    assert [(f.rule, f.file) for f in verdict.findings] == [("boundaries.task", "pkg/util.py")]


async def test_glob_boundaries_and_new_files(tmp_path: Path) -> None:
    verdict = await BoundariesGate().check(await given(
        tmp_path, {"tests/test_new.py": "def test_y():\n    assert 1\n",
                   "tests/data/x.json": "{}\n"}, ("tests/test_*.py",), ("tests/",)))
    assert verdict.verdict == Verdict.DENY
    assert [f.file for f in verdict.findings] == ["tests/data/x.json"]


async def test_no_boundaries_declared_warns(tmp_path: Path) -> None:
    verdict = await BoundariesGate().check(await given(
        tmp_path, {"pkg/core.py": "X = 2\n"}, (), ()))
    assert verdict.verdict == Verdict.WARN
    assert verdict.findings[0].rule == "boundaries.none"
