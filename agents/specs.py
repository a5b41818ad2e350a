"""Spec files: TOML front matter and Markdown sections, parsed, validated and linted.

Errors carry the file and line; the lint reports imprecision (what an agent would have to
guess) as findings with lines, so the editor can show them beside the text.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from fnmatch import fnmatch
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from agents.errors import LocatedError
from agents.ids import EXPECTED, Id, id_error, show

FENCE = "+++"
SECTIONS = {
    "goal": "goal", "architecture": "architecture", "boundaries": "boundaries",
    "edge cases": "edge_cases", "invariants": "invariants", "acceptance": "acceptance",
}
REQUIRED = ("goal", "acceptance")
VAGUE = ["etc", "should probably", "maybe", "somehow", "as needed", "and so on", "tbd",
         "various", "some kind of", "appropriate", "reasonable", "if possible",
         "nice to have"]
_VAGUE_RE = re.compile(r"(?<![\w-])(" + "|".join(re.escape(v) for v in VAGUE) + r")(?![\w-])",
                       re.IGNORECASE)


class SpecError(LocatedError):
    pass


class Spec(BaseModel):
    # Ids are checked again here (parse_spec has already said where a bad one is) so that
    # a Spec made any other way cannot carry an id that breaks a branch or folder name.
    model_config = ConfigDict(extra="forbid")

    id: Id
    title: str
    priority: int = 0
    depends_on: list[Id] = []
    path: Path | None = None
    goal: str = ""
    architecture: str = ""
    boundaries: list[str] = []
    edge_cases: str = ""
    invariants: list[str] = []
    acceptance: list[str] = []
    sections: dict[str, int] = {}
    text: str = ""


class LintFinding(BaseModel):
    path: Path | None = None
    line: int
    severity: Literal["error", "warning", "info"]
    code: str
    message: str


PARSE = "parse"  # the code of the finding for a spec that does not parse


class _FrontMatter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    title: str
    priority: int = 0
    depends_on: list[str] = []


def _bullets(body: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^\s*[-*+]\s+(.*\S)\s*$", body, re.M)]


def _commands(body: str) -> list[str]:
    out: list[str] = []
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", body, re.M | re.S)
    for block in fenced:
        out += [line.strip() for line in block.splitlines() if line.strip()]
    without = re.sub(r"^```[^\n]*\n.*?^```", "", body, flags=re.M | re.S)
    for bullet in _bullets(without):
        out += re.findall(r"`([^`]+)`", bullet)
    return out


def _front_matter(text: str, path: Path | None) -> tuple[dict[str, Any], int, str]:
    lines = text.splitlines()
    if not lines or lines[0].strip() != FENCE:
        raise SpecError(f"expected TOML front matter starting with '{FENCE}' on the first line",
                        path=path, line=1)
    for index in range(1, len(lines)):
        if lines[index].strip() == FENCE:
            body = "\n".join(lines[1:index]) + "\n"
            try:
                data = tomllib.loads(body)
            except tomllib.TOMLDecodeError as exc:
                m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
                line = int(m.group(1)) + 1 if m else index
                message = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "",
                                 str(exc))
                raise SpecError(f"invalid TOML in front matter: {message}", path=path,
                                line=line) from None
            return data, index + 1, "\n".join(lines[index + 1:])
    raise SpecError(f"front matter is not closed: expected a second '{FENCE}' line",
                    path=path, line=len(lines) or 1)


def _front_line(text: str, key: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if re.match(rf"^\s*{re.escape(key)}\s*=", line):
            return number
    return 1


def _entry_line(text: str, key: str, entry: str) -> int:
    """The line of one entry of a front-matter array, which may span lines; else the key's."""
    start = _front_line(text, key)
    # How TOML would write it: a basic string (escaped or not) or a literal one.
    forms = {json.dumps(entry), json.dumps(entry, ensure_ascii=False), f"'{entry}'"}
    lines = text.splitlines()
    for number in range(start, len(lines) + 1):
        if number > start and (lines[number - 1].strip() == FENCE or
                               re.match(r"^\s*[A-Za-z0-9_-]+\s*=", lines[number - 1])):
            break
        if any(form in lines[number - 1] for form in forms):
            return number
    return start


