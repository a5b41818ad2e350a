"""The policy gate's input document on real git repositories: a base commit on main, a
branch commit changing it, and facts_of() on the GateInput the queue would build."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from agents.gates.base import GateInput, changes_between
from agents.gates.facts import build_kind, facts_of, find_tests, is_test_path
from tests.conftest import git, make_repo

TEST_BASE = '''import pytest
import unittest


def test_add():
    assert 1 + 1 == 2
    assert 2 + 2 == 4


class TestThing(unittest.TestCase):
    def test_equal(self):
        self.assertEqual(1, 1)
        self.assertTrue(True)


def test_other():
    assert True
'''


async def gate_input(root: Path, base_files: dict[str, str],
                     change: dict[str, str | None]) -> GateInput:
    """main holds base_files; a branch commit applies `change` (None deletes a path)."""
    make_repo(root, {".gitignore": "__pycache__/\n", **base_files})
    git(root, "checkout", "-q", "-b", "work")
    for rel, text in change.items():
        target = root / rel
        if text is None:
            target.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "--allow-empty", "-m", "change")
    base = git(root, "rev-parse", "main").strip()
    merged = git(root, "rev-parse", "HEAD").strip()
    return GateInput(repo=root, tree=root, base=base, merged=merged, main=base,
                     entry_commit=merged, spec_id="s", task_id="t",
                     changes=await changes_between(root, base, merged))


async def facts(tmp_path: Path, base: dict[str, str],
                change: dict[str, str | None]) -> dict[str, Any]:
    return await facts_of(await gate_input(tmp_path / "repo", base, change))


def test_assertions_are_counted_per_test() -> None:
    found = find_tests(TEST_BASE)
    assert found is not None
    assert {k: v.assertions for k, v in found.items()} == {
        "test_add": 2, "TestThing.test_equal": 2, "test_other": 1}
    assert find_tests("def test_x(:\n") is None


def test_every_kind_of_skip_is_seen() -> None:
    source = '''import pytest, unittest
pytestmark = pytest.mark.xfail

@pytest.mark.skip(reason="x")
def test_a(): pass

@pytest.mark.parametrize("v", [pytest.param(1, marks=pytest.mark.skipif(True, reason=""))])
def test_b(v): pass

@unittest.skip("no")
class TestC(unittest.TestCase):
    def test_c(self):
        self.skipTest("later")

def test_d():
    pytest.skip("not today")
'''
    found = find_tests(source)
    assert found is not None
    kinds = {name: set(info.skips) for name, info in found.items()}
    assert kinds["test_a"] == {"mark.xfail", "mark.skip"}
    assert kinds["test_b"] == {"mark.xfail", "mark.skipif"}
    assert kinds["TestC.test_c"] == {"mark.xfail", "unittest.skip", "skipTest()"}
    assert kinds["test_d"] == {"mark.xfail", "pytest.skip()"}


async def test_an_assertion_removed_is_a_fact(tmp_path: Path) -> None:
    weaker = TEST_BASE.replace("    assert 2 + 2 == 4\n", "")
    doc = await facts(tmp_path, {"tests/test_m.py": TEST_BASE}, {"tests/test_m.py": weaker})
    assert doc["tests"]["assertions_removed"] == [
        {"file": "tests/test_m.py", "test": "test_add", "line": 5, "before": 2, "after": 1}]
    assert doc["tests"]["deleted"] == [] and doc["tests"]["skips_added"] == []
    assert doc["files"][0]["test"] is True and doc["totals"]["code_files"] == 0


async def test_skip_and_xfail_added_are_facts(tmp_path: Path) -> None:
    changed = TEST_BASE.replace("def test_add", "@pytest.mark.skip\ndef test_add").replace(
        "def test_other", "@pytest.mark.xfail(strict=False)\ndef test_other")
    doc = await facts(tmp_path, {"tests/test_m.py": TEST_BASE}, {"tests/test_m.py": changed})
    assert {(s["test"], s["kind"]) for s in doc["tests"]["skips_added"]} == {
        ("test_add", "mark.skip"), ("test_other", "mark.xfail")}


async def test_a_deleted_test_and_a_moved_one(tmp_path: Path) -> None:
    remaining = TEST_BASE.split("\n\nclass TestThing")[0] + "\n"
    moved = "import unittest\n\n\nclass TestThing(unittest.TestCase):\n" \
        "    def test_equal(self):\n        self.assertEqual(1, 1)\n        self.assertTrue(1)\n"
    doc = await facts(tmp_path, {"tests/test_m.py": TEST_BASE},
                      {"tests/test_m.py": remaining, "tests/test_n.py": moved})
    assert [(t["test"], t["assertions"]) for t in doc["tests"]["deleted"]] == [("test_other", 1)]
    assert doc["tests"]["moved"] == [{"file": "tests/test_m.py", "test": "TestThing.test_equal",
                                      "line": 11, "to": "tests/test_n.py"}]


async def test_a_deleted_test_file_deletes_its_tests(tmp_path: Path) -> None:
    doc = await facts(tmp_path, {"tests/test_m.py": TEST_BASE, "a.py": "x = 1\n"},
                      {"tests/test_m.py": None})
    assert sorted(t["test"] for t in doc["tests"]["deleted"]) == [
        "TestThing.test_equal", "test_add", "test_other"]


async def test_new_tests_alone_are_only_added(tmp_path: Path) -> None:
    doc = await facts(tmp_path, {"tests/test_m.py": TEST_BASE},
                      {"tests/test_new.py": "def test_new():\n    assert 1\n",
                       "tests/test_m.py": TEST_BASE + "\n\ndef test_more():\n    assert 2\n"})
    tests = doc["tests"]
    assert sorted(t["test"] for t in tests["added"]) == ["test_more", "test_new"]
    assert not any(tests[k] for k in ("deleted", "assertions_removed", "skips_added"))
    assert doc["totals"]["code_files"] == 0 and doc["totals"]["code_lines"] == 0


async def test_dependency_changes_from_pyproject_and_requirements(tmp_path: Path) -> None:
    before = '[project]\nname = "p"\ndependencies = ["requests>=2", "Old_Pkg"]\n' \
        '[project.optional-dependencies]\ndev = ["pytest"]\n'
    after = '[project]\nname = "p"\ndependencies = ["requests>=3", "httpx"]\n' \
        '[project.optional-dependencies]\ndev = ["pytest", "hypothesis"]\n'
    doc = await facts(tmp_path, {"pyproject.toml": before, "requirements.txt": "flask\n"},
                      {"pyproject.toml": after, "requirements-dev.txt": "-r requirements.txt\n"
                       "ruff==0.8  # lint\n"})
    deps = doc["dependencies"]
    assert {(d["name"], d["section"]) for d in deps["added"]} == {
        ("httpx", "project"), ("hypothesis", "extra:dev"),
        ("ruff", "requirements-dev.txt")}
    assert [(d["name"], d["section"]) for d in deps["removed"]] == [("old-pkg", "project")]
    assert [(d["name"], d["before"]) for d in deps["changed"]] == [("requests", "requests>=2")]
    assert doc["build_files"] == []  # a dependency edit is not a build-section change


async def test_build_and_ci_files(tmp_path: Path) -> None:
    pyproject = '[build-system]\nrequires = ["setuptools"]\n[project]\nname = "p"\n'
    doc = await facts(tmp_path, {"pyproject.toml": pyproject},
                      {"tox.ini": "[tox]\n", ".github/workflows/ci.yml": "on: push\n",
                       "pyproject.toml": pyproject.replace("setuptools", "hatchling"),
                       "uv.lock": "version = 1\n", "src/a.py": "x = 1\n"})
    kinds = {b["path"]: (b["kind"], b["sections"]) for b in doc["build_files"]}
    assert kinds == {"tox.ini": ("build", []), ".github/workflows/ci.yml": ("ci", []),
                     "pyproject.toml": ("build", ["build-system"]), "uv.lock": ("lock", [])}


def test_names_of_build_files_and_tests() -> None:
    assert build_kind("Dockerfile.dev") == "container"
    assert build_kind(".pre-commit-config.yaml") == "hooks"
    assert build_kind(".gitlab-ci.yml") == "ci"
    assert build_kind("docs/Makefile") == "build"
    assert build_kind("src/app.py") == ""
    assert is_test_path("pkg/tests/helpers.py") and is_test_path("a/b_test.py")
    assert not is_test_path("src/testing.py")


async def test_secrets_are_facts_without_their_value(tmp_path: Path) -> None:
    key = "AKIA" + "ABCDEFGHIJKLMNOP"
    doc = await facts(tmp_path, {"a.py": "x = 1\n"},
                      {"a.py": f"x = 1\nKEY = '{key}'\n", "tests/fixture.txt": "fine\n"})
    assert doc["secrets"] == [{"file": "a.py", "line": 2, "type": "AWS Access Key",
                               "allowlisted": False}]
    assert key not in repr(doc)


async def test_a_symlinked_test_file_is_never_read(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    given = await gate_input(root, {"tests/test_m.py": TEST_BASE}, {})
    git(root, "checkout", "-q", "main")
    git(root, "checkout", "-q", "-b", "link")
    (root / "tests" / "test_m.py").unlink()
    os.symlink("/etc/passwd", root / "tests" / "test_m.py")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "link")
    merged = git(root, "rev-parse", "HEAD").strip()
    given = GateInput(repo=root, tree=root, base=given.base, merged=merged, main=given.base,
                      entry_commit=merged, spec_id="s", task_id="t",
                      changes=await changes_between(root, given.base, merged))
    doc = await facts_of(given)
    assert doc["files"][0]["mode"] == "symlink"
    # The link's target is never parsed: nothing is known of the new side, so its tests
    # read as deleted (they are gone as tests).
    assert {t["test"] for t in doc["tests"]["deleted"]} == {
        "test_add", "TestThing.test_equal", "test_other"}
