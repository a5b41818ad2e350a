"""How risky a branch is to land, from what it touches.

Risk decides which entries wait for a person (the `[queue] approval` setting) and orders the
console's inbox, so the reasons are kept with the verdict: a person should see why.

This is the estimate made at queue entry, from file names and line counts alone. When the
policy gate runs, it decides at link time from what the change does (agents/policies/
risk.rego: weakened tests, build files, dependencies...), and the queue asks for approval at
entry only for `approval = "always"`. Test files never raise this estimate: new tests are
the work we want, and weakened ones are the policy gate's to find (a file name cannot say
which). The line counts are the branch's totals, tests included (the branch row keeps no
per-file counts).
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
    lines = insertions + deletions
    if lines > 400:
        high.append(f"{lines} lines changed")
    elif lines > 80:
        medium.append(f"{lines} lines changed")
    code = [p for p in paths if not is_test(p)]
    if len(code) > 12:
        high.append(f"{len(code)} files changed outside tests")
    elif len(code) > 4:
        medium.append(f"{len(code)} files changed outside tests")
    if deletions > 2 * max(insertions, 1) and deletions > 40:
        medium.append(f"mostly deletions ({deletions} lines)")
    if high:
        return "high", high + medium
    if medium:
        return "medium", medium
    return "low", []


def is_test(path: str) -> bool:
    name = PurePosixPath(path).name
    return (name.startswith("test_") and name.endswith(".py")) or name.endswith("_test.py") \
        or any(part in ("tests", "test") for part in PurePosixPath(path).parts[:-1])


def at_entry(policy: str, risk: Risk, gates: Iterable[str]) -> bool:
    """Whether an entry waits for a person as it enters the queue: with the policy gate
    configured, only for "always" (the gate asks at link time from the policies' risk);
    without it, from this module's estimate."""
    if "policy" in gates:
        return policy == "always"
    return needs_approval(policy, risk)


def needs_approval(policy: str, risk: Risk) -> bool:
    return policy == "always" or (policy == "high" and risk == "high") or \
        (policy == "medium" and risk in ("medium", "high"))