def _check_ids(front: _FrontMatter, text: str, path: Path | None) -> None:
    """Ids become branch, folder, agent and cgroup names: refuse a bad one here, with its
    line, rather than in git or the kernel halfway through a run."""
    message = id_error(front.id, "spec id")
    if message is not None:
        raise SpecError(message, path=path, line=_front_line(text, "id"), key="id",
                        expected=EXPECTED)
    for number, dep in enumerate(front.depends_on, start=1):
        message = id_error(dep, f"depends_on entry {number}")
        if message is not None:  # no key: the message names it, and the lint shows only that
            raise SpecError(message, path=path, line=_entry_line(text, "depends_on", dep),
                            expected=EXPECTED)
    if front.id in front.depends_on:
        raise SpecError(f"spec {show(front.id)} depends on itself", path=path,
                        line=_entry_line(text, "depends_on", front.id), key="depends_on")


def parse_spec(text: str, path: Path | None = None) -> Spec:
    data, body_start, _ = _front_matter(text, path)
    try:
        front = _FrontMatter.model_validate(data)
    except Exception as exc:
        errors = getattr(exc, "errors", lambda: [])()
        first = errors[0] if errors else {"loc": (), "msg": str(exc), "type": ""}
        key = str(first["loc"][0]) if first["loc"] else ""
        if first["type"] == "missing":
            raise SpecError(f"front matter needs {key!r}", path=path, line=1,
                            key=key) from None
        if first["type"] == "extra_forbidden":
            raise SpecError(f"unknown front matter key {key!r}; known: id, title, priority, "
                            "depends_on", path=path, line=_front_line(text, key),
                            key=key) from None
        expected = {"int_type": "expected an integer", "int_parsing": "expected an integer",
                    "string_type": "expected a string", "list_type": "expected a list"}.get(
            first["type"], first["msg"])
        raise SpecError(f"{expected}, got {first.get('input')!r}", path=path,
                        line=_front_line(text, key), key=key) from None
    _check_ids(front, text, path)
    values: dict[str, Any] = {}
    sections: dict[str, int] = {}
    lines = text.splitlines()
    current: str | None = None
    buffer: list[str] = []

    def close() -> None:
        if current is not None:
            values[current] = "\n".join(buffer).strip()

    for number in range(body_start + 1, len(lines) + 1):
        line = lines[number - 1]
        m = re.match(r"^##\s+(.+?)\s*#*\s*$", line)
        if m:
            close()
            name = m.group(1).strip().lower()
            field = SECTIONS.get(name)
            if field is not None and field in sections:
                raise SpecError(f"duplicate section '## {m.group(1)}' (first at line "
                                f"{sections[field]})", path=path, line=number)
            current = field
            if field is not None:
                sections[field] = number
            buffer = []
        elif current is not None:
            buffer.append(line)
    close()
    for field in REQUIRED:
        if not values.get(field):
            title = next(k for k, v in SECTIONS.items() if v == field).capitalize()
            raise SpecError(f"missing or empty section '## {title}'", path=path,
                            line=sections.get(field, len(lines) or 1))
    boundaries = _bullets(values.get("boundaries", ""))
    for entry in boundaries:
        clean = entry.strip("`")
        if clean.startswith("/") or ".." in Path(clean).parts:
            line = next((n for n, ln in enumerate(lines, 1) if entry in ln and
                         n > sections.get("boundaries", 0)), sections.get("boundaries", 1))
            raise SpecError(f"boundary {clean!r}: expected a path relative to the repository "
                            "root, without '..'", path=path, line=line)
    return Spec(
        id=front.id, title=front.title, priority=front.priority, depends_on=front.depends_on,
        path=path, goal=values.get("goal", ""), architecture=values.get("architecture", ""),
        boundaries=[b.strip("`") for b in boundaries], edge_cases=values.get("edge_cases", ""),
        invariants=_bullets(values.get("invariants", "")),
        acceptance=_commands(values.get("acceptance", "")), sections=sections, text=text,
    )


def load_spec(path: Path) -> Spec:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", path=path) from None
    return parse_spec(text, path)


