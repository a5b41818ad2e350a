"""`factory init`: a configuration that works in the repository it is written in.

A run lands nothing unless the repository's tests pass in the sandbox, and the sandbox is not
the person's shell: only /usr and the Python the engine runs on are there, so `python` may
be missing while `sys.executable` is not (agents/sandbox/bwrap.py, `toolchain_paths`). So
the test command is found from the files present, written with that interpreter, and run on
main in the sandbox by the doctor's own check before anyone spends a token. Each role gets
the one model the person named: a role left on a default nobody chose fails later, where it
is harder to see why.

The example spec is written as `specs/example.md.sample`: runs and the lint read the specs
folder's `*.md`, so an example about files this repository does not have is never planned
until someone makes it a spec of their own.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomlkit

from agents.config import CONFIG_NAME, DEFAULT_CONFIG, parse_config
from agents.errors import FactoryError

if TYPE_CHECKING:
    from agents.config import FactoryConfig
    from agents.models import ModelCheck
    from agents.sandbox.doctor import TestCheck

SAMPLE = Path("specs") / "example.md.sample"
# npm writes this as scripts.test in a new package.json: a test command that always fails.
NPM_PLACEHOLDER = "no test specified"
# What the configuration runs when nothing was found: it fails, saying what to set, wherever
# it runs (`factory doctor`, the queue's check of main, a landing), so no run lands work
# that no test has looked at and nobody wonders why.
PLACEHOLDER = ("echo 'factory init found no test command in this repository: set [repo] "
               "test_command in .factory.toml' >&2; exit 1")


@dataclass(frozen=True)
class Candidate:
    command: str
    because: str  # what in the repository says so, shown to the person


@dataclass
class Detection:
    """Test commands found, best first, and what was looked for (said when none was)."""

    found: list[Candidate] = field(default_factory=list)
    looked_for: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def sandbox_python() -> str:
    """The interpreter a sandboxed command can start: the engine's own, which bwrap mounts
    (with its virtual environment) read-only at the same path. `python` on the person's PATH
    may be a shim or another installation that is not mounted."""
    return sys.executable


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _test_files(root: Path) -> tuple[str | None, list[Path]]:
    """The folder holding the Python tests ("tests", "test" or "." for the top level) and
    its test modules."""
    for name in ("tests", "test"):
        folder = root / name
        if folder.is_dir():
            files = sorted(folder.rglob("test*.py")) + sorted(folder.rglob("*_test.py"))
            if files:
                return name, files
    files = sorted(root.glob("test_*.py")) + sorted(root.glob("*_test.py"))
    return (".", files) if files else (None, [])


def _pytest_signal(root: Path) -> str | None:
    """Why this is a pytest project, if something says so."""
    if (root / "pytest.ini").is_file():
        return "pytest.ini"
    for where in (root / "conftest.py", root / "tests" / "conftest.py",
                  root / "test" / "conftest.py"):
        if where.is_file():
            return str(where.relative_to(root))
    pyproject = _read(root / "pyproject.toml")
    if re.search(r"^\s*\[tool\.pytest(\.ini_options)?\]", pyproject, re.M):
        return "pyproject.toml [tool.pytest.ini_options]"
    if re.search(r"^\s*\[tool:pytest\]", _read(root / "setup.cfg"), re.M):
        return "setup.cfg [tool:pytest]"
    if re.search(r"^\s*\[pytest\]", _read(root / "tox.ini"), re.M):
        return "tox.ini [pytest]"
    for name in ["pyproject.toml", *sorted(p.name for p in root.glob("requirements*.txt"))]:
        if re.search(r"(?<![\w-])pytest(?![\w-])", _read(root / name)):
            return f"{name} names pytest"
    return None


def _python(root: Path, python: str) -> Candidate | None:
    folder, files = _test_files(root)
    signal = _pytest_signal(root)
    exe = shlex.quote(python)
    if signal is not None:
        return Candidate(f"{exe} -m pytest -q", signal)
    if folder is None:
        return None
    shown = f"{folder}/" if folder != "." else "test modules at the top level"
    uses_unittest = any(re.search(r"^\s*(import unittest|from unittest\b)", _read(f), re.M)
                        for f in files)
    if uses_unittest:
        start = f" -s {shlex.quote(folder)}" if folder != "." else ""
        return Candidate(f"{exe} -m unittest discover{start} -q",
                         f"{shown} holds unittest test cases")
    return Candidate(f"{exe} -m pytest -q", f"{shown} holds test functions (pytest's)")


def _npm(root: Path, detection: Detection) -> Candidate | None:
    path = root / "package.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(_read(path))
    except json.JSONDecodeError as exc:
        detection.notes.append(f"package.json is not valid JSON ({exc.msg}, line {exc.lineno})")
        return None
    scripts = manifest.get("scripts") if isinstance(manifest, dict) else None
    test = scripts.get("test") if isinstance(scripts, dict) else None
    if not isinstance(test, str) or not test.strip():
        detection.notes.append("package.json has no scripts.test")
        return None
    if NPM_PLACEHOLDER in test:
        detection.notes.append("package.json's scripts.test is npm's placeholder, which "
                               "always fails")
        return None
    return Candidate("npm test", "package.json scripts.test")


def _make(root: Path) -> Candidate | None:
    for name in ("GNUmakefile", "makefile", "Makefile"):
        if re.search(r"^test\s*:(?!=)", _read(root / name), re.M):
            return Candidate("make test", f"{name} has a test: target")
    return None


def detect(root: Path, python: str | None = None) -> Detection:
    """The test commands this repository's files name, best first: a language's own
    manifest before a Makefile, whose test target often installs things first (and the
    sandbox has no network)."""
    python = python or sandbox_python()
    detection = Detection(looked_for=[
        "package.json scripts.test", "Cargo.toml", "go.mod",
        "pytest (pytest.ini, conftest.py, [tool.pytest.ini_options], pytest named in "
        "pyproject.toml or requirements*.txt, a tests/ folder)",
        "unittest (test modules importing unittest)", "a Makefile with a test: target"])
    found = [
        _npm(root, detection),
        Candidate("cargo test", "Cargo.toml") if (root / "Cargo.toml").is_file() else None,
        Candidate("go test ./...", "go.mod") if (root / "go.mod").is_file() else None,
        _python(root, python),
        _make(root),
    ]
    detection.found = [c for c in found if c is not None]
    return detection


def main_branch(root: Path) -> str:
    """`main` when the repository has it, else the branch checked out (`master`, ...)."""
    def git(*args: str) -> str | None:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None

    if not root.is_dir():
        return "main"
    if git("rev-parse", "--verify", "-q", "refs/heads/main") is not None:
        return "main"
    return git("symbolic-ref", "--short", "-q", "HEAD") or "main"


@dataclass(frozen=True)
class Choices:
    """What the person chose (or init found) for the configuration."""

    model: str = ""
    key_env: str = ""
    api_base: str = ""
    test_command: str | None = None  # None: nothing found, PLACEHOLDER is written
    because: str = ""
    main_branch: str = "main"


def config_text(choices: Choices, detection: Detection) -> str:
    """The commented default configuration with the person's choices in it (tomlkit keeps
    every comment), checked to load before it is written."""
    doc: Any = tomlkit.parse(DEFAULT_CONFIG)
    models = doc["models"]
    for role in ("planner", "implementer", "reviewer"):
        models[role] = choices.model
    if not choices.model:
        models["planner"].comment("no model given: set these three (factory init --model "
                                  "NAME writes them), e.g. \"openai/gpt-4o-mini\"")
    models["api_base"] = choices.api_base
    models["api_key_env"] = choices.key_env
    repo = tomlkit.table()
    repo.add("main_branch", choices.main_branch)
    repo.add(tomlkit.comment("What must pass before a branch lands, run in the sandbox on "
                             "the merged tree. Only"))
    repo.add(tomlkit.comment("/usr and Factory's own Python are there: name that "
                             "interpreter by its full path."))
    if choices.test_command is not None:
        repo.add(tomlkit.comment(f"Found by factory init: {choices.because}."))
        for other in detection.found[1:]:
            repo.add(tomlkit.comment(f"Also found: test_command = {json.dumps(other.command)}"
                                     f" ({other.because})"))
        repo.add("test_command", choices.test_command)
    else:
        repo.add(tomlkit.comment("factory init found no test command here; it looked for:"))
        for what in detection.looked_for:
            repo.add(tomlkit.comment(f"  {what}"))
        for note in detection.notes:
            repo.add(tomlkit.comment(f"  ({note})"))
        repo.add(tomlkit.comment("Set yours below, e.g. test_command = \"make check\". "
                                 "Until then it fails, saying so."))
        repo.add("test_command", PLACEHOLDER)
    repo.add("specs_dir", "specs")
    doc["repo"] = repo
    text = tomlkit.dumps(doc).replace(
        "the values shown are the defaults.",
        "the values shown are the defaults,\n# but for [models] and [repo], which factory init "
        "chose for this repository.", 1)
    parse_config(text, Path(CONFIG_NAME))  # never write a file that would not load
    return text


def write(root: Path, text: str) -> list[Path]:
    """The configuration, the example spec (as a sample: it is never run) and `.factory/` in
    .gitignore; an existing configuration is never overwritten."""
    from agents.specs import EXAMPLE_SPEC

    root.mkdir(parents=True, exist_ok=True)
    config = root / CONFIG_NAME
    if config.exists():
        raise FactoryError(f"{config}: already exists; not overwriting it (`factory doctor` "
                           "checks it)")
    config.write_text(text)
    written = [config]
    sample = root / SAMPLE
    sample.parent.mkdir(exist_ok=True)
    if not sample.exists():
        sample.write_text(EXAMPLE_SPEC)
        written.append(sample)
    ignore = root / ".gitignore"
    before = ignore.read_text() if ignore.exists() else ""
    if ".factory/" not in (line.strip() for line in before.splitlines()):
        ignore.write_text(before + ("\n" if before and not before.endswith("\n") else "")
                          + ".factory/\n")
        written.append(ignore)
    return written


@dataclass(frozen=True)
class Report:
    """What init checked in the configuration it wrote (the doctor's checks, offline)."""

    models: list[ModelCheck]
    tests: TestCheck | None  # None: not run (not a git repository, or no commit yet)
    not_run: str = ""  # why the tests were not run


async def check(config: FactoryConfig, run_tests: bool = True) -> Report:
    """Each model offline and (unless `run_tests` is false: there is only the placeholder)
    the test command on main in the sandbox, as `factory doctor` checks them (its code)."""
    from agents.models import check_each_model
    from agents.sandbox.doctor import check_tests

    models = await check_each_model(config)
    if not run_tests:
        return Report(models, None, "no test command to run")
    root, branch = config.root, config.repo.main_branch
    if not await asyncio.to_thread(_git_ok, root, "rev-parse", "--show-toplevel"):
        return Report(models, None, f"{root} is not a git repository: `git init`, commit, "
                      "then `factory doctor` runs it")
    if not await asyncio.to_thread(_git_ok, root, "rev-parse", "--verify", "-q",
                                   f"refs/heads/{branch}"):
        return Report(models, None, f"no commit on {branch} yet: commit, then `factory "
                      "doctor` runs it")
    return Report(models, await check_tests(config))


def missing_module(tests: TestCheck) -> str | None:
    """Why a Python test command fails where the person's own shell would pass it: the
    sandbox's Python is Factory's, without the project's test dependencies."""
    found = re.search(r"No module named '?([\w.]+)", tests.output)
    if tests.passed or found is None or not tests.command.startswith(
            shlex.quote(sandbox_python())):
        return None
    return (f"the sandbox runs Factory's own Python ({sandbox_python()}), which has no "
            f"{found.group(1)!r}: install the project's test dependencies there "
            f"({sandbox_python()} -m pip install ...), or name an interpreter the sandbox "
            "mounts that has them")


def _git_ok(root: Path, *args: str) -> bool:
    return subprocess.run(["git", *args], cwd=root, capture_output=True).returncode == 0
