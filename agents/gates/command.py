"""A gate of the user's own: a script from main's version of the repository, run in the
sandbox over the merged tree, that answers in JSON.

The script is read from main (`git show <main>:<path>`), never from the entry's branch, so a
change cannot rewrite the check it is judged by; it is handed to its interpreter as an
argument (`sh -c`, `python3 -c`), so nothing is written into the tree the other gates read.
It runs like the tests do: a fresh sandbox, the tree's git metadata read-only, the engine's
limits. Its standard output is one JSON object:

    {"verdict": "pass" | "warn" | "needs_approval" | "deny",
     "findings": [{"file": "a.py", "line": 3, "rule": "mine.x", "message": "...",
                   "verdict": "deny"}]}

A finding's verdict defaults to the script's; the gate's verdict is the worst of both. A
script that exits non-zero without that object, or prints something else, denies, saying
why: a broken check never waves a change through.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from agents.gates.base import Finding, GateInput, GateVerdict, Verdict, worst
from agents.gitcmd import GitError, git_bytes
from agents.sandbox.base import SandboxContext

# Linux refuses a single argument longer than this (MAX_ARG_STRLEN).
MAX_SCRIPT = 128 * 1024 - 1
_VERDICTS = {v.value: v for v in Verdict}


def interpreter(script: str) -> list[str]:
    """The argv that runs the script's text: its shebang's interpreter with -c, else sh."""
    first = script.split("\n", 1)[0]
    if first.startswith("#!"):
        words = shlex.split(first[2:].strip())
        if words and words[0].endswith("/env") and len(words) > 1:
            words = words[1:]
        if words:
            return [words[0].rsplit("/", 1)[-1] if "python" in words[0] else words[0],
                    *words[1:], "-c", script]
    return ["sh", "-c", script]


def parse_answer(gate: str, stdout: str) -> GateVerdict:
    """The script's JSON, or why it is not an answer (ValueError)."""
    text = stdout.strip()
    start = text.rfind("\n{")
    doc: Any = json.loads(text[start + 1:] if start >= 0 else text)
    if not isinstance(doc, dict) or doc.get("verdict") not in _VERDICTS:
        raise ValueError('expected {"verdict": "pass"|"warn"|"needs_approval"|"deny", ...}')
    said = _VERDICTS[doc["verdict"]]
    findings = []
    for item in doc.get("findings") or []:
        if not isinstance(item, dict) or not isinstance(item.get("message"), str):
            raise ValueError("each finding needs a \"message\" string")
        verdict = _VERDICTS.get(str(item.get("verdict") or said.value), said)
        line = item.get("line")
        findings.append(Finding(str(item.get("rule") or gate), item["message"][:500],
                                verdict, str(item.get("file") or "")[:300],
                                line if isinstance(line, int) and line > 0 else 0))
    verdict = worst([said, *(f.verdict for f in findings)])
    if not findings and verdict != Verdict.PASS:
        findings = [Finding(gate, f"the {gate} script says {verdict.value}", verdict)]
    result = GateVerdict.of(gate, findings, f"the {gate} script passes it")
    result.verdict = verdict
    return result


class CommandGate:
    cost = 6

    def __init__(self, services: Any, name: str, script: str) -> None:
        self.services = services
        self.name = name
        self.script = script

    async def check(self, given: GateInput) -> GateVerdict:
        try:
            blob = await git_bytes("show", f"{given.main}:{self.script}", cwd=given.repo)
        except GitError:
            return self._deny("missing", f"{self.script} is not in main's version of the "
                              "repository ([gates.command] reads it from main)")
        text = blob.decode("utf-8", "replace")
        if len(blob) > MAX_SCRIPT or "\0" in text:
            return self._deny("script", f"{self.script} is not a script of at most "
                              f"{MAX_SCRIPT} bytes of text")
        sandbox = await self.services.backend.open(SandboxContext(
            worktree=given.tree, agent_id=f"gate-{self.name}",
            read_only=[given.tree / ".git"]))
        try:
            env = {"FACTORY_GATE": self.name, "FACTORY_BASE": given.base,
                   "FACTORY_MERGED": given.merged, "FACTORY_SPEC": given.spec_id,
                   "FACTORY_TASK": given.task_id,
                   "FACTORY_CHANGED": "\n".join(given.changed)}
            result = await sandbox.run(interpreter(text), cwd=given.tree, env=env,
                                       limits=self.services.limits)
        finally:
            await sandbox.close()
        try:
            return parse_answer(self.name, result.stdout)
        except (ValueError, json.JSONDecodeError) as exc:
            said = (result.stderr or result.stdout).strip().splitlines()
            why = f"exit code {result.exit_code}" if result.stop == "exit" else result.detail
            return self._deny("answer", f"{self.script} gave no answer ({why}; {exc}): "
                              + (said[-1][:300] if said else "no output"))

    def _deny(self, rule: str, message: str) -> GateVerdict:
        finding = Finding(f"{self.name}.{rule}", message)
        return GateVerdict(self.name, Verdict.DENY, message, [finding])
