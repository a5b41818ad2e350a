"""Boundaries on the result: the paths a change actually touches, not the ones its plan named.

The planner already keeps each task's paths inside its spec's Boundaries, but an agent may
write anywhere its worktree lets it. A path outside the spec's Boundaries is refused; one
inside them but outside the task's own paths is shown (tasks often touch a neighbouring test
or module, and the spec's author drew the line at the Boundaries).
"""

from __future__ import annotations

from typing import Any

from agents.gates.base import Finding, GateInput, GateVerdict, Verdict
from agents.gitcmd import shown
from agents.specs import path_in_boundaries


class BoundariesGate:
    name = "boundaries"
    cost = 1

    def __init__(self, services: Any = None) -> None:
        pass

    async def check(self, given: GateInput) -> GateVerdict:
        findings: list[Finding] = []
        boundaries = list(given.boundaries)
        for change in given.changes:
            if boundaries and not path_in_boundaries(change.path, boundaries):
                findings.append(Finding(
                    "boundaries.spec", "outside the spec's Boundaries ("
                    + ", ".join(boundaries) + ")", Verdict.DENY, shown(change.path)))
            elif given.task_paths and not path_in_boundaries(change.path,
                                                             list(given.task_paths)):
                findings.append(Finding(
                    "boundaries.task", "outside the task's paths ("
                    + ", ".join(given.task_paths) + ")", Verdict.WARN,
                    shown(change.path)))
        if not boundaries:
            findings.append(Finding("boundaries.none", "the spec declares no Boundaries: "
                                    "nothing limits where this change may write",
                                    Verdict.WARN))
        return GateVerdict.of(self.name, findings,
                              f"{len(given.changes)} paths, all inside the task's paths")