def load_specs(directory: Path) -> list[Spec]:
    if not directory.is_dir():
        raise SpecError("no specs folder (run `factory init`)", path=directory)
    specs = [load_spec(p) for p in sorted(directory.glob("*.md")) if p.name != "README.md"]
    seen: dict[str, Spec] = {}
    for spec in specs:
        if spec.id in seen:
            raise SpecError(f"duplicate spec id {spec.id!r} (also in {seen[spec.id].path})",
                            path=spec.path, line=_front_line(spec.text, "id"), key="id")
        seen[spec.id] = spec
    for spec in specs:
        for dep in spec.depends_on:
            if dep not in seen:
                raise SpecError(f"depends on unknown spec {dep!r} (known: "
                                f"{', '.join(sorted(seen))})", path=spec.path,
                                line=_front_line(spec.text, "depends_on"), key="depends_on")
    from agents.planner import find_cycle

    cycle = find_cycle({s.id: s.depends_on for s in specs})
    if cycle:
        first = seen[cycle[0]]
        raise SpecError(f"dependency cycle: {' -> '.join(cycle)}", path=first.path,
                        line=_front_line(first.text, "depends_on"), key="depends_on")
    return specs


def order_specs(specs: list[Spec]) -> list[Spec]:
    """Dependencies first; among ready specs, higher priority first, then id."""
    remaining = {s.id: s for s in specs}
    done: set[str] = set()
    out: list[Spec] = []
    while remaining:
        ready = [s for s in remaining.values()
                 if all(d in done or d not in remaining for d in s.depends_on)]
        if not ready:
            raise SpecError("dependency cycle among: " + ", ".join(sorted(remaining)))
        ready.sort(key=lambda s: (-s.priority, s.id))
        spec = ready[0]
        out.append(spec)
        done.add(spec.id)
        del remaining[spec.id]
    return out


def path_in_boundaries(path: str, boundaries: list[str]) -> bool:
    clean = path.strip().strip("/")
    if not clean or clean.startswith("..") or path.startswith("/"):
        return False
    for entry in boundaries:
        pattern = entry.strip().rstrip("/")
        if any(ch in pattern for ch in "*?["):
            regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
            regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
            if re.fullmatch(regex, clean) or fnmatch(clean, pattern):
                return True
        elif clean == pattern or clean.startswith(pattern + "/"):
            return True
    return False


def lint_spec(text: str, path: Path | None = None) -> list[LintFinding]:
    findings: list[LintFinding] = []

    def add(line: int, severity: str, code: str, message: str) -> None:
        findings.append(LintFinding(path=path, line=line, severity=severity,  # type: ignore[arg-type]
                                    code=code, message=message))

    try:
        spec = parse_spec(text, path)
    except SpecError as exc:
        add(exc.line or 1, "error", PARSE, exc.message)
        return findings
    lines = text.splitlines()
    end = len(lines) or 1
    if "invariants" not in spec.sections or not spec.invariants:
        add(spec.sections.get("invariants", end), "warning", "no-invariants",
            "no invariants: say what must stay true while this changes")
    if not spec.acceptance:
        add(spec.sections.get("acceptance", end), "error", "no-acceptance-command",
            "no acceptance command: list commands in backticks that must pass")
    if "boundaries" not in spec.sections or not spec.boundaries:
        add(spec.sections.get("boundaries", end), "warning", "no-boundaries",
            "no boundaries: list the paths this spec may touch")
    if "edge_cases" not in spec.sections or not spec.edge_cases.strip():
        add(spec.sections.get("edge_cases", end), "info", "no-edge-cases",
            "no edge cases: name the inputs that are easy to get wrong")
    if len(spec.goal.split()) < 5:
        add(spec.sections.get("goal", 1), "warning", "short-goal",
            "the goal is shorter than a sentence")
    in_front = True
    section = ""
    for number, line in enumerate(lines, start=1):
        if number > 1 and line.strip() == FENCE:
            in_front = False
            continue
        if in_front:
            continue
        m = re.match(r"^##\s+(.+?)\s*$", line)
        if m:
            section = m.group(1).strip().lower()
            if section not in SECTIONS:
                add(number, "info", "unknown-section",
                    f"unknown section '## {m.group(1)}' (known: Goal, Architecture, "
                    "Boundaries, Edge cases, Invariants, Acceptance)")
            continue
        if section == "boundaries":
            continue  # paths, not prose
        scan = re.sub(r"`[^`]*`", "", line)
        for vague in _VAGUE_RE.finditer(scan):
            add(number, "warning", "vague-word", f"vague wording {vague.group(1)!r}: say "
                "exactly what is meant")
    return findings


