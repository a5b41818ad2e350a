"""The policy gate: Rego policies (OPA v1 syntax) judge a change's facts, in-process (regopy).

The input is agents/gates/facts.py's document (its docstring has the shape). Policies are
Rego modules in `package factory` or a package beneath it (`package factory.mine`); the
gate reads these rules from every such package, each a set (`contains`) so that modules
add to each other:

    deny    contains {"rule": "...", "message": "...", "file": "...", "line": N}
    warn    contains {...same...}      # shown, lands
    approve contains {...same...}      # waits for a person (needs_approval)
    risk    contains {"level": "medium" | "high", "rule": "...", "reason": "...",
                      "file": "..."}

`file` and `line` are optional; a plain string is taken as a message. The entry's risk is
the highest level any risk item gives (none: low). When `[queue] approval` says that level
waits (agents/queue/risk.py's needs_approval) and no person approved this commit yet, the
gate's verdict is needs_approval with the reasons; otherwise a medium or high risk is a
warning that shows them. Low risk lands unattended. Outcome: deny findings deny; approve
findings need approval (a warning once a person approved the commit); warn findings warn.

The default set ships in agents/policies/ (secrets added deny; tests weakened and build or
CI files touched need approval; the risk rules), each with a `*_test.rego` of `test_` rules.
A user's own policies come from `[gates.policy] folder`, read from main's commit in the
repository (git ls-tree and cat-file of `given.main` in `given.repo`), never from the
entry's branch or the tree: a change cannot loosen its own check. `*_test.rego` files are
tests, never loaded by the gate (`factory policy check` runs them).

Compiling: once per policy folder version (the folder's tree id on main; main moving
without touching it costs one `git rev-parse`). regopy 1.5.2 (rego-cpp) is fragile on bad
policies: some compile errors come back only as text on the process's stdout, and some
shapes crash the process (`with input as {...}` replacing the whole input, when the rules it
reaches call a builtin). So a policy set is first validated in a child process
(`python -m agents.gates.policy`), one module at a time on top of those already accepted,
against an empty change: a module that fails to parse or compile is reported with its file
and line (the parse error's offset; a compile error names no place, so the line is that of
the name it mentions, else 1), a module that kills the child is reported as crashing the
engine, and the others keep running. Only accepted modules are loaded in the engine's
process. A malformed policy is a needs_approval finding on every entry until main's version
is fixed: a check that cannot run never lets a change land unattended, and a deny would
also refuse the very change that fixes it. (`with input.<field> as ...` works; the default
tests use it.)

Results are read from regopy's node tree, not its output string: 1.5.2 prints strings into
that JSON without escaping them, so one quote in a path would break it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from agents.gates.base import Finding, GateInput, GateVerdict, Verdict
from agents.gates.facts import empty_document, facts_of, sample_document
from agents.gitcmd import git, git_bytes, paths_z, shown
from agents.queue.risk import Risk, needs_approval

OUTPUTS = ("deny", "warn", "approve", "risk")
_VERDICTS = {"deny": Verdict.DENY, "warn": Verdict.WARN, "approve": Verdict.APPROVE}
_LEVELS = {"low": 0, "medium": 1, "high": 2}
_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][\w.]*)", re.MULTILINE)
_TEST_RULE = re.compile(r"^(test_\w+)\b", re.MULTILINE)
# Known to crash regopy 1.5.2's process: the whole input replaced in a `with`.
_CRASHES = re.compile(r"\bwith\s+input\s+as\b")
CHILD_SECONDS = 60.0


@dataclass(frozen=True)
class Source:
    """One .rego file: `name` is how it is shown (agents/policies/x.rego, or its path in the
    repository)."""

    name: str
    text: str

    @property
    def is_test(self) -> bool:
        return self.name.endswith("_test.rego")

    @property
    def package(self) -> str:
        m = _PACKAGE.search(self.text)
        return m.group(1) if m else ""


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str

    def shown(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class Report:
    """What validating a policy set found: the modules it accepted, its problems, and (when
    asked) the Rego tests' results as (file, line, name, passed)."""

    accepted: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    tests: list[tuple[str, int, str, bool]] = field(default_factory=list)


def default_sources() -> list[Source]:
    folder = resources.files("agents") / "policies"
    return sorted((Source(f"agents/policies/{p.name}", p.read_text())
                   for p in folder.iterdir() if p.name.endswith(".rego")),
                  key=lambda s: s.name)


