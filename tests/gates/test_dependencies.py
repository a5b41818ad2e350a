"""The dependencies gate on real git repositories: a base commit, a change, the gate's verdict.

Each test commits a base and a change in a repository made in tmp_path and runs the gate on
the GateInput the queue would build (base.py's changes_between). The target environment is
a tiny fake virtualenv in the repository (.venv/lib/pythonX.Y/site-packages) holding a PyYAML
dist-info whose top_level.txt says `yaml`: the import name differs from the distribution's,
and the engine's own environment plays no part.

Where we differ from deptry (0.25, `deptry . --json-output`), asserted by
test_compared_with_deptry on one repository:

- deptry judges whole files; this gate judges what the change adds. An old undeclared import
  in a line the change does not touch is DEP001 to deptry and passes here.
- try/except ImportError: deptry reports the guarded import (DEP001); here it is a warning.
- `if t.TYPE_CHECKING:` (typing aliased): deptry skips those imports entirely; here they are
  a warning (a type checker still needs the package, nothing at runtime does).
- `__import__("literal")`: deptry does not see it; here it counts as an import (deny).
  `importlib.import_module("literal")`: both treat it as an import.
- Dev extras: deptry treats [project.optional-dependencies] `dev` as a runtime extra unless
  configured (--optional-dependencies-dev-groups), so `import pytest` in runtime code passes
  there; here extras and groups named dev/test/tests/testing/lint/docs/typing are dev-only and
  runtime code importing them is denied. A PEP 735 group: both say dev-only (DEP004).
- Test code: deptry excludes tests/ by default, so an undeclared import in a test passes
  there; here test code may use dev dependencies but must still import declared ones.
- A sys.version_info branch: deptry reports the import in the other branch (DEP001); here a
  warning (it runs on some Pythons only, often a backport declared with a marker).
- Unused declared dependencies (DEP002): deptry reports them; this gate does not judge
  what the change does not add. A newly declared dependency here asks a person (deptry has
  no notion of a change).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents.gates.base import GateInput, GateVerdict, Verdict, changes_between
from agents.gates.dependencies import DependenciesGate
from tests.conftest import git, make_repo

PYPROJECT = """[project]
name = "pkg"
version = "0.1"
dependencies = ["PyYAML>=6"]

[project.optional-dependencies]
dev = ["pytest>=8"]
socks = ["pysocks"]

