"""How agents/deps.py reads imports and declarations (the gate's tests are in tests/gates/)."""

from __future__ import annotations

import sys
from pathlib import Path

from agents.deps import (
    added_imports,
    distributions_for,
    environment_names,
    imported_modules,
    imports_of,
    is_test_code,
    parse_declarations,
    phantom_imports,
)


def test_imports_are_parsed_not_grepped() -> None:
    source = (
        "import os, json\nimport yaml.loader as y\nfrom requests import get\n"
        "from . import sibling\nfrom .x import y\n# import fake\ns = 'import notreal'\n"
    )
    assert imported_modules(source) == {"os", "json", "yaml", "requests"}


def test_guards_are_recorded() -> None:
    source = ("import sys as s\nfrom sys import version_info as vi\n"
              "if s.version_info[:2] < (3, 11):\n    import a\n"
              "if vi > (3,):\n    import b\n"
              "try:\n    import c\nexcept (ImportError, KeyError):\n    import d\n"
              "def f():\n    import e\n")
    found = {u.module: u.guard for u in imports_of(source) or []}
    assert found["a"] == found["b"] == "under a sys.version_info check"
    assert found["c"] == "inside try/except ImportError"
    assert found["d"] == found["e"] == "" and found["sys"] == ""
    assert imports_of("def (:\n") is None


def test_added_imports_ignore_moves_and_count_unguarding() -> None:
    before = "import a\nimport b.x\ntry:\n    import c\nexcept ImportError:\n    pass\n"
    after = "import b.y\nimport a\nimport c\nimport d\n"
    assert [(u.module, u.line) for u in added_imports(before, after) or []] == \
        [("c", 3), ("d", 4)]
    assert [u.module for u in added_imports(None, "import a\n") or []] == ["a"]


def test_declared_from_every_place_runtime_and_dev_apart() -> None:
    declared = parse_declarations({
        "pyproject.toml": (
            '[project]\nname = "p"\ndependencies = ["PyYAML>=6", "Zope.Interface"]\n'
            '[project.optional-dependencies]\ndev = ["pytest-asyncio"]\ncli = ["rich"]\n'
            '[dependency-groups]\nlint = ["ruff"]\n'
            'typing = ["mypy", {include-group = "lint"}]\nbench = ["pyperf"]\n'),
        "requirements-dev.txt": "# tools\nfreezegun==1  # time\n-r other.txt\n",
        "requirements.txt": "requests[socks] ; python_version > '3'\n",
        "setup.cfg": ("[options]\ninstall_requires =\n    attrs>=22\n"
                      "[options.extras_require]\ntesting = tox\n"),
    })
    assert set(declared.runtime) == {"pyyaml", "zope-interface", "rich", "requests",
                                     "attrs", "pyperf"}
    assert set(declared.dev) == {"pytest-asyncio", "ruff", "mypy", "freezegun", "tox"}
    assert declared.dev["mypy"] == "pyproject.toml dependency group 'typing'"


def test_test_code_is_told_by_its_path() -> None:
    assert all(map(is_test_code, ["tests/a.py", "pkg/test/b.py", "test_c.py", "d_test.py",
                                  "src/conftest.py"]))
    assert not any(map(is_test_code, ["pkg/testing.py", "contest.py", "pkg/attest.py"]))


def test_distributions_from_the_environment_then_aliases(tmp_path: Path) -> None:
    assert distributions_for("bs4", {}) == ["beautifulsoup4", "bs4"]
    assert distributions_for("yaml", {"yaml": ["PyYAML"]})[0] == "PyYAML"
    site = tmp_path / ".venv" / "lib" / "python3.11" / "site-packages"
    info = site / "Pillow-10.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: Pillow\nVersion: 10\n")
    (info / "RECORD").write_text("PIL/__init__.py,,\nPIL/Image.py,,\nsix.py,,\n")
    names, where = environment_names(tmp_path)
    assert names == {"PIL": ["Pillow"], "six": ["Pillow"]} and where == str(site)
    assert environment_names(None)[1] == sys.prefix


def test_phantom_found_with_its_file(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "p"\ndependencies = []\n')
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text(
        "import os\nimport regex\nfrom pkg import b\nimport numpy as np\n")
    (tmp_path / "pkg" / "b.py").write_text("import regex\n")
    (tmp_path / "notes.txt").write_text("import regex\n")
    found = phantom_imports(tmp_path, ["pkg/a.py", "pkg/b.py", "notes.txt", "gone.py"])
    assert found == {"regex": ["pkg/a.py", "pkg/b.py"], "numpy": ["pkg/a.py"]}