def folder_sources(folder: Path) -> list[Source]:
    """A folder on disk (`factory policy check FOLDER`: the person's own working copy)."""
    return sorted((Source(str(p), p.read_text(errors="replace"))
                   for p in folder.rglob("*.rego") if p.is_file()), key=lambda s: s.name)


def clean_folder(folder: str) -> str:
    parts = [p for p in folder.strip().split("/") if p not in ("", ".")]
    return "" if any(p == ".." for p in parts) else "/".join(parts)


async def main_sources(repo: Path, main: str, folder: str) -> tuple[list[Source],
                                                                      list[Problem]]:
    """The user's policies as main holds them: regular .rego blobs under `folder`."""
    folder = clean_folder(folder)
    if not folder or not main:
        return [], []
    out = await git_bytes("ls-tree", "-r", "-z", "--full-tree", main, "--", f"{folder}/",
                          cwd=repo)
    entries: list[tuple[str, str]] = []
    problems: list[Problem] = []
    for record in paths_z(out):
        meta, _, path = record.partition("\t")
        mode, kind, blob = meta.split()
        if not path.endswith(".rego"):
            continue
        if kind != "blob" or mode not in ("100644", "100755"):
            problems.append(Problem(shown(path), 1, "not a regular file on main: not read"))
            continue
        entries.append((path, blob))
    if not entries:
        return [], problems
    data = await git_bytes("cat-file", "--batch", cwd=repo,
                           stdin="".join(f"{b}\n" for _, b in entries).encode())
    sources: list[Source] = []
    pos = 0
    for path, _ in entries:
        end = data.index(b"\n", pos)
        size = int(data[pos:end].split()[2])
        sources.append(Source(shown(path), data[end + 1:end + 1 + size].decode(
            "utf-8", "replace")))
        pos = end + 1 + size + 1
    return sorted(sources, key=lambda s: s.name), problems


# -- regopy, carefully ------------------------------------------------------------------------


def _node_value(node: Any) -> Any:
    """A regopy node as a Python value, from the node tree (never the output string)."""
    from regopy import NodeKind
    from regopy.rego_shared import rego_node_get, rego_node_size, rego_node_type, rego_node_value

    kind = rego_node_type(node)
    size = rego_node_size(node)
    if kind in (NodeKind.Term, NodeKind.Scalar, NodeKind.Terms) and size == 1:
        return _node_value(rego_node_get(node, 0))
    if kind == NodeKind.String:
        return rego_node_value(node)
    if kind == NodeKind.Int:
        return int(rego_node_value(node))
    if kind == NodeKind.Float:
        return float(rego_node_value(node))
    if kind in (NodeKind.Boolean, NodeKind.True_, NodeKind.False_):
        return rego_node_value(node) == "true"
    if kind == NodeKind.Null:
        return None
    if kind in (NodeKind.Array, NodeKind.Set, NodeKind.Terms):
        return [_node_value(rego_node_get(node, i)) for i in range(size)]
    if kind == NodeKind.Object:
        items = {}
        for i in range(size):
            item = rego_node_get(node, i)
            key = _node_value(rego_node_get(item, 0))
            items[key if isinstance(key, str) else json.dumps(key)] = \
                _node_value(rego_node_get(item, 1))
        return items
    if kind == NodeKind.Undefined:
        return None
    raise RegoFailure(f"unexpected result node (kind {int(kind)})")


class RegoFailure(Exception):
    pass


def query(interp: Any, text: str) -> Any:
    """The query's value (None when undefined); RegoFailure with regopy's message."""
    from regopy.rego_shared import (
        rego_free_output,
        rego_output_expressions_at_index,
        rego_output_ok,
        rego_output_string,
        rego_query,
    )

    out = rego_query(interp._impl, text)
    try:
        said = rego_output_string(out)
        if not rego_output_ok(out) or said.startswith(("(error", "<error>")):
            raise RegoFailure(_errormsg(said) or "the policy does not compile")
        if said == "undefined":
            return None
        return _node_value(rego_output_expressions_at_index(out, 0))
    finally:
        rego_free_output(out)


def _errormsg(text: str) -> str:
    """The messages of rego-cpp's error s-expression (`(errormsg 16:this is unclosed)`)."""
    found = []
    for m in re.finditer(r"\(errormsg (\d+):", text):
        n = int(m.group(1))
        found.append(text[m.end():m.end() + n])
    return "; ".join(dict.fromkeys(found))


