"""Dependencies, as a gate: judged on the imports and declarations an entry adds.

The merged tree's version of each changed Python file is read beneath the tree's handle and
compared with the base version, read from git's object store (never from a working
directory): only the imports the change adds count (agents/deps.py says how they are
judged). What the change adds to pyproject.toml, setup.cfg or a requirements file is a new
dependency: a person approves it.

  undeclared third-party import, or a dev-only one in runtime code   deny
  a dependency the change newly declares                              needs approval
  an optional import (try/except ImportError, TYPE_CHECKING, a
  sys.version_info branch), a dynamic import with a computed name     warn
"""

from __future__ import annotations

import asyncio
from typing import Any

from agents.deps import MAX_SOURCE, environment_names, is_declaration, judge, read_tree
from agents.gates.base import Finding, GateInput, GateVerdict, Verdict, worst
from agents.gitcmd import git_bytes, paths_z, shown

_BLOB_MODES = ("100644", "100755")


async def base_blobs(given: GateInput, paths: set[str]) -> dict[str, str]:
    """path -> the base version's blob id, for the wanted paths the change modified or
    deleted, from one `git diff --raw` (which names the old blob of each path)."""
    out = await git_bytes("diff", "--raw", "-z", "--no-renames", "--no-abbrev",
                          given.base, given.merged, cwd=given.tree)
    parts = paths_z(out)
    blobs: dict[str, str] = {}
    for meta, path in zip(parts[0::2], parts[1::2], strict=False):
        fields = meta.lstrip(":").split()
        if len(fields) >= 5 and path in paths and fields[0] in _BLOB_MODES \
                and fields[4][:1] in "MDT":
            blobs[path] = fields[2]
    return blobs


async def read_blobs(given: GateInput, blobs: dict[str, str]) -> dict[str, str | None]:
    """path -> text of each blob, one `git cat-file --batch` for all (ids, not paths, go
    on its input: a path with a newline in it cannot confuse it). A blob larger than
    MAX_SOURCE reads as None: the file counts as new, so all its imports are judged."""
    if not blobs:
        return {}
    ids = list(dict.fromkeys(blobs.values()))
    out = await git_bytes("cat-file", "--batch", cwd=given.tree,
                          stdin=("\n".join(ids) + "\n").encode())
    texts: dict[str, str | None] = {}
    at = 0
    for sha in ids:
        end = out.index(b"\n", at)
        header = out[at:end].split()
        at = end + 1
        if len(header) != 3 or header[1] != b"blob":
            texts[sha] = None
            continue
        size = int(header[2])
        data = out[at:at + size]
        at += size + 1
        texts[sha] = None if size > MAX_SOURCE else data.decode("utf-8", "replace")
    return {path: texts.get(sha) for path, sha in blobs.items()}


class DependenciesGate:
    name = "dependencies"
    cost = 4

    def __init__(self, services: Any = None) -> None:
        pass

    async def check(self, given: GateInput) -> GateVerdict:
        live = [c.path for c in given.changes if c.status != "D"]
        py = {c.path for c in given.changes if c.path.endswith(".py") and c.status in "MT"}
        touched = {c.path for c in given.changes if is_declaration(c.path)}
        base = await read_blobs(given, await base_blobs(given, py | touched)) \
            if py or touched else {}
        added = await given.added_lines() if touched else {}

        def work() -> Any:
            tree = read_tree(given.tree, live)
            base_declarations = None
            if touched:
                base_declarations = {n: t for n, t in tree.declarations.items()
                                     if n not in touched}
                base_declarations.update({n: t for n in touched
                                          if (t := base.get(n)) is not None})
            env, where = environment_names(given.repo)
            return judge(tree, {p: base.get(p) for p in py}, base_declarations, env, where,
                         added)

        judged = await asyncio.to_thread(work)
        findings = [Finding(p.rule, p.message, Verdict(p.verdict), shown(p.file), p.line)
                    for p in judged.problems]
        return summarise(self.name, findings,
                         f"adds no undeclared import ({judged.files} changed Python files, "
                         f"environment {judged.environment})")


def summarise(gate: str, findings: list[Finding], passed: str) -> GateVerdict:
    """GateVerdict.of, with each reason starting with its file's name (the line follows,
    in the message) so a person reading one line sees where first."""
    verdict = GateVerdict.of(gate, findings, passed)
    if findings:
        top = worst([f.verdict for f in findings])
        counted = [f for f in findings if f.verdict == top]
        parts = [f"{f.file}: {f.message}" + (f" (line {f.line})" if f.line else "")
                 + f" [{f.rule}]" for f in counted[:3]]
        more = f" and {len(counted) - 3} more" if len(counted) > 3 else ""
        verdict.summary = "; ".join(parts) + more
    return verdict
