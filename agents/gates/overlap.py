"""Conflicts beyond git's verdict: the entry changes lines that changes ahead of it changed.

The link's merge is clean by now (a conflicting merge never reaches the gates), but git may
have combined two edits of the same lines through a merge driver (`merge=union`) or because
they happened to merge; neither agent wrote or tested the result. The entry's own change
and what reached the chain point since they forked are compared line range by line range
(agents/overlap.py, from git's diff).
"""

from __future__ import annotations

from typing import Any

from agents.gates.base import Finding, GateInput, GateVerdict, Verdict
from agents.gitcmd import shown
from agents.overlap import same_lines


def _lines(spans: list[tuple[int, int]]) -> str:
    return ", ".join(f"{a}" if b - a <= 1 else f"{a}-{b - 1}" for a, b in spans[:5])


class OverlapGate:
    name = "overlap"
    cost = 2

    def __init__(self, services: Any = None) -> None:
        pass

    async def check(self, given: GateInput) -> GateVerdict:
        both = await same_lines(given.tree, given.entry_commit, given.base, given.changed)
        findings = [Finding("overlap.same_lines",
                            f"changes lines {_lines(spans)} that main or the entries ahead "
                            "changed too since this branch started (git merged them without "
                            "a conflict; nobody wrote or tested the combination)",
                            Verdict.DENY, shown(path), spans[0][0])
                    for path, spans in sorted(both.items())]
        return GateVerdict.of(self.name, findings,
                              "no line changed on both sides since the branch started")