[dependency-groups]
test = ["hypothesis"]
"""
BASE = {
    "pyproject.toml": PYPROJECT,
    ".gitignore": ".venv/\n",
    "pkg/__init__.py": "",
    "pkg/app.py": "import os\n\n\ndef main():\n    return os.getcwd()\n",
}
SITE = f".venv/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


def fake_env(root: Path) -> None:
    """A virtualenv with only PyYAML in it (dist-info as pip writes it)."""
    info = root / SITE / "PyYAML-6.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: PyYAML\nVersion: 6.0.1\n")
    (info / "top_level.txt").write_text("_yaml\nyaml\n")
    (info / "RECORD").write_text("yaml/__init__.py,,\n_yaml/__init__.py,,\n"
                                 "PyYAML-6.0.1.dist-info/METADATA,,\n")
    (root / SITE / "yaml").mkdir()
    (root / SITE / "yaml" / "__init__.py").write_text("")


async def given_for(tmp_path: Path, change: dict[str, str | None],
                    base: dict[str, str] | None = None, env: bool = True) -> GateInput:
    """Commit base, then the change (None deletes a file): the GateInput the queue builds."""
    root = make_repo(tmp_path / "repo", {**BASE, **(base or {})})
    if env:
        fake_env(root)
    for rel, text in change.items():
        target = root / rel
        if text is None:
            target.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "change")
    before, after = git(root, "rev-parse", "HEAD~1", "HEAD").split()
    return GateInput(repo=root, tree=root, base=before, merged=after, main=before,
                     entry_commit=after, spec_id="s", task_id="t",
                     changes=await changes_between(root, before, after))


async def gate_on(tmp_path: Path, change: dict[str, str | None],
                  base: dict[str, str] | None = None, env: bool = True) -> GateVerdict:
    return await DependenciesGate().check(await given_for(tmp_path, change, base, env))


def rules(verdict: GateVerdict) -> list[tuple[str, str, str, int]]:
    return [(f.rule, f.verdict.value, f.file, f.line) for f in verdict.findings]


# -- undeclared, and what is never a dependency -------------------------------------------


async def test_undeclared_import_is_denied_with_file_line_module(tmp_path: Path) -> None:
    verdict = await gate_on(tmp_path, {"pkg/app.py": BASE["pkg/app.py"] +
                                       "\nimport requests_nope.sessions\n"})
    assert verdict.verdict == Verdict.DENY
    assert rules(verdict) == [("dependencies.undeclared", "deny", "pkg/app.py", 7)]
    assert "requests_nope.sessions" in verdict.findings[0].message
    assert verdict.summary.startswith("pkg/app.py: imports requests_nope.sessions")


async def test_declared_distribution_with_another_import_name(tmp_path: Path) -> None:
    verdict = await gate_on(tmp_path, {"pkg/conf.py": "import yaml\nfrom yaml import safe_load\n"})
    assert verdict.verdict == Verdict.PASS, verdict.summary
    assert "site-packages" in verdict.summary  # the repository's own environment was used


async def test_undeclared_message_names_the_environments_distribution(tmp_path: Path) -> None:
    pyproject = PYPROJECT.replace('"PyYAML>=6"', "")
    verdict = await gate_on(tmp_path, {"pkg/conf.py": "import yaml\n"},
                            base={"pyproject.toml": pyproject})
    assert rules(verdict) == [("dependencies.undeclared", "deny", "pkg/conf.py", 1)]
    assert "distribution PyYAML" in verdict.findings[0].message


async def test_relative_stdlib_future_and_own_packages_pass(tmp_path: Path) -> None:
    source = ("from __future__ import annotations\nimport json, sys\nimport os.path\n"
              "from . import app\nfrom .app import main\nfrom pkg import app as a\n"
              "import helper\nimport lib_src\n")
    verdict = await gate_on(tmp_path, {"pkg/more.py": source, "helper.py": "",
                                       "src/lib_src/__init__.py": ""})
    assert verdict.verdict == Verdict.PASS, verdict.summary


async def test_an_old_undeclared_import_does_not_block_a_later_change(tmp_path: Path) -> None:
    old = "import legacy_nope\n\n\ndef f():\n    return legacy_nope.x\n"
    verdict = await gate_on(tmp_path, {"pkg/old.py": old + "\n\ndef g():\n    return 2\n"},
                            base={"pkg/old.py": old})
    assert verdict.verdict == Verdict.PASS, verdict.summary
    # ... while a new undeclared import beside it is still refused, alone.
    verdict = await gate_on(tmp_path / "2", {"pkg/old.py": old + "import fresh_nope\n"},
                            base={"pkg/old.py": old})
    assert rules(verdict) == [("dependencies.undeclared", "deny", "pkg/old.py", 6)]
    assert "fresh_nope" in verdict.summary and "legacy_nope" not in verdict.summary


async def test_unguarding_an_optional_import_adds_a_hard_dependency(tmp_path: Path) -> None:
    old = "try:\n    import fast_nope\nexcept ImportError:\n    fast_nope = None\n"
    verdict = await gate_on(tmp_path, {"pkg/opt.py": "import fast_nope\n"},
                            base={"pkg/opt.py": old})
    assert rules(verdict) == [("dependencies.undeclared", "deny", "pkg/opt.py", 1)]


async def test_a_deleted_file_and_a_file_that_does_not_parse_pass(tmp_path: Path) -> None:
    verdict = await gate_on(tmp_path, {"pkg/app.py": None, "pkg/broken.py": "import (\n"})
    assert verdict.verdict == Verdict.PASS, verdict.summary


# -- optional imports: warn ---------------------------------------------------------------


async def test_version_conditional_import_warns(tmp_path: Path) -> None:
    source = ("import sys\nif sys.version_info >= (3, 11):\n    import tomllib\nelse:\n"
              "    import tomli_nope as tomllib\n")
    verdict = await gate_on(tmp_path, {"pkg/toml.py": source})
    assert verdict.verdict == Verdict.WARN
    assert rules(verdict) == [("dependencies.optional", "warn", "pkg/toml.py", 5)]
    assert "sys.version_info" in verdict.findings[0].message


async def test_guarded_optional_import_warns_other_guards_do_not(tmp_path: Path) -> None:
    source = ("try:\n    import ujson_nope as json\nexcept (ModuleNotFoundError, OSError):\n"
              "    import json\n"
              "try:\n    import other_nope\nexcept ValueError:\n    pass\n")
    verdict = await gate_on(tmp_path, {"pkg/fast.py": source})
    assert rules(verdict) == [("dependencies.optional", "warn", "pkg/fast.py", 2),
                              ("dependencies.undeclared", "deny", "pkg/fast.py", 6)]
    assert "try/except ImportError" in verdict.findings[0].message


async def test_type_checking_with_aliased_typing_warns(tmp_path: Path) -> None:
    source = ("import typing as t\nfrom typing import TYPE_CHECKING as TC\n"
              "if t.TYPE_CHECKING:\n    import numpy_nope\n"
              "if TC:\n    from pandas_nope import DataFrame\nelse:\n    import hard_nope\n")
    verdict = await gate_on(tmp_path, {"pkg/types.py": source})
    assert rules(verdict) == [("dependencies.optional", "warn", "pkg/types.py", 4),
                              ("dependencies.optional", "warn", "pkg/types.py", 6),
                              ("dependencies.undeclared", "deny", "pkg/types.py", 8)]


# -- dynamic imports ----------------------------------------------------------------------


async def test_importlib_with_a_literal_counts_as_an_import(tmp_path: Path) -> None:
    source = ("import importlib\nfrom importlib import import_module as load\n"
              "importlib.import_module('yaml')\nload('plugin_nope.core')\n"
              "importlib.import_module('.sibling', 'pkg')\n")
    verdict = await gate_on(tmp_path, {"pkg/plug.py": source})
    assert rules(verdict) == [("dependencies.undeclared", "deny", "pkg/plug.py", 4)]
    assert "plugin_nope.core" in verdict.summary


async def test_dunder_import_literal_counts_and_a_computed_name_warns(tmp_path: Path) -> None:
    source = ("import importlib\nmod = __import__('dunder_nope')\nname = 'x'\n"
              "importlib.import_module(name)\n__import__('json')\n")
    verdict = await gate_on(tmp_path, {"pkg/dyn.py": source})
    assert rules(verdict) == [("dependencies.undeclared", "deny", "pkg/dyn.py", 2),
                              ("dependencies.dynamic", "warn", "pkg/dyn.py", 4)]
    assert "cannot be resolved" in verdict.findings[1].message


# -- runtime and test code ----------------------------------------------------------------


async def test_dev_only_dependency_used_at_runtime_is_denied(tmp_path: Path) -> None:
    verdict = await gate_on(tmp_path, {"pkg/check.py": "import pytest\nimport hypothesis\n"
                                                       "import socks\n"})
    assert rules(verdict) == [("dependencies.dev_only", "deny", "pkg/check.py", 1),
                              ("dependencies.dev_only", "deny", "pkg/check.py", 2)]
    assert "declared only in the dev extra" in verdict.findings[0].message
    assert "extra 'dev'" in verdict.findings[0].message
    assert "dependency group 'test'" in verdict.findings[1].message


async def test_dev_dependencies_in_test_code_pass(tmp_path: Path) -> None:
    verdict = await gate_on(tmp_path, {
        "tests/test_app.py": "import pytest\nimport hypothesis\n",
        "pkg/conftest.py": "import pytest\n",
        "pkg/app_test.py": "import pytest\n",
        "test/helpers/util.py": "import hypothesis\n"})
    assert verdict.verdict == Verdict.PASS, verdict.summary
    # Test code still imports only what is declared somewhere.
    verdict = await gate_on(tmp_path / "2", {"tests/test_app.py": "import mock_nope\n"})
    assert rules(verdict) == [("dependencies.undeclared", "deny", "tests/test_app.py", 1)]


async def test_requirements_dev_file_is_dev_only(tmp_path: Path) -> None:
    base = {"pyproject.toml": '[project]\nname = "pkg"\nversion = "0.1"\n',
            "requirements.txt": "PyYAML==6.0  # config\n",
            "requirements-dev.txt": "-r requirements.txt\nfreezegun\n"}
    verdict = await gate_on(tmp_path, {"pkg/clock.py": "import freezegun\nimport yaml\n",
                                       "tests/test_clock.py": "import freezegun\n"}, base=base)
    assert rules(verdict) == [("dependencies.dev_only", "deny", "pkg/clock.py", 1)]
    assert "requirements-dev.txt" in verdict.findings[0].message


# -- new declarations ---------------------------------------------------------------------


async def test_a_newly_declared_dependency_needs_approval(tmp_path: Path) -> None:
    pyproject = PYPROJECT.replace('"PyYAML>=6"', '"PyYAML>=6",\n    "httpx_new>=0.27"')
    verdict = await gate_on(tmp_path, {"pyproject.toml": pyproject,
                                       "pkg/net.py": "import httpx_new\n"})
    assert verdict.verdict == Verdict.APPROVE
    assert rules(verdict) == [("dependencies.new", "needs_approval", "pyproject.toml", 5)]
    assert "httpx-new" in verdict.summary and "a person approves" in verdict.summary


async def test_new_dev_and_moved_declarations(tmp_path: Path) -> None:
    pyproject = PYPROJECT.replace('"pytest>=8"', '"pytest>=8", "coverage"').replace(
        'socks = ["pysocks"]', 'socks = ["pysocks", "hypothesis"]')
    verdict = await gate_on(tmp_path, {"pyproject.toml": pyproject})
    found = {(f.rule, f.verdict.value, f.message.split(" in ")[0]) for f in verdict.findings}
    assert found == {("dependencies.new", "needs_approval", "declares a new dev dependency "
                      "coverage"),
                     ("dependencies.new", "needs_approval", "declares a new runtime "
                      "dependency hypothesis")}
    # Rewriting a declaration file without adding anything asks nobody.
    verdict = await gate_on(tmp_path / "2", {"pyproject.toml": PYPROJECT + "\n# tidy\n"})
    assert verdict.verdict == Verdict.PASS, verdict.summary


async def test_without_a_virtualenv_the_engines_environment_and_aliases_serve(
        tmp_path: Path) -> None:
    verdict = await gate_on(tmp_path, {"pkg/conf.py": "import yaml\n"}, env=False)
    assert verdict.verdict == Verdict.PASS, verdict.summary
    assert sys.prefix in verdict.summary


# -- deptry on the same cases -------------------------------------------------------------


DEPTRY_CASES = {
    "pkg/old.py": "import legacy_nope\n",
    "pkg/opt.py": "try:\n    import ujson_nope\nexcept ImportError:\n    ujson_nope = None\n",
    "pkg/tc.py": "import typing as t\nif t.TYPE_CHECKING:\n    import numpy_nope\n",
    "pkg/dyn.py": "import importlib\n__import__('dunder_nope')\n"
                  "importlib.import_module('lxml_nope')\n",
    "pkg/devuse.py": "import pytest\nimport hypothesis\n",
    "pkg/ver.py": "import sys\nif sys.version_info >= (3, 11):\n    import tomllib\nelse:\n"
                  "    import tomli_nope\n",
    "tests/test_x.py": "import pytest\nimport mock_nope\n",
}


async def test_compared_with_deptry(tmp_path: Path) -> None:
    deptry = Path(sys.executable).parent / "deptry"
    if not deptry.exists():
        pytest.skip("deptry is not installed")
    base = {"pkg/old.py": "import legacy_nope\n\n\ndef f():\n    return 1\n",
            "pkg/conf.py": "import yaml\n"}
    change = {**DEPTRY_CASES, "pkg/old.py": base["pkg/old.py"] + "\n\ndef g():\n    return 2\n"}
    verdict = await gate_on(tmp_path, change, base=base, env=False)
    ours = {(f.file.split("/")[-1], f.rule.split(".")[1], f.verdict.value)
            for f in verdict.findings}
    assert ours == {("opt.py", "optional", "warn"), ("tc.py", "optional", "warn"),
                    ("dyn.py", "undeclared", "deny"),  # dunder_nope, lxml_nope
                    ("devuse.py", "dev_only", "deny"),  # pytest (extra), hypothesis (group)
                    ("ver.py", "optional", "warn"), ("test_x.py", "undeclared", "deny")}
    assert {f.message.split(",")[0] for f in verdict.findings if f.file == "pkg/dyn.py"} == \
        {"imports dunder_nope", "imports lxml_nope"}

    root = tmp_path / "repo"
    out = tmp_path / "deptry.json"
    subprocess.run([str(deptry), ".", "--json-output", str(out)], cwd=root,
                   capture_output=True, check=False, timeout=120)
    theirs = {(e["location"]["file"].split("/")[-1], e["module"], e["error"]["code"])
              for e in json.loads(out.read_text())}
    assert theirs == {
        ("old.py", "legacy_nope", "DEP001"),  # whole files: the old import still counts
        ("opt.py", "ujson_nope", "DEP001"),  # a guarded import is as hard as any
        ("dyn.py", "lxml_nope", "DEP001"),  # import_module('literal') seen ...
        # ... __import__('dunder_nope') not seen; TYPE_CHECKING (tc.py) skipped
        ("devuse.py", "hypothesis", "DEP004"),  # a PEP 735 group is dev to both ...
        # ... but the `dev` extra is runtime to deptry: `import pytest` passes there
        ("ver.py", "tomli_nope", "DEP001"),  # the other branch of a version check
        # tests/ is excluded: mock_nope passes there
        ("pyproject.toml", "pysocks", "DEP002"),  # unused declared: not judged here
    }
