"""Phantom dependencies: third-party imports that the project does not declare.

A branch that imports a package nobody declared may pass its tests on the machine it ran on
and break everywhere else; the landing step refuses it with the names it found. The tree it
reads is the branch's: files are read beneath its handle (no link followed, regular files
only, at most MAX_SOURCE bytes each).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

from agents.beneath import Beneath, PathDenied

MAX_SOURCE = 2 * 1024 * 1024


def _read(tree: Beneath, rel: str) -> str | None:
    try:
        return tree.read(rel, MAX_SOURCE).decode("utf-8", "replace")
    except (PathDenied, OSError):
        return None

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
    with Beneath(root) as tree:
        text = _read(tree, "pyproject.toml")
        requirements = {p.name: _read(tree, p.name) for p in root.glob("requirements*.txt")}
    if text is not None:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            doc = {}
        project = doc.get("project", {})
        names += project.get("dependencies", [])
        for extra in project.get("optional-dependencies", {}).values():
            names += extra
        names += doc.get("dependency-groups", {}).get("dev", [])
    for content in requirements.values():
        names += [line for line in (content or "").splitlines()
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
            elif entry.is_dir() and not entry.is_symlink() and not entry.name.startswith("."):
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
    with Beneath(root) as tree:
        sources = {rel: _read(tree, rel) for rel in changed if rel.endswith(".py")}
    for rel, source in sources.items():
        if source is None:
            continue  # deleted, a link, or not a regular file: nothing runs from it
        for module in imported_modules(source):
            key = _normalise(module)
            if key in stdlib or key in allowed or key == "__future__":
                continue
            found.setdefault(module, []).append(rel)
    return found
