"""A gate of the user's own ([gates.command]): a script read from main, run in a real
bubblewrap sandbox over the merged tree, answering in JSON; and the configuration's gate
names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.config import FactoryConfig
from agents.errors import FactoryError
from agents.gates.base import GateInput, Verdict, changes_between
from agents.gates.command import CommandGate, interpreter
from agents.gates.registry import GateServices, build_gates, check_names
from agents.sandbox.base import Limits
from agents.sandbox.select import make_backend
from tests.conftest import git, make_repo

LIMITS = Limits(wall_seconds=60, memory_mb=512, max_processes=128, output_bytes=200_000)

NO_TODO = """#!/usr/bin/env python3
import json, os, pathlib
findings = []
for rel in os.environ["FACTORY_CHANGED"].splitlines():
    path = pathlib.Path(rel)
    if path.suffix == ".py" and path.is_file():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "TODO" in line:
                findings.append({"file": rel, "line": n, "rule": "todo",
                                 "message": "a TODO left in"})
print(json.dumps({"verdict": "deny" if findings else "pass", "findings": findings}))
"""


def services(root: Path, **gates: str) -> GateServices:
    config = FactoryConfig.model_validate({"gates": {"command": gates},
                                           "queue": {"gates": list(gates)}})

    async def emit(_: object) -> None:
        return None

    return GateServices(config=config, backend=make_backend("bwrap", limits=LIMITS, root=root),
                        limits=LIMITS, test_command="true", emit=emit)


async def given(tmp_path: Path, change: dict[str, str], main_extra: dict[str, str]
                | None = None) -> GateInput:
    root = make_repo(tmp_path / "repo", {"app.py": "X = 1\n", "gates/no_todo.py": NO_TODO,
                                         **(main_extra or {})})
    main = git(root, "rev-parse", "HEAD").strip()
    git(root, "checkout", "-q", "-b", "entry")
    for rel, text in change.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "entry")
    head = git(root, "rev-parse", "HEAD").strip()
    return GateInput(repo=root, tree=root, base=main, merged=head, main=main,
                     entry_commit=head, spec_id="s", task_id="t",
                     changes=await changes_between(root, main, head))


async def test_the_script_denies_with_its_findings(tmp_path: Path) -> None:
    g = await given(tmp_path, {"app.py": "X = 1\n# TODO: later\n"})
    verdict = await CommandGate(services(g.repo, todo="gates/no_todo.py"), "todo",
                                "gates/no_todo.py").check(g)
    assert verdict.verdict == Verdict.DENY
    assert [(f.rule, f.file, f.line) for f in verdict.findings] == [("todo", "app.py", 2)]


async def test_the_script_passes_a_clean_change(tmp_path: Path) -> None:
    g = await given(tmp_path, {"app.py": "X = 2\n"})
    verdict = await CommandGate(services(g.repo), "todo", "gates/no_todo.py").check(g)
    assert verdict.verdict == Verdict.PASS, verdict.summary


async def test_the_script_is_read_from_main_not_from_the_branch(tmp_path: Path) -> None:
    """The entry rewrites the script to pass everything: main's version judges it."""
    loosened = "#!/bin/sh\necho '{\"verdict\": \"pass\"}'\n"
    g = await given(tmp_path, {"app.py": "# TODO\n", "gates/no_todo.py": loosened})
    verdict = await CommandGate(services(g.repo), "todo", "gates/no_todo.py").check(g)
    assert verdict.verdict == Verdict.DENY and verdict.findings[0].file == "app.py"


async def test_a_script_that_breaks_denies_and_says_why(tmp_path: Path) -> None:
    broken = "#!/bin/sh\necho 'not json'\nexit 3\n"
    g = await given(tmp_path, {"app.py": "X = 2\n"}, {"gates/broken.sh": broken})
    verdict = await CommandGate(services(g.repo), "broken", "gates/broken.sh").check(g)
    assert verdict.verdict == Verdict.DENY
    assert "exit code 3" in verdict.summary and "not json" in verdict.summary


async def test_a_script_missing_on_main_denies(tmp_path: Path) -> None:
    g = await given(tmp_path, {"gates/new.sh": "#!/bin/sh\necho '{\"verdict\":\"pass\"}'\n"})
    verdict = await CommandGate(services(g.repo), "new", "gates/new.sh").check(g)
    assert verdict.verdict == Verdict.DENY and "not in main" in verdict.summary


async def test_needs_approval_and_warn_come_through(tmp_path: Path) -> None:
    answer = {"verdict": "warn", "findings": [
        {"message": "looks odd", "file": "app.py", "line": 1},
        {"message": "a person should look", "verdict": "needs_approval"}]}
    script = f"#!/bin/sh\necho '{json.dumps(answer)}'\n"
    g = await given(tmp_path, {"app.py": "X = 3\n"}, {"gates/ask.sh": script})
    verdict = await CommandGate(services(g.repo), "ask", "gates/ask.sh").check(g)
    assert verdict.verdict == Verdict.APPROVE
    assert [f.verdict for f in verdict.findings] == [Verdict.WARN, Verdict.APPROVE]


def test_the_interpreter_comes_from_the_shebang() -> None:
    assert interpreter("#!/usr/bin/env python3\nprint(1)\n")[:2] == ["python3", "-c"]
    assert interpreter("#!/bin/bash -e\necho\n")[:3] == ["/bin/bash", "-e", "-c"]
    assert interpreter("echo hi\n")[:2] == ["sh", "-c"]


def test_unknown_gate_names_are_refused_before_a_run(tmp_path: Path) -> None:
    config = FactoryConfig.model_validate({"queue": {"gates": ["boundaries", "polcy"]}})
    with pytest.raises(FactoryError, match="unknown gate 'polcy'"):
        check_names(config)
    config = FactoryConfig.model_validate({"gates": {"command": {"overlap": "x.sh"}}})
    with pytest.raises(FactoryError, match="built-in gate's name"):
        check_names(config)
    built = build_gates(services(tmp_path, todo="gates/no_todo.py"))
    assert [g.name for g in built] == ["todo"]


def test_a_returned_agent_is_told_every_finding_denials_first() -> None:
    from agents.decide import Return
    from agents.orchestrator import findings_message

    findings = [{"rule": "todo", "message": "looks odd", "verdict": "warn", "file": "b.py",
                 "line": 0},
                *({"rule": "todo", "message": f"a TODO left in ({n})", "verdict": "deny",
                   "file": "a.py", "line": n} for n in range(1, 6))]
    told = findings_message(Return("s/t", "s", "t", "todo", "a.py:1: a TODO left in (1)"),
                            "c0ffee" * 7, 2, findings)
    listed = told.split("Findings:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert listed[0] == "- [deny] a.py:1: a TODO left in (1) [todo]"
    assert listed[4] == "- [deny] a.py:5: a TODO left in (5) [todo]"
    assert listed[5] == "- [warn] b.py: looks odd [todo]"
