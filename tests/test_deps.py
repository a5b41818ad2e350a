"""Phantom dependency detection on real project layouts."""

from __future__ import annotations

from pathlib import Path

from agents.deps import declared_modules, imported_modules, phantom_imports


def test_imports_are_parsed_not_grepped() -> None:
    source = (
        "import os, json\nimport yaml.loader as y\nfrom requests import get\n"
        "from . import sibling\nfrom .x import y\n# import fake\ns = 'import notreal'\n"
    )
    assert imported_modules(source) == {"os", "json", "yaml", "requests"}


def test_declared_from_pyproject_and_requirements(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "p"\ndependencies = ["PyYAML>=6", "attrs"]\n'
        '[project.optional-dependencies]\ndev = ["pytest-asyncio"]\n')
    (tmp_path / "requirements-dev.txt").write_text("# tools\nrich==13\n-r other.txt\n")
    assert declared_modules(tmp_path) >= {"yaml", "attr", "pytest_asyncio", "rich"}


def test_phantom_found_with_its_file(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "p"\ndependencies = []\n')
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text(
        "import os\nimport regex\nfrom pkg import b\nimport numpy as np\n")
    (tmp_path / "pkg" / "b.py").write_text("import regex\n")
    (tmp_path / "notes.txt").write_text("import regex\n")
    found = phantom_imports(tmp_path, ["pkg/a.py", "pkg/b.py", "notes.txt", "gone.py"])
    assert found == {"regex": ["pkg/a.py", "pkg/b.py"], "numpy": ["pkg/a.py"]}
