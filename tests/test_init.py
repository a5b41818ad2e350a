"""First contact: `factory init` in a real repository, then a first `factory run`.

Real parts only: real git repositories of three layouts (pytest, unittest, a Makefile), the
real bwrap sandbox (init runs the test command there, as `factory doctor` does), and a real
`factory run` subprocess whose models are played by the scripted OpenAI-compatible server on
127.0.0.1. Also what init says when it cannot finish the job (no test command, no model, a
key where its variable's name belongs), and `factory demo` refusing to delete a demo folder
a person has changed.
"""

from __future__ import annotations

import asyncio
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agents import demo
from agents.config import load_config
from agents.errors import FactoryError
from agents.init import PLACEHOLDER, SAMPLE
from agents.sandbox.doctor import check_tests
from agents.specs import EXAMPLE_SPEC
from tests.conftest import git, make_repo
from tests.openai_server import ScriptedServer, call

ROOT = Path(__file__).resolve().parents[1]
MODEL = "openai/gpt-4o-mini"
KEY_ENV = "FACTORY_INIT_TEST_KEY"

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap is not installed (make test installs it)")

PYTEST_PROJECT = {
    "pyproject.toml": '[project]\nname = "shapes"\nversion = "0.1.0"\n\n'
                      '[tool.pytest.ini_options]\ntestpaths = ["tests"]\n',
    "shapes/__init__.py": "",
    "shapes/area.py": "def square(side):\n    return side * side\n",
    "tests/test_area.py": "from shapes.area import square\n\n\n"
                          "def test_square():\n    assert square(3) == 9\n",
}
UNITTEST_PROJECT = {
    "setup.py": "from setuptools import setup\n\nsetup(name='calc')\n",
    "calc/__init__.py": "",
    "calc/ops.py": "def add(a, b):\n    return a + b\n",
    "tests/__init__.py": "",
    "tests/test_ops.py": "import unittest\n\nfrom calc.ops import add\n\n\n"
                         "class OpsTest(unittest.TestCase):\n"
                         "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n",
}
# No Python at all: a shell project whose Makefile runs its checks.
MAKE_PROJECT = {
    "Makefile": "all:\n\t@echo nothing to build\n\ntest:\n\tsh checks/run.sh\n",
    "greet.sh": "#!/bin/sh\necho \"hello, $1\"\n",
    "checks/run.sh": 'set -e\n[ "$(sh greet.sh you)" = "hello, you" ]\n'
                     "for check in checks/check_*.sh; do [ -e \"$check\" ] && sh \"$check\"; "
                     "done\necho all checks passed\n",
}
LAYOUTS = {
    "pytest": (PYTEST_PROJECT, f"{sys.executable} -m pytest -q",
               ("tests/test_volume.py", "from shapes.area import square\n\n\n"
                "def test_cube():\n    assert square(2) * 2 == 8\n")),
    "unittest": (UNITTEST_PROJECT, f"{sys.executable} -m unittest discover -s tests -q",
                 ("calc/mul.py", "def mul(a, b):\n    return a * b\n")),
    "make": (MAKE_PROJECT, "make test",
             ("checks/check_bye.sh", '[ "$(sh greet.sh bye)" = "hello, bye" ]\n')),
}

SPEC = """\
+++
id = "first"
title = "A first change"
+++

## Goal
Add one file that the project's own checks run, and keep every check passing.

## Architecture
A single new file next to the ones like it.

## Boundaries
- {path}

## Edge cases
- None: the file is new.

## Invariants
- No existing file changes.

## Acceptance
- `{command}`
"""


def environment() -> dict[str, str]:
    """This environment without any provider's key, with the test's key set."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "ANTHROPIC_", "AZURE_"))}
    return {**env, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "COLUMNS": "200",
            KEY_ENV: "test-key"}


def factory(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The real command, with no terminal: stdin is not a TTY, so nothing is asked."""
    return subprocess.run([sys.executable, "-m", "console.cli", *args], cwd=cwd, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, env=environment(),
                          timeout=timeout)


def flat(text: str) -> str:
    return " ".join(text.split())


# -- three layouts: detected, passing in the sandbox, and a first run lands -------------------