def _parse_location(text: str, source: Source) -> int:
    m = re.search(re.escape(source.name) + r"\|(\d+)\|", text)
    if not m:
        return 1
    offset = int(m.group(1))
    return source.text.encode()[:offset].count(b"\n") + 1


def _line_of(message: str, noise: str, source: Source) -> int:
    m = re.search(re.escape(source.name) + r":(\d+):\d+", noise)
    if m:
        return int(m.group(1))
    names = re.findall(r"[A-Za-z_][\w]*", message.rsplit(":", 1)[-1])
    for name in reversed(names):
        for number, line in enumerate(source.text.splitlines(), 1):
            if re.search(rf"\b{re.escape(name)}\b", line) and not line.lstrip().startswith(
                    ("#", "package", "import")):
                return number
    return 1


def new_interpreter(sources: list[Source]) -> Any:
    from regopy import Interpreter

    interp = Interpreter()
    for s in sources:
        interp.add_module(s.name, s.text)
    return interp


def outputs_of(value: Any, packages: list[str]) -> tuple[dict[str, list[Any]], list[str]]:
    """deny/warn/approve/risk items from each package's document, and shape problems."""
    found: dict[str, list[Any]] = {k: [] for k in OUTPUTS}
    problems: list[str] = []
    for package in dict.fromkeys(packages):
        doc: Any = {"factory": value}
        for part in package.split("."):
            doc = doc.get(part) if isinstance(doc, dict) else None
        if not isinstance(doc, dict):
            continue
        for key in OUTPUTS:
            items = doc.get(key)
            if items is None:
                continue
            if not isinstance(items, list):
                problems.append(f"data.{package}.{key} is not a set (write `{key} "
                                "contains {...} if {...}`)")
                continue
            found[key].extend(items)
    return found, problems


class _Noise:
    """rego-cpp writes some errors to fd 1: in the child, fd 1 is a file we read back."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()
        self.real = os.dup(1)
        os.dup2(self.file.fileno(), 1)

    def take(self) -> str:
        sys.stdout.flush()
        self.file.seek(0)
        text = self.file.read().decode("utf-8", "replace")
        self.file.seek(0)
        self.file.truncate()
        return text

    def say(self, obj: dict[str, Any]) -> None:
        os.write(self.real, (json.dumps(obj) + "\n").encode())


def _validate_here(sources: list[Source], tests: bool, skip: set[str]) -> None:
    """The child's work (see the module docstring); speaks JSON lines on the real stdout."""
    from regopy import RegoError

    noise = _Noise()
    accepted: list[Source] = []
    empty = empty_document()
    sample = sample_document()
    ordered = sorted(sources, key=lambda s: (s.is_test, not s.name.startswith("agents/")))
    for source in ordered:
        if source.is_test and not tests:
            continue
        problem = _static_problem(source)
        if problem is None and source.name in skip:
            continue
        if problem is None:
            noise.say({"trying": source.name})
            problem = _try_module(source, accepted, sample, noise, RegoError)
        if problem is not None:
            noise.say({"problem": [problem.file, problem.line, problem.message]})
        else:
            accepted.append(source)
            noise.say({"accepted": source.name})
    if tests:
        interp = new_interpreter(accepted)
        interp.set_input(empty)
        for source in (s for s in accepted if s.is_test):
            for m in _TEST_RULE.finditer(source.text):
                name = m.group(1)
                key = f"{source.name}::{name}"
                if key in skip:
                    continue
                line = source.text.count("\n", 0, m.start()) + 1
                noise.say({"trying": key})
                try:
                    passed = query(interp, f"data.{source.package}.{name}") is True
                except RegoFailure as exc:
                    noise.say({"problem": [source.name, line, f"{name}: {exc}"]})
                    passed = False
                noise.say({"test": [source.name, line, name, passed]})
    noise.say({"done": True})


def _static_problem(source: Source) -> Problem | None:
    package = source.package
    if not package:
        return Problem(source.name, 1, "no `package` line")
    if not source.is_test and package != "factory" and not package.startswith("factory."):
        return Problem(source.name, 1, f"package {package} is not beneath `factory`: the "
                       "gate would never read its rules")
    m = _CRASHES.search(source.text)
    if m:
        line = source.text.count("\n", 0, m.start()) + 1
        return Problem(source.name, line, "`with input as` replaces the whole input, which "
                       "crashes regopy 1.5.2: replace fields instead (`with input.files as "
                       "[...]`)")
    return None


