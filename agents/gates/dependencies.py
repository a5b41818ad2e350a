"""Undeclared dependencies, as a gate: third-party imports in changed files nobody declared."""

from __future__ import annotations

import asyncio
from typing import Any

from agents.deps import phantom_imports
from agents.gates.base import Finding, GateInput, GateVerdict, Verdict
from agents.gitcmd import shown


class DependenciesGate:
    name = "dependencies"
    cost = 4

    def __init__(self, services: Any = None) -> None:
        pass

    async def check(self, given: GateInput) -> GateVerdict:
        phantom = await asyncio.to_thread(phantom_imports, given.tree, given.changed)
        findings = [Finding("dependencies.undeclared",
                            f"imports {module}, which the project does not declare",
                            Verdict.DENY, shown(f))
                    for module, files in sorted(phantom.items()) for f in files]
        return GateVerdict.of(self.name, findings, "no undeclared imports")