@needs_bwrap
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_init_writes_a_configuration_whose_first_run_lands(
        tmp_path: Path, server: ScriptedServer, layout: str) -> None:
    files, command, (path, content) = LAYOUTS[layout]
    root = make_repo(tmp_path / layout, files)
    done = factory("init", "--model", MODEL, "--key-env", KEY_ENV, "--api-base",
                   server.api_base, cwd=root)
    said = flat(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wrote .factory.toml" in said and f"wrote {SAMPLE}" in said
    # The command found, run on main in the sandbox (bwrap: the default "auto" here).
    assert f"test command {command} on main" in said and "sandbox: passes" in said, said
    assert "before `factory run`" not in said, said
    config = load_config(root / ".factory.toml")
    assert config.repo.test_command == command
    assert (config.models.planner, config.models.implementer, config.models.reviewer) == \
        (MODEL, MODEL, MODEL)
    assert (config.models.api_key_env, config.models.api_base) == (KEY_ENV, server.api_base)
    assert (root / SAMPLE).read_text() == EXAMPLE_SPEC
    assert not list((root / "specs").glob("*.md")), "the example must not be a spec"

    # The person writes a spec of their own (the sample is never run), and runs.
    (root / "specs" / "first.md").write_text(SPEC.format(path=path, command=command))
    lint = factory("spec", "lint", cwd=root)
    assert lint.returncode == 0 and "specs/first.md: precision 100/100" in lint.stdout, \
        lint.stdout + lint.stderr
    assert "example" not in lint.stdout
    server.script(
        call("submit_plan", {"tasks": [{"id": "add", "title": "Add the file", "paths": [path],
                                        "acceptance": [command]}]}),
        call("write_file", {"path": path, "content": content}),
        call("finish", {"summary": f"added {path}"}))
    run = factory("run", "--headless", cwd=root)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "landed first/add" in flat(run.stdout), run.stdout
    assert git(root, "show", f"main:{path}") == content
    planned = [m for r in server.requests for m in r["messages"]]
    assert not any("greeting" in str(m.get("content")) for m in planned)


def test_init_prefers_a_language_manifest_and_names_the_other_candidates(
        tmp_path: Path) -> None:
    files = {**UNITTEST_PROJECT, "Makefile": "test:\n\tpython -m unittest\n"}
    root = make_repo(tmp_path / "both", files)
    done = factory("init", "--model", MODEL, "--key-env", KEY_ENV, cwd=root)
    assert done.returncode == 0, done.stderr
    text = (root / ".factory.toml").read_text()
    assert f'test_command = "{sys.executable} -m unittest discover -s tests -q"' in text
    assert '# Also found: test_command = "make test" (Makefile has a test: target)' in text


# -- what init says when it cannot finish the job ---------------------------------------------


@needs_bwrap
def test_an_unknown_layout_gets_a_placeholder_that_fails_saying_what_to_set(
        tmp_path: Path) -> None:
    root = make_repo(tmp_path / "docs", {"README.md": "Just words.\n"})
    done = factory("init", "--model", MODEL, "--key-env", KEY_ENV, cwd=root)
    said = flat(done.stdout)
    assert done.returncode == 0, done.stderr
    assert "test command: none found; looked for package.json scripts.test; Cargo.toml; " \
        "go.mod; pytest" in said, said
    assert "set [repo] test_command in .factory.toml" in said
    text = (root / ".factory.toml").read_text()
    assert "# factory init found no test command here; it looked for:" in text
    config = load_config(root / ".factory.toml")
    assert config.repo.test_command == PLACEHOLDER
    # Wherever it runs (the doctor, the queue's check of main, a landing), it fails saying so.
    tests = asyncio.run(check_tests(config))
    assert not tests.passed
    assert "factory init found no test command in this repository: set [repo] " \
        "test_command in .factory.toml" in tests.output


def test_a_test_command_given_is_written_and_run(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "given", {"README.md": "Just words.\n"})
    done = factory("init", "--model", MODEL, "--key-env", KEY_ENV, "--test-command", "false",
                   cwd=root)
    said = flat(done.stdout)
    assert done.returncode == 0, done.stderr
    assert load_config(root / ".factory.toml").repo.test_command == "false"
    assert "test command false on main" in said and "tests failed (exit code 1)" in said
    assert "before `factory run`: - make [repo] test_command in .factory.toml pass" in said


@needs_bwrap
def test_a_test_dependency_missing_from_the_sandbox_s_python_is_named(tmp_path: Path) -> None:
    files = {**PYTEST_PROJECT, "tests/test_area.py": "import hypothesis_not_installed\n\n\n"
             "def test_nothing():\n    pass\n"}
    root = make_repo(tmp_path / "deps", files)
    done = factory("init", "--model", MODEL, "--key-env", KEY_ENV, cwd=root)
    said = flat(done.stdout)
    assert done.returncode == 0, done.stderr
    assert f"the sandbox runs Factory's own Python ({sys.executable}), which has no " \
        "'hypothesis_not_installed'" in said, said


def test_without_a_model_or_a_terminal_init_says_so_and_run_refuses(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "nomodel", UNITTEST_PROJECT)
    done = factory("init", "--test-command", "true", cwd=root)
    assert done.returncode == 0, done.stderr
    assert "name a model for [models] planner, implementer and reviewer" in flat(done.stdout)
    models = load_config(root / ".factory.toml").models
    assert (models.planner, models.implementer, models.reviewer) == ("", "", "")
    (root / "specs" / "one.md").write_text(SPEC.format(path="calc/mul.py", command="true"))
    run = factory("run", "--headless", cwd=root)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "models.planner, models.implementer, models.reviewer = '': no model named" in \
        flat(run.stderr)


def test_the_sample_is_neither_linted_nor_run_until_it_is_a_spec(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "sample", UNITTEST_PROJECT)
    assert factory("init", "--model", MODEL, "--test-command", "true", cwd=root).returncode == 0
    lint = factory("spec", "lint", cwd=root)
    assert lint.returncode == 2 and "no spec files (*.md) in this folder" in lint.stderr
    run = factory("run", "--headless", cwd=root)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "greeting" not in run.stdout + run.stderr
    (root / SAMPLE).rename(root / "specs" / "greeting.md")
    lint = factory("spec", "lint", cwd=root)
    assert lint.returncode == 0 and "specs/greeting.md: precision 100/100" in lint.stdout


def test_on_a_terminal_init_asks_for_the_model(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "asked", UNITTEST_PROJECT)
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "console.cli", "init", "--test-command", "true"], cwd=root,
            stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=environment())
        os.write(controller, f"{MODEL}\n".encode())
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(controller)
        os.close(terminal)
    assert proc.returncode == 0, out + err
    assert "model for the planner, implementer and reviewer" in out
    models = load_config(root / ".factory.toml").models
    assert (models.planner, models.implementer, models.reviewer) == (MODEL, MODEL, MODEL)


