"""What a person and a script can count on from every `factory` command: help when called
bare, a version, help for every argument, --root everywhere, --json where output is data,
NO_COLOR, strict numbers in the configuration, and `spec lint` over folders."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from agents.store import Store
from console.cli import build_parser
from tests.conftest import make_repo
from tests.test_cli import factory
from tests.test_engine import build_demo

ROOT = Path(__file__).resolve().parents[1]
COLOUR = re.compile(r"\x1b\[[0-9;]*(3[0-7]|9[0-7]|38;[25];[0-9;]+)m")  # a foreground colour
# Commands whose output a script reads: each prints one JSON document with --json.
DATA = {"run", "status", "queue", "spec lint", "audit verify", "store rebuild", "doctor"}

VAGUE = ('+++\nid = "v"\ntitle = "V"\n+++\n\n## Goal\nMake it better, etc.\n\n'
         "## Acceptance\nRun things somehow.\n")
BROKEN = '+++\nid = "b"\ntitle = \n+++\n\n## Goal\nNothing parses here.\n'


def commands(parser: argparse.ArgumentParser, prefix: str = "") \
        -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(name, parser) for every command that runs something (not `spec`, which groups)."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if prefix and (not groups or parser.get_default("fn").__name__ != "<lambda>"):
        yield prefix, parser
    for group in groups:
        for name, child in group.choices.items():
            yield from commands(child, f"{prefix} {name}".strip())


def test_factory_alone_prints_help_and_succeeds(tmp_path: Path) -> None:
    done = factory(cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: factory") and "doctor" in done.stdout
    assert done.stderr == ""
    group = factory("spec", cwd=tmp_path)  # a command of commands, bare: its own help
    assert group.returncode == 0 and "lint" in group.stdout


def test_version_is_the_packages(tmp_path: Path) -> None:
    done = factory("--version", cwd=tmp_path)
    assert done.returncode == 0
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert done.stdout.strip() == f"factory {project['version']}"
    assert metadata.version("factory-console") == project["version"]


def test_every_argument_has_help() -> None:
    missing = [f"{name}: {action.dest}" for name, parser in commands(build_parser())
               for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction)
               and not (action.help or "").strip()]
    assert missing == []


def test_every_command_takes_root() -> None:
    found = dict(commands(build_parser()))
    assert {"init", "doctor", "spec lint", "demo", "queue move"} <= set(found)
    assert [name for name, parser in found.items()
            if "--root" not in parser._option_string_actions] == []


def test_what_a_script_reads_takes_json() -> None:
    found = dict(commands(build_parser()))
    assert [name for name in sorted(DATA)
            if "--json" not in found[name]._option_string_actions] == []


def test_init_takes_root_as_well_as_a_path(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    done = factory("init", "--root", str(repo), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (repo / ".factory.toml").is_file() and not (tmp_path / ".factory.toml").exists()
    both = factory("init", "elsewhere", "--root", str(repo), cwd=tmp_path)
    assert both.returncode == 2 and "give one" in both.stderr


# -- spec lint -----------------------------------------------------------------------------


def test_spec_lint_defaults_to_the_configured_specs_folder(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    assert factory("init", cwd=repo).returncode == 0
    (repo / ".factory.toml").write_text('[repo]\nspecs_dir = "docs/specs"\n')
    (repo / "docs" / "specs").mkdir(parents=True)
    (repo / "specs" / "example.md.sample").rename(repo / "docs" / "specs" / "good.md")
    (repo / "docs" / "specs" / "README.md").write_text("not a spec\n")
    done = factory("spec", "lint", cwd=repo / "docs")  # the configuration is found above
    assert done.returncode == 0, done.stderr
    assert "specs/good.md: precision 100/100" in done.stdout and "README" not in done.stdout
    elsewhere = factory("spec", "lint", "--root", str(repo), cwd=tmp_path)
    assert elsewhere.returncode == 0 and "good.md: precision 100/100" in elsewhere.stdout


def test_spec_lint_reads_folders_and_a_broken_spec_scores_zero(tmp_path: Path) -> None:
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "vague.md").write_text(VAGUE)
    (folder / "broken.md").write_text(BROKEN)
    alone = tmp_path / "alone.md"
    alone.write_text(VAGUE)
    done = factory("spec", "lint", "specs", "alone.md", cwd=tmp_path)
    assert done.returncode == 1
    scores = dict(re.findall(r"^(\S+): precision (\d+)/100$", done.stdout, re.M))
    assert scores == {"specs/broken.md": "0", "specs/vague.md": "17", "alone.md": "17"}
    assert "specs/broken.md:3: error parse" in done.stdout
    as_json = json.loads(factory("spec", "lint", "--json", "specs", cwd=tmp_path).stdout)
    assert as_json["ok"] is False
    assert [(s["path"], s["score"], s["parses"]) for s in as_json["specs"]] == [
        ("specs/broken.md", 0, False), ("specs/vague.md", 17, True)]
    assert {"line": 9, "severity": "error", "code": "no-acceptance-command",
            "message": "no acceptance command: list commands in backticks that must pass"} \
        in as_json["specs"][1]["findings"]


def test_spec_lint_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    empty = factory("spec", "lint", "empty", cwd=tmp_path)
    assert empty.returncode == 2 and "empty: no spec files (*.md) in this folder" in empty.stderr
    repo = make_repo(tmp_path / "repo")
    (repo / ".factory.toml").write_text("")
    gone = factory("spec", "lint", cwd=repo)
    assert gone.returncode == 2 and "no specs folder ([repo] specs_dir = 'specs')" in gone.stderr


# -- the store's commands, as JSON -----------------------------------------------------------


def test_audit_verify_and_store_rebuild_as_json(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / ".factory.toml").write_text("")

    async def create() -> None:
        await (await Store.open(repo / ".factory" / "factory.db")).close()

    asyncio.run(create())
    verified = factory("audit", "verify", "--json", cwd=repo)
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] is True and report["problems"] == [] and report["drift"] == []
    rebuilt = json.loads(factory("store", "rebuild", "--json", cwd=repo).stdout)
    assert rebuilt["drift"] == [] and rebuilt["events"] == report["events"]


# -- colour ----------------------------------------------------------------------------------


@pytest.mark.parametrize("no_color", ["1", "yes"])
def test_no_color_turns_colour_off(tmp_path: Path, no_color: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "vague.md").write_text(VAGUE)
    monkeypatch.setenv("FORCE_COLOR", "1")  # as on a terminal
    monkeypatch.delenv("NO_COLOR", raising=False)
    coloured = factory("spec", "lint", "vague.md", cwd=tmp_path)
    failed = factory("spec", "lint", "absent.md", cwd=tmp_path)
    assert COLOUR.search(coloured.stdout) and COLOUR.search(failed.stderr)
    monkeypatch.setenv("NO_COLOR", no_color)
    plain = factory("spec", "lint", "vague.md", cwd=tmp_path)
    failed = factory("spec", "lint", "absent.md", cwd=tmp_path)
    assert plain.returncode == 1 and "error no-acceptance-command" in plain.stdout
    assert not COLOUR.search(plain.stdout) and not COLOUR.search(failed.stderr)
    assert "cannot read" in failed.stderr  # bold stays: NO_COLOR is about colour alone


# -- the configuration's numbers -------------------------------------------------------------


def test_a_quoted_number_in_the_configuration_is_an_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / ".factory.toml").write_text('[budgets.run]\nusd = "20"\n')
    done = factory("status", cwd=repo)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{repo / '.factory.toml'}:2: budgets.run.usd: expected a number, got '20'" in \
        done.stderr.replace("\n", "")


def test_run_json_is_the_summary_alone(tmp_path: Path) -> None:
    root = build_demo(tmp_path)
    done = factory("run", "--json", cwd=root)
    summary = json.loads(done.stdout)  # progress went to stderr: stdout is one document
    assert done.returncode == (0 if summary["complete"] else 1), done.stderr
    assert summary["status"] in ("done", "failed") and summary["landed"]
    assert f"run {summary['run_id']}" in done.stderr
    status = json.loads(factory("status", "--json", cwd=root).stdout)
    landed = sorted(t["key"] for t in status["tasks"] if t["status"] == "landed")
    assert sorted(summary["landed"]) == landed
