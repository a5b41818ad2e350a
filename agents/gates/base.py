"""What a gate is: one check an entry's merged tree meets before it is tested and landed.

Gates are pluggable parts of the queue's link step (agents/queue/executor.py). Each reads
the same input (the merged tree, its change against the point of the chain it sits on, the
spec, the task, the agent, what earlier gates found) and answers with a verdict and the
findings behind it, so a person sees the file, the line and the rule, not only "refused".
The tree is the agent's work: hostile ground. Gates read it beneath a directory handle
(agents/beneath.py) or through git's own object store, never by following its links.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from agents.gitcmd import git_bytes, paths_z


class Verdict(StrEnum):
    """Worst wins: a deny is never softened by a later pass."""

    PASS = "pass"
    WARN = "warn"
    APPROVE = "needs_approval"
    DENY = "deny"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Verdict.PASS: 0, Verdict.WARN: 1, Verdict.APPROVE: 2, Verdict.DENY: 3}


def worst(verdicts: Sequence[Verdict]) -> Verdict:
    return max(verdicts, key=lambda v: v.rank, default=Verdict.PASS)


@dataclass(frozen=True)
class Finding:
    """One reason behind a verdict, precise enough to act on: the rule that fired and where."""

    rule: str
    message: str
    verdict: Verdict = Verdict.DENY
    file: str = ""
    line: int = 0

    def shown(self) -> str:
        where = f"{self.file}:{self.line}: " if self.file and self.line else \
            f"{self.file}: " if self.file else ""
        return f"{where}{self.message} [{self.rule}]"

    def as_dict(self) -> dict[str, object]:
        return {"rule": self.rule, "message": self.message, "verdict": self.verdict.value,
                "file": self.file, "line": self.line}


@dataclass(frozen=True)
class Change:
    """One path the change touches, as git's diff of the chain point and the merge says."""

    path: str
    status: str  # git's letter: A added, M modified, D deleted, T type changed
    insertions: int = 0
    deletions: int = 0
    binary: bool = False


@dataclass
class GateInput:
    """Everything a gate may look at. `base` is the chain point the entry was merged onto,
    so the change is the entry's own, whatever is ahead of it; `main` is main's head, where
    anything a gate is configured by (policies, gate scripts) is read from: a change never
    loosens its own check."""

    repo: Path
    tree: Path
    base: str
    merged: str
    main: str
    entry_commit: str
    spec_id: str
    task_id: str
    title: str = ""
    boundaries: tuple[str, ...] = ()
    task_paths: tuple[str, ...] = ()
    role: str = ""
    model: str = ""
    approved: bool = False
    changes: list[Change] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    _added: dict[str, list[tuple[int, str]]] | None = None

    @property
    def changed(self) -> list[str]:
        return [c.path for c in self.changes]

    async def added_lines(self) -> dict[str, list[tuple[int, str]]]:
        """path -> (line number in the merged tree, text) of every line the change adds.
        From git's own diff (no context lines), read once and shared by every gate."""
        if self._added is None:
            out = await git_bytes("diff", "--no-ext-diff", "--no-textconv", "--no-color",
                                  "--no-renames", "-U0", self.base, self.merged,
                                  cwd=self.tree)
            self._added = parse_added(out.decode("utf-8", "replace"))
        return self._added


_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")


def parse_added(diff: str) -> dict[str, list[tuple[int, str]]]:
    added: dict[str, list[tuple[int, str]]] = {}
    path = ""
    line = 0
    for raw in diff.splitlines():
        if raw.startswith("+++ "):
            target = raw[4:]
            path = target[2:] if target.startswith("b/") else ""
            if path:
                added.setdefault(path, [])
        elif raw.startswith("@@"):
            m = _HUNK.match(raw)
            line = int(m.group(1)) if m else 0
        elif raw.startswith("+") and path:
            added[path].append((line, raw[1:]))
            line += 1
    return added


async def changes_between(tree: Path, base: str, merged: str) -> list[Change]:
    """The change's paths with status and line counts, from git (`diff --numstat`, which
    says `-` for a binary file)."""
    status_out = await git_bytes("diff", "--name-status", "-z", "--no-renames", base, merged,
                                 cwd=tree)
    parts = paths_z(status_out)
    statuses = {parts[i + 1]: parts[i] for i in range(0, len(parts) - 1, 2)}
    counts: dict[str, tuple[int, int, bool]] = {}
    num_out = await git_bytes("diff", "--numstat", "-z", "--no-renames", base, merged,
                              cwd=tree)
    for record in paths_z(num_out):
        fields = record.split("\t", 2)
        if len(fields) != 3:
            continue
        ins, dels, path = fields
        binary = ins == "-"
        counts[path] = (0 if binary else int(ins), 0 if binary else int(dels), binary)
    return [Change(path, statuses[path][:1], *counts.get(path, (0, 0, False)))
            for path in statuses]


@dataclass
class GateVerdict:
    gate: str
    verdict: Verdict
    summary: str
    findings: list[Finding] = field(default_factory=list)

    @classmethod
    def of(cls, gate: str, findings: list[Finding], passed: str) -> GateVerdict:
        """The verdict the findings add up to; `passed` says what held when none fired."""
        verdict = worst([f.verdict for f in findings])
        if not findings:
            return cls(gate, Verdict.PASS, passed)
        counted = [f for f in findings if f.verdict == verdict]
        first = "; ".join(f.shown() for f in counted[:3])
        more = f" and {len(counted) - 3} more" if len(counted) > 3 else ""
        return cls(gate, verdict, first + more, findings)


class Gate(Protocol):
    """A check of the queue. `cost` orders gates cheapest first, so an entry a cheap gate
    refuses never pays for an expensive one."""

    name: str
    cost: int

    async def check(self, given: GateInput) -> GateVerdict: ...