def test_a_key_where_its_name_belongs_is_refused_and_nothing_written(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "key", UNITTEST_PROJECT)
    done = factory("init", "--model", MODEL, "--key-env", "sk-proj-abcdef123", cwd=root)
    assert done.returncode == 2
    assert "--key-env sk-p...: expected the NAME of the environment variable" in \
        flat(done.stderr)
    assert "abcdef123" not in done.stderr
    bad = factory("init", "--api-base", "127.0.0.1:8000", cwd=root)
    assert bad.returncode == 2 and "expected an http:// or https:// address" in bad.stderr
    assert not (root / ".factory.toml").exists()


def test_an_existing_configuration_is_never_overwritten(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "twice", UNITTEST_PROJECT)
    (root / ".factory.toml").write_text("# mine\n")
    done = factory("init", "--model", MODEL, cwd=root)
    assert done.returncode == 2 and "already exists; not overwriting it" in done.stderr
    assert (root / ".factory.toml").read_text() == "# mine\n"


def test_init_outside_a_repository_says_the_tests_were_not_run(tmp_path: Path) -> None:
    root = tmp_path / "new"
    done = factory("init", str(root), "--model", MODEL, "--test-command", "true",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "is not a git repository: `git init`, commit, then `factory doctor` runs it" in \
        flat(done.stdout)


def test_the_branch_checked_out_is_main_when_there_is_no_main(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "master", UNITTEST_PROJECT)
    git(root, "branch", "-m", "main", "trunk")
    assert factory("init", "--model", MODEL, "--test-command", "true",
                   cwd=root).returncode == 0
    assert load_config(root / ".factory.toml").repo.main_branch == "trunk"


# -- the demo folder: recreated when untouched, refused once a person changed it -------------


def test_an_untouched_demo_folder_is_recreated(tmp_path: Path) -> None:
    path = demo.build(tmp_path / "demo", "none")
    (path / ".factory" / "left-by-a-run").write_text("")  # ignored: the run's own
    demo.build(path, "none")
    assert not (path / ".factory" / "left-by-a-run").exists()
    assert (path / demo.MARKER).is_file()


def test_a_changed_demo_folder_is_refused_until_fresh(tmp_path: Path) -> None:
    path = demo.build(tmp_path / "demo", "none")
    (path / "textkit" / "slug.py").write_text("# my edit\n")
    (path / "notes.txt").write_text("mine\n")
    done = factory("demo", str(path), "--headless", "--sandbox", "none", cwd=tmp_path)
    said = flat(done.stderr)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the demo folder was changed since `factory demo` wrote it (changed: " \
        "textkit/slug.py; untracked: notes.txt); not overwriting it" in said
    assert f"factory demo --fresh {path}" in said and "delete the folder" in said
    assert (path / "textkit" / "slug.py").read_text() == "# my edit\n"
    assert "demo project at" not in done.stdout  # nothing ran
    fresh = demo.build(path, "none", fresh=True)
    assert not (fresh / "notes.txt").exists()
    assert (fresh / "textkit" / "slug.py").read_text() == demo.FILES["textkit/slug.py"]


def test_a_person_s_commit_in_the_demo_folder_is_a_change(tmp_path: Path) -> None:
    path = demo.build(tmp_path / "demo", "none")
    (path / "textkit" / "slug.py").write_text("# committed\n")
    git(path, "commit", "-qam", "my slug")
    with pytest.raises(FactoryError, match=r"\(commit [0-9a-f]+ by test@localhost: my slug\)"):
        demo.build(path, "none")
    assert (path / "textkit" / "slug.py").read_text() == "# committed\n"