def lint_score(findings: list[LintFinding]) -> int:
    """How precise a spec is, 0 to 100. A spec that does not parse scores 0, wherever the
    score is shown (the CLI, the console's spec pane, the log): a run cannot use anything
    in it, however few the other findings are."""
    if any(f.code == PARSE for f in findings):
        return 0
    cost = {"error": 30, "warning": 10, "info": 3}
    return max(0, 100 - sum(cost[f.severity] for f in findings))


def _known_id(text: str) -> str | None:
    """The id a spec that does not parse names, if its front matter reads: so that specs
    depending on it are not also told it is unknown."""
    try:
        data, _, _ = _front_matter(text, None)
    except SpecError:  # TOML that does not read: its `id = "..."` line may still
        m = re.search(r'^\s*id\s*=\s*["\']([^"\'\n]*)["\']', text, re.M)
        return m.group(1) if m else None
    value = data.get("id")
    return value if isinstance(value, str) else None


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Every dependency cycle, one per strongly connected group (Tarjan's algorithm), each
    as a path that ends where it starts: a run refuses any of them, so each is reported."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in graph.get(node, []):
            if dep not in graph:
                continue
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    from agents.planner import find_cycle

    out = []
    for group in groups:
        members = set(group)
        cycle = find_cycle({n: [d for d in graph[n] if d in members] for n in group})
        if cycle:
            out.append(cycle)
    return out


def lint_folder(files: list[tuple[Path, str]]) -> list[LintFinding]:
    """What a run would refuse in a specs folder as a whole, every instance with its file
    and line (a run stops at the first): duplicate ids, unknown dependencies and dependency
    cycles. Each spec's own problems (a bad id, a file that does not parse) are
    `lint_spec`'s; specs that do not parse take no part here beyond their id."""
    specs: list[Spec] = []
    known: set[str] = set()
    for path, text in files:
        try:
            spec = parse_spec(text, path)
        except SpecError:
            other = _known_id(text)
            if other is not None:
                known.add(other)
            continue
        specs.append(spec)
        known.add(spec.id)
    findings: list[LintFinding] = []

    def add(spec: Spec, line: int, code: str, message: str) -> None:
        findings.append(LintFinding(path=spec.path, line=line, severity="error", code=code,
                                    message=message))

    by_id: dict[str, list[Spec]] = {}
    for spec in specs:
        by_id.setdefault(spec.id, []).append(spec)
    for sid, same in by_id.items():
        if len(same) > 1:
            for spec in same:
                others = ", ".join(str(o.path) for o in same if o is not spec)
                add(spec, _front_line(spec.text, "id"), "duplicate-id",
                    f"duplicate spec id {show(sid)} (also in {others})")
    for spec in specs:
        for dep in spec.depends_on:
            if dep not in known:
                add(spec, _entry_line(spec.text, "depends_on", dep), "unknown-dependency",
                    f"depends on unknown spec {show(dep)} (known: "
                    f"{', '.join(sorted(known)) or 'none'})")
    graph: dict[str, list[str]] = {}
    first = {sid: same[0] for sid, same in by_id.items()}
    for spec in specs:
        graph.setdefault(spec.id, []).extend(spec.depends_on)
    for cycle in _cycles(graph):
        shown = " -> ".join(cycle)
        for here, dep in pairwise(cycle):
            spec = first[here]
            add(spec, _entry_line(spec.text, "depends_on", dep), "dependency-cycle",
                f"dependency cycle: {shown}")
    findings.sort(key=lambda f: (str(f.path), f.line))
    return findings


EXAMPLE_SPEC = """\
+++
id = "greeting"
title = "A greeting function"
priority = 0
depends_on = []
+++

## Goal
Add `greet(name)` to the package so that callers get a polite greeting string.

## Architecture
One function in `app/greeting.py`, tested in `tests/test_greeting.py`.

## Boundaries
- app/greeting.py
- tests/test_greeting.py

## Edge cases
- An empty name gives "Hello, stranger!".
- Surrounding whitespace in the name is ignored.

## Invariants
- No other module changes.
- `greet` never raises for a string argument.

## Acceptance
- `python -m pytest -q tests/test_greeting.py`
"""


def write_atomically(path: Path, text: str) -> None:
    """Replace a file so that a crash leaves the old text or the new, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
