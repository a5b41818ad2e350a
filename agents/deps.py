"""Phantom dependencies: third-party imports that the project does not declare.

A branch that imports a package nobody declared may pass its tests on the machine it ran on
and break everywhere else; the landing step refuses it with the names it found.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

# Distribution names whose import name differs, for the common cases.
KNOWN_ALIASES = {
    "pyyaml": "yaml", "beautifulsoup4": "bs4", "pillow": "PIL", "scikit-learn": "sklearn",
    "python-dateutil": "dateutil", "gitpython": "git", "opencv-python": "cv2",
    "attrs": "attr", "protobuf": "google", "pyjwt": "jwt", "python-dotenv": "dotenv",
}
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def declared_modules(root: Path) -> set[str]:
    """Import names the project declares: pyproject dependencies and requirements files."""
    names: list[str] = []
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        try:
            doc = tomllib.loads(pyproject.read_text())
        except tomllib.TOMLDecodeError:
            doc = {}
        project = doc.get("project", {})
        names += project.get("dependencies", [])
        for extra in project.get("optional-dependencies", {}).values():
            names += extra
        names += doc.get("dependency-groups", {}).get("dev", [])
    for req in root.glob("requirements*.txt"):
        names += [line for line in req.read_text().splitlines()
                  if line.strip() and not line.lstrip().startswith(("#", "-"))]
    out: set[str] = set()
    for spec in names:
        match = _NAME.match(spec) if isinstance(spec, str) else None
        if match:
            dist = match.group(1).lower()
            out.add(_normalise(KNOWN_ALIASES.get(dist, dist)))
    return out


def local_modules(root: Path) -> set[str]:
    """Top-level names that resolve to the project's own code."""
    out: set[str] = set()
    for base in (root, root / "src"):
        if not base.is_dir():
            continue
        for entry in base.iterdir():
            if entry.suffix == ".py":
                out.add(_normalise(entry.stem))
            elif entry.is_dir() and not entry.name.startswith("."):
                out.add(_normalise(entry.name))
    return out


def imported_modules(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def phantom_imports(root: Path, changed: list[str]) -> dict[str, list[str]]:
    """module -> files importing it, for third-party imports nobody declared."""
    allowed = declared_modules(root) | local_modules(root)
    stdlib = {_normalise(m) for m in sys.stdlib_module_names}
    found: dict[str, list[str]] = {}
    for rel in changed:
        if not rel.endswith(".py"):
            continue
        file = root / rel
        if not file.is_file():
            continue
        for module in imported_modules(file.read_text("utf-8", "replace")):
            key = _normalise(module)
            if key in stdlib or key in allowed or key == "__future__":
                continue
            found.setdefault(module, []).append(rel)
    return found