def _try_module(source: Source, accepted: list[Source], sample: dict[str, Any],
                noise: _Noise, rego_error: type[Exception]) -> Problem | None:
    try:
        new_interpreter([source])
    except rego_error as exc:
        noise.take()
        msg = _errormsg(str(exc)) or "does not parse"
        return Problem(source.name, _parse_location(str(exc), source), msg)
    try:
        interp = new_interpreter([*accepted, source])
        interp.set_input(sample)
        value = query(interp, "data.factory")
        if source.is_test:
            query(interp, f"data.{source.package}")
    except (rego_error, RegoFailure) as exc:
        said = noise.take()
        msg = str(exc) if isinstance(exc, RegoFailure) else _errormsg(str(exc)) or str(exc)
        detail = " ".join(ln.strip() for ln in said.splitlines()
                          if ln.strip() and not ln.startswith(("--", "Errors:", "Pass "))
                          and set(ln.strip()) != {"~"})
        if msg == "the policy does not compile" and detail:
            msg = detail[:300]
        return Problem(source.name, _line_of(msg, said, source), msg)
    noise.take()
    packages = [s.package for s in (*accepted, source) if not s.is_test]
    _, shape = outputs_of(value, packages)
    if shape and not source.is_test:
        return Problem(source.name, 1, shape[0])
    return None


def _child_command() -> list[str]:
    return [sys.executable, "-m", "agents.gates.policy"]


def _child_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}


def _read_lines(lines: list[str], report: Report, tried: list[str]) -> bool:
    done = False
    for raw in lines:
        try:
            said = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if "trying" in said:
            tried.append(said["trying"])
        elif "accepted" in said:
            report.accepted.append(said["accepted"])
        elif "problem" in said:
            file, line, message = said["problem"]
            report.problems.append(Problem(file, line, message))
        elif "test" in said:
            report.tests.append(tuple(said["test"]))  # type: ignore[arg-type]
        elif said.get("done"):
            done = True
    return done


def _crashed(report: Report, last: str, code: int) -> str:
    file, _, test = last.partition("::")
    what = f"{test}: " if test else ""
    report.problems.append(Problem(file, 1, f"{what}crashes the Rego engine (regopy exited "
                                   f"with {code}): not loaded"))
    if test:
        report.tests.append((file, 1, test, False))
    return last


async def validate(sources: list[Source], tests: bool = False) -> Report:
    """validate_sync, off the event loop."""
    return await asyncio.to_thread(validate_sync, sources, tests)


def validate_sync(sources: list[Source], tests: bool = False) -> Report:
    """The policy set validated in a child process. A module (or test) that kills the child
    is reported and skipped, and the child runs again without it (its report kept)."""
    crashes: list[Problem] = []
    crashed_tests: list[tuple[str, int, str, bool]] = []
    skip: set[str] = set()
    while True:
        report = Report()
        tried: list[str] = []
        payload = json.dumps({"sources": [[s.name, s.text] for s in sources], "tests": tests,
                              "skip": sorted(skip)})
        try:
            done = subprocess.run(_child_command(), input=payload.encode(),
                                  capture_output=True, env=_child_env(),
                                  timeout=CHILD_SECONDS, check=False)
            out, code = done.stdout, done.returncode
        except subprocess.TimeoutExpired:
            out, code = b"", -9
        finished = _read_lines(out.decode("utf-8", "replace").splitlines(), report, tried)
        report.problems[:0] = crashes
        report.tests[:0] = crashed_tests
        if finished:
            return report
        if not tried or tried[-1] in skip:
            report.problems.append(Problem("(policies)", 1, "the policy engine failed"))
            return report
        before = len(report.problems)
        skip.add(_crashed(report, tried[-1], code))
        crashes.extend(report.problems[before:])
        if "::" in tried[-1]:
            crashed_tests.append(report.tests[-1])


# -- the gate ---------------------------------------------------------------------------------


@dataclass
class Compiled:
    """A validated policy set loaded in this process, with what validating it found."""

    interpreter: Any
    packages: list[str]
    problems: list[Problem]
    names: list[str]


@dataclass
class Outcome:
    findings: list[Finding]
    risk: Risk
    reasons: list[str]


