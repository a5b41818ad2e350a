"""How risky a branch is to land, from what it touches.

Risk decides which entries wait for a person (the `[queue] approval` setting) and orders the
console's inbox, so the reasons are kept with the verdict: a person should see why.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Literal

Risk = Literal["low", "medium", "high"]

_MANIFESTS = {"pyproject.toml", "setup.py", "setup.cfg", "requirements.txt", "package.json",
              "Cargo.toml", "go.mod", "Makefile", "Dockerfile"}
_CI_DIRS = (".github/", ".ci/", ".gitlab-ci")


def assess_risk(files: Iterable[str], insertions: int, deletions: int) -> tuple[Risk, list[str]]:
    paths = list(files)
    high: list[str] = []
    medium: list[str] = []
    for path in paths:
        name = PurePosixPath(path).name
        if name in _MANIFESTS or name.startswith("requirements"):
            high.append(f"changes the build or dependencies ({path})")
        elif path.startswith(_CI_DIRS):
            high.append(f"changes CI ({path})")
        elif name.startswith("test_") or "/tests/" in f"/{path}":
            medium.append(f"changes tests ({path})")
    lines = insertions + deletions
    if lines > 400:
        high.append(f"{lines} lines changed")
    elif lines > 80:
        medium.append(f"{lines} lines changed")
    if len(paths) > 12:
        high.append(f"{len(paths)} files changed")
    elif len(paths) > 4:
        medium.append(f"{len(paths)} files changed")
    if deletions > 2 * max(insertions, 1) and deletions > 40:
        medium.append(f"mostly deletions ({deletions} lines)")
    if high:
        return "high", high + medium
    if medium:
        return "medium", medium
    return "low", []


def needs_approval(policy: str, risk: Risk) -> bool:
    return policy == "always" or (policy == "high" and risk == "high") or \
        (policy == "medium" and risk in ("medium", "high"))