def _text(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    return value if isinstance(value, str) else "" if value is None else json.dumps(value)


def judge(compiled: Compiled, document: dict[str, Any], approval: str,
          approved: bool) -> Outcome:
    """The findings and risk the policies give this document."""
    compiled.interpreter.set_input(document)
    findings: list[Finding] = []
    try:
        value = query(compiled.interpreter, "data.factory")
        outputs, shape = outputs_of(value, compiled.packages)
    except RegoFailure as exc:
        outputs, shape = {k: [] for k in OUTPUTS}, [f"the policies failed: {exc}"]
    for message in shape:
        findings.append(Finding("policy.error", message, Verdict.APPROVE))
    for key, verdict in _VERDICTS.items():
        for item in outputs[key]:
            if not isinstance(item, dict):
                item = {"message": item if isinstance(item, str) else json.dumps(item)}
            line = item.get("line")
            if approved and verdict == Verdict.APPROVE:
                verdict_now = Verdict.WARN
            else:
                verdict_now = verdict
            findings.append(Finding(_text(item, "rule") or f"policy.{key}",
                                    _text(item, "message") or f"a {key} rule fired",
                                    verdict_now, _text(item, "file"),
                                    line if isinstance(line, int) else 0))
    level = 0
    reasons: list[str] = []
    for item in outputs["risk"]:
        if not isinstance(item, dict):
            continue
        at = _LEVELS.get(_text(item, "level"), 0)
        if at == 0:
            continue
        level = max(level, at)
        where = f" ({item['file']})" if isinstance(item.get("file"), str) and item["file"] \
            else ""
        reasons.append(f"{_text(item, 'reason') or _text(item, 'rule')}{where}")
    risk: Risk = ("low", "medium", "high")[level]  # type: ignore[assignment]
    reasons = list(dict.fromkeys(reasons))
    if risk != "low":
        asks = needs_approval(approval, risk) and not approved
        shown_reasons = "; ".join(reasons[:5]) + (f" and {len(reasons) - 5} more"
                                                  if len(reasons) > 5 else "")
        findings.append(Finding("policy.risk", f"{risk} risk: {shown_reasons}",
                                Verdict.APPROVE if asks else Verdict.WARN))
    for p in compiled.problems:
        findings.append(Finding("policy.malformed", f"policy not applied: {p.message}",
                                Verdict.WARN if approved else Verdict.APPROVE, p.file, p.line))
    return Outcome(findings, risk, reasons)


class PolicyGate:
    """Rego policies from agents/policies/ and main's `[gates.policy] folder`."""

    name = "policy"
    cost = 2

    def __init__(self, services: Any = None) -> None:
        config = getattr(services, "config", None)
        self.folder = config.gates.policy.folder if config is not None else ""
        self.approval = config.queue.approval if config is not None else "never"
        self._defaults = default_sources()
        self._compiled: dict[str, Compiled] = {}
        self._folder_at: tuple[str, str] = ("", "")  # (main, the folder's tree id there)
        self._lock = asyncio.Lock()

    async def _version(self, given: GateInput) -> str:
        folder = clean_folder(self.folder)
        if not folder or not given.main:
            return ""
        if self._folder_at[0] != given.main:
            tree = (await git("rev-parse", "-q", "--verify", f"{given.main}:{folder}",
                              cwd=given.repo, check=False)).strip()
            self._folder_at = (given.main, tree)
        return self._folder_at[1]

    async def policies(self, given: GateInput) -> Compiled:
        """The policy set main holds, compiled once per version of its folder."""
        async with self._lock:
            version = await self._version(given)
            compiled = self._compiled.get(version)
            if compiled is not None:
                return compiled
            users, problems = await main_sources(given.repo, given.main, self.folder) \
                if version else ([], [])
            sources = [*self._defaults, *(s for s in users if not s.is_test)]
            report = await validate(sources)
            accepted = [s for s in sources if s.name in set(report.accepted)]
            compiled = Compiled(new_interpreter(accepted),
                                [s.package for s in accepted], problems + report.problems,
                                [s.name for s in accepted])
            self._compiled = {version: compiled}  # only main's current version is needed
            return compiled

    async def check(self, given: GateInput) -> GateVerdict:
        started = time.perf_counter()
        compiled, document = await asyncio.gather(self.policies(given), facts_of(given))
        outcome = judge(compiled, document, self.approval, given.approved)
        took = (time.perf_counter() - started) * 1000
        return GateVerdict.of(self.name, outcome.findings,
                              f"{len(compiled.names)} policies, risk {outcome.risk} "
                              f"({took:.0f} ms)")


def _child_main() -> int:
    request = json.loads(sys.stdin.buffer.read())
    sources = [Source(name, text) for name, text in request["sources"]]
    with contextlib.suppress(BrokenPipeError):
        _validate_here(sources, bool(request.get("tests")), set(request.get("skip") or []))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
