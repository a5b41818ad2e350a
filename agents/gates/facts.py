"""The policy gate's input document: what a change does, as facts a Rego policy can judge.

Policies (agents/gates/policy.py) never see the tree: they see this document, built from git's
own objects, so a policy is a pure function of the change. Everything is read from the
change's paths only (a 1,000-file repository costs what its change costs), in three git
calls: `diff --raw` (modes and blob ids of both sides), the shared `diff -U0` of
GateInput.added_lines(), and one `cat-file --batch` for the blobs that need reading (test
files, pyproject.toml, requirements files). Blobs are read by id, so no path in the hostile
tree is ever opened and no link is followed; a symlink or submodule is recorded as such and
never read as text.

The document (`input` in Rego), version 1:

    {
      "version": 1,
      "entry":  {"spec_id", "task_id", "title", "commit", "base", "merged", "main"},
      "agent":  {"role", "model"},
      "approved": bool,                     # a person approved this commit already
      "spec":   {"boundaries": [glob...]},
      "task":   {"paths": [glob...]},
      "files":  [{"path", "status" (A/M/D/T), "insertions", "deletions", "binary",
                  "mode" ("file"/"executable"/"symlink"/"submodule"/"" when deleted),
                  "test": bool, "build": "" or the build kind below}],
      "totals": {"files", "insertions", "deletions",
                 "code_files", "code_lines"},   # code_*: files that are not tests
      "dependencies": {"added":   [{"name", "file", "section", "spec"}],
                       "removed": [{"name", "file", "section", "spec"}],
                       "changed": [{"name", "file", "section", "spec", "before"}],
                       "unreadable": [path]},
      "tests": {"added":   [{"file", "test", "line", "assertions"}],
                "deleted": [{"file", "test", "line", "assertions"}],
                "moved":   [{"file", "test", "line", "to"}],
                "assertions_removed": [{"file", "test", "line", "before", "after"}],
                "skips_added": [{"file", "test", "line", "kind"}],
                "unparsed": [path]},
      "build_files": [{"path", "kind", "status", "sections"}],
      "secrets": [{"file", "line", "type", "allowlisted"}],
      "findings": [{"rule", "verdict", "file", "line"}]   # what earlier gates found
    }

Tests: a path is a test when it is named test_*.py or *_test.py, or lies in a tests/ or
test/ folder (conftest.py included). Python test files are compared as syntax trees, base
against merged: a test function is a module-level `test*` function or a `test*` method of a
class (named Class.method); its assertions are `assert` statements and calls of
`*.assert*` (self.assertEqual, mock.assert_called_once...); its skips are pytest.mark
skip/skipif/xfail and unittest skip/skipIf/skipUnless/expectedFailure decorators (also those
of its class and the module's `pytestmark`, and marks inside parametrize), and
pytest.skip()/pytest.xfail()/self.skipTest() calls or `raise SkipTest` in its body. A test
that disappears from one file and appears, with at least as many assertions and no new
skips, in another file of the same change, is `moved`, not deleted.

Build kinds: "ci" (.github/workflows, .github/actions, .gitlab-ci.yml, .circleci,
.travis.yml, azure-pipelines.yml, Jenkinsfile, bitbucket-pipelines.yml, .buildkite),
"build" (tox.ini, noxfile.py, Makefile, *.mk, setup.cfg, setup.py, pytest.ini,
MANIFEST.in, pyproject.toml when its build or test-runner sections changed: `sections` says
which), "hooks" (.pre-commit-config.yaml), "git" (.gitattributes, .gitmodules),
"container" (Dockerfile*, Containerfile*, *.dockerfile, compose files, .dockerignore) and
"lock" (poetry.lock, uv.lock, Pipfile.lock, pdm.lock, package-lock.json, yarn.lock,
pnpm-lock.yaml, Cargo.lock, go.sum, Gemfile.lock, composer.lock, requirements*.lock, and a
requirements*.txt with --hash pins). A plain requirements.txt edit is a dependency change,
not a build file.

Secrets: detect-secrets' regex detectors (AWS, private keys, GitHub/GitLab/Slack/Stripe/
OpenAI/PyPI/npm/... tokens, JWTs, basic-auth URLs), run in-process through their
`analyze_string` on the lines the change ADDS, in every file, tests and fixtures included:
skipping fixtures would let a real key in through a file named like one. Left out on
purpose: the high-entropy detectors (every sha256 in a lock file and every test digest would
deny), the keyword detector (`password = "x"` in every auth test) and the public-IP one (not
a secret). `analyze_string` and never `analyze_line`: the latter may verify a key against
its provider over the network. A line carrying detect-secrets' `pragma: allowlist secret` is
still reported, with `allowlisted: true` (the agent wrote the pragma too: the default policy
asks a person instead of denying; it never passes silently). The secret itself is never in
the document: findings land in the event log, and a key must not.
"""

from __future__ import annotations

import ast
import asyncio
import re
import tomllib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import PurePosixPath
from typing import Any

from agents.gates.base import GateInput
from agents.gitcmd import git_bytes, paths_z, shown

VERSION = 1

# -- classification ---------------------------------------------------------------------------


def is_test_path(path: str) -> bool:
    p = PurePosixPath(path)
    name = p.name
    if (name.startswith("test_") and name.endswith(".py")) or name.endswith("_test.py"):
        return True
    return any(part in ("tests", "test") for part in p.parts[:-1])


_CI_PREFIXES = (".github/workflows/", ".github/actions/", ".circleci/", ".buildkite/",
                ".gitlab/ci/")
_CI_NAMES = {".gitlab-ci.yml", ".travis.yml", "azure-pipelines.yml", "Jenkinsfile",
             "bitbucket-pipelines.yml"}
_BUILD_NAMES = {"tox.ini", "noxfile.py", "Makefile", "GNUmakefile", "makefile", "setup.cfg",
                "setup.py", "pytest.ini", "MANIFEST.in"}
_LOCK_NAMES = {"poetry.lock", "uv.lock", "Pipfile.lock", "pdm.lock", "package-lock.json",
               "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "Cargo.lock", "go.sum",
               "Gemfile.lock", "composer.lock", "conda-lock.yml"}
_CONTAINER = re.compile(r"^(Dockerfile|Containerfile)(\..*)?$|.*\.dockerfile$|"
                        r"^(docker-)?compose(\..*)?\.ya?ml$|^\.dockerignore$")
_REQUIREMENTS = re.compile(r"^requirements.*\.(txt|in)$|.*requirements\.(txt|in)$")

# pyproject.toml tables that change how the project is built or how its tests run.
_PYPROJECT_BUILD = ("build-system", "project.scripts", "project.gui-scripts",
                    "project.entry-points", "tool.setuptools", "tool.hatch", "tool.pdm.build",
                    "tool.poetry.build", "tool.poetry.scripts", "tool.maturin",
                    "tool.scikit-build", "tool.flit", "tool.pytest", "tool.tox",
                    "tool.coverage")


def build_kind(path: str) -> str:
    """The kind of build or CI file a path is, by name; "" for none (pyproject.toml is judged
    by its content, in facts_of)."""
    name = PurePosixPath(path).name
    if path.startswith(_CI_PREFIXES) or path in _CI_NAMES or name == "Jenkinsfile":
        return "ci"
    if name in _BUILD_NAMES or name.endswith(".mk"):
        return "build"
    if name == ".pre-commit-config.yaml":
        return "hooks"
    if name in (".gitattributes", ".gitmodules"):
        return "git"
    if _CONTAINER.match(name):
        return "container"
    if name in _LOCK_NAMES or (name.startswith("requirements") and name.endswith(".lock")):
        return "lock"
    return ""


def _is_requirements(path: str) -> bool:
    return bool(_REQUIREMENTS.match(PurePosixPath(path).name))


# -- dependencies -----------------------------------------------------------------------------

_NAME = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")
Deps = dict[tuple[str, str], str]  # (section, normalised name) -> the requirement as written


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _add_requirement(deps: Deps, section: str, text: object) -> None:
    if not isinstance(text, str):
        return
    m = _NAME.match(text)
    if m:
        deps[(section, normalise(m.group(1)))] = text.strip()


def pyproject_deps(doc: dict[str, Any]) -> Deps:
    deps: Deps = {}
    project = doc.get("project") if isinstance(doc.get("project"), dict) else {}
    for req in project.get("dependencies") or []:
        _add_requirement(deps, "project", req)
    extras = project.get("optional-dependencies")
    for extra, reqs in (extras.items() if isinstance(extras, dict) else []):
        for req in reqs if isinstance(reqs, list) else []:
            _add_requirement(deps, f"extra:{extra}", req)
    groups = doc.get("dependency-groups")
    for group, reqs in (groups.items() if isinstance(groups, dict) else []):
        for req in reqs if isinstance(reqs, list) else []:
            _add_requirement(deps, f"group:{group}", req)  # {include-group} is not a name
    tool = doc.get("tool") if isinstance(doc.get("tool"), dict) else {}
    poetry = tool.get("poetry") if isinstance(tool.get("poetry"), dict) else {}
    tables = [("poetry", poetry.get("dependencies")),
              ("poetry:dev", poetry.get("dev-dependencies"))]
    pgroups = poetry.get("group")
    for group, body in (pgroups.items() if isinstance(pgroups, dict) else []):
        if isinstance(body, dict):
            tables.append((f"poetry:{group}", body.get("dependencies")))
    for section, table in tables:
        for name, spec in (table.items() if isinstance(table, dict) else []):
            if normalise(name) != "python":
                deps[(section, normalise(name))] = f"{name} {spec}".strip()
    uv = tool.get("uv") if isinstance(tool.get("uv"), dict) else {}
    for req in uv.get("dev-dependencies") or []:
        _add_requirement(deps, "uv:dev", req)
    return deps


def requirements_deps(text: str, path: str) -> Deps:
    deps: Deps = {}
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue  # options, -r/-c includes and -e paths name no distribution here
        _add_requirement(deps, path, line.split(";", 1)[0])
    return deps


def _table(doc: dict[str, Any], dotted: str) -> object:
    node: object = doc
    for key in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def pyproject_build_sections(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [s for s in _PYPROJECT_BUILD if _table(before, s) != _table(after, s)]


# -- tests ------------------------------------------------------------------------------------

_SKIP_MARKS = {"skip", "skipif", "xfail"}
_UNITTEST_SKIPS = {"skip", "skipIf", "skipUnless", "expectedFailure"}


@dataclass
class TestInfo:
    line: int
    assertions: int
    skips: Counter[str] = field(default_factory=Counter)


def _dotted(node: ast.AST) -> str:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _marks(nodes: Iterable[ast.AST]) -> Counter[str]:
    """Skip and xfail marks anywhere in these expressions (decorators, pytestmark, the
    marks= of a pytest.param inside parametrize)."""
    found: Counter[str] = Counter()
    for top in nodes:
        for node in ast.walk(top):
            if not isinstance(node, ast.Attribute | ast.Name):
                continue
            name = _dotted(node)
            last = name.rsplit(".", 1)[-1]
            if ".mark." in f".{name}" and last in _SKIP_MARKS:
                found[f"mark.{last}"] += 1
            elif last in _UNITTEST_SKIPS and (name.startswith("unittest.") or name == last):
                found[f"unittest.{last}"] += 1
    return found


def _body_skips(fn: ast.AST) -> Counter[str]:
    found: Counter[str] = Counter()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in ("pytest.skip", "pytest.xfail"):
                found[f"{name}()"] += 1
            elif name.endswith(".skipTest"):
                found["skipTest()"] += 1
        elif isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if _dotted(exc).rsplit(".", 1)[-1] in ("SkipTest", "Skipped"):
                found["raise SkipTest"] += 1
    return found


def _assertions(fn: ast.AST) -> int:
    count = 0
    for node in ast.walk(fn):
        if isinstance(node, ast.Assert):
            count += 1
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr.startswith("assert"):
            count += 1
    return count


def find_tests(source: str) -> dict[str, TestInfo] | None:
    """qualified name -> its line, assertion count and skips; None when it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return None
    module_marks: Counter[str] = Counter()
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets) \
                    and node.value is not None:
                module_marks += _marks([node.value])
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) \
                and _dotted(node.value.func) == "pytest.skip":
            module_marks["pytest.skip()"] += 1  # allow_module_level: every test skips
    found: dict[str, TestInfo] = {}

    def visit(body: list[ast.stmt], prefix: str, inherited: Counter[str]) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) \
                    and node.name.startswith("test"):
                skips = inherited + _marks(node.decorator_list) + _body_skips(node)
                found[prefix + node.name] = TestInfo(node.lineno, _assertions(node), skips)
            elif isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.",
                      inherited + _marks(node.decorator_list))

    visit(tree.body, "", module_marks)
    return found


def _test_changes(path: str, before: str | None, after: str | None,
                  out: dict[str, list[Any]]) -> dict[str, TestInfo]:
    """Adds this file's test facts to `out`; returns its added tests (for moves)."""
    old = find_tests(before) if before is not None else {}
    new = find_tests(after) if after is not None else {}
    if new is None:
        out["unparsed"].append(path)
        return {}
    old = old or {}
    for name, info in new.items():
        was = old.get(name)
        if was is None:
            for kind in info.skips:
                out["skips_added"].append({"file": path, "test": name, "line": info.line,
                                           "kind": kind})
            continue
        if info.assertions < was.assertions:
            out["assertions_removed"].append({"file": path, "test": name, "line": info.line,
                                              "before": was.assertions,
                                              "after": info.assertions})
        for kind, n in info.skips.items():
            if n > was.skips.get(kind, 0):
                out["skips_added"].append({"file": path, "test": name, "line": info.line,
                                           "kind": kind})
    for name, was in old.items():
        if name not in new:
            out["deleted"].append({"file": path, "test": name, "line": was.line,
                                   "assertions": was.assertions, "_skips": was.skips})
    added = {name: info for name, info in new.items() if name not in old}
    for name, info in added.items():
        out["added"].append({"file": path, "test": name, "line": info.line,
                             "assertions": info.assertions})
    return added


def _moves(out: dict[str, list[Any]], added: dict[str, dict[str, TestInfo]]) -> None:
    deleted = []
    for gone in out["deleted"]:
        skips = gone.pop("_skips")
        short = gone["test"]
        target = next((f for f, tests in added.items() if f != gone["file"]
                       and short in tests and tests[short].assertions >= gone["assertions"]
                       and not (tests[short].skips - skips)), None)
        if target is None:
            deleted.append(gone)
        else:
            out["moved"].append({"file": gone["file"], "test": short, "line": gone["line"],
                                 "to": target})
    out["deleted"] = deleted


# -- secrets ----------------------------------------------------------------------------------

_ALLOWLIST = re.compile(r"pragma:\s*allowlist[ -]secret", re.IGNORECASE)
_LEFT_OUT = {"IPPublicDetector"}


@cache
def detectors() -> tuple[Any, ...]:
    """Every regex detector detect-secrets ships (imported once, on first use)."""
    import importlib
    import inspect
    import pkgutil

    import detect_secrets.plugins as plugins
    from detect_secrets.plugins.base import RegexBasedDetector

    found: list[Any] = []
    for info in pkgutil.iter_modules(plugins.__path__):
        module = importlib.import_module(f"detect_secrets.plugins.{info.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, RegexBasedDetector) and cls.__module__ == module.__name__ \
                    and not inspect.isabstract(cls) and name not in _LEFT_OUT:
                found.append(cls())
    return tuple(sorted(found, key=lambda d: d.secret_type))


def secrets_in(added: dict[str, list[tuple[int, str]]]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    plugins = detectors()
    for path, lines in added.items():
        for number, text in lines:
            for plugin in plugins:
                if next(iter(plugin.analyze_string(text)), None) is not None:
                    found.append({"file": shown(path), "line": number,
                                  "type": plugin.secret_type,
                                  "allowlisted": bool(_ALLOWLIST.search(text))})
    return found


# -- reading blobs ----------------------------------------------------------------------------

_MODES = {"100644": "file", "100755": "executable", "120000": "symlink",
          "160000": "submodule", "000000": ""}


@dataclass(frozen=True)
class Raw:
    path: str
    old_mode: str
    new_mode: str
    old_blob: str
    new_blob: str
    status: str


async def raw_diff(given: GateInput) -> dict[str, Raw]:
    out = await git_bytes("diff", "--raw", "-z", "--no-renames", "--no-abbrev", given.base,
                          given.merged, cwd=given.tree)
    parts = paths_z(out)
    raws: dict[str, Raw] = {}
    for i in range(0, len(parts) - 1, 2):
        meta = parts[i].lstrip(":").split()
        if len(meta) < 5:
            continue
        path = parts[i + 1]
        raws[path] = Raw(path, meta[0], meta[1], meta[2], meta[3], meta[4][:1])
    return raws


async def read_blobs(given: GateInput, blobs: Iterable[str]) -> dict[str, bytes]:
    """Blob id -> content, in one `cat-file --batch` (ids, never paths: nothing to quote)."""
    wanted = [b for b in dict.fromkeys(blobs) if b and set(b) != {"0"}]
    if not wanted:
        return {}
    out = await git_bytes("cat-file", "--batch", cwd=given.tree,
                          stdin="".join(f"{b}\n" for b in wanted).encode())
    found: dict[str, bytes] = {}
    pos = 0
    for blob in wanted:
        end = out.index(b"\n", pos)
        header = out[pos:end].split()
        pos = end + 1
        if len(header) != 3:  # "<id> missing"
            continue
        size = int(header[2])
        if header[1] == b"blob":
            found[blob] = out[pos:pos + size]
        pos += size + 1
    return found


def _text(data: bytes | None) -> str | None:
    if data is None or b"\0" in data[:8000]:
        return None
    return data.decode("utf-8", "replace")


# -- the document -----------------------------------------------------------------------------


def _readable(raw: Raw | None, side: str) -> str:
    """The blob to read for one side, or "" when that side is not a regular file."""
    if raw is None:
        return ""
    mode, blob = (raw.old_mode, raw.old_blob) if side == "old" else (raw.new_mode, raw.new_blob)
    return blob if _MODES.get(mode) in ("file", "executable") else ""


async def facts_of(given: GateInput) -> dict[str, Any]:
    """The input document for this change (see the module's docstring)."""
    raws, added = await asyncio.gather(raw_diff(given), given.added_lines())
    changes = {c.path: c for c in given.changes}
    wanted: dict[str, tuple[str, str]] = {}
    for path, raw in raws.items():
        name = PurePosixPath(path).name
        if (is_test_path(path) and path.endswith(".py")) or name == "pyproject.toml" \
                or _is_requirements(path):
            wanted[path] = (_readable(raw, "old"), _readable(raw, "new"))
    blobs = await read_blobs(given, [b for pair in wanted.values() for b in pair])
    return await asyncio.to_thread(_document, given, raws, changes, wanted, blobs, added)


def _document(given: GateInput, raws: dict[str, Raw], changes: dict[str, Any],
              wanted: dict[str, tuple[str, str]], blobs: dict[str, bytes],
              added: dict[str, list[tuple[int, str]]]) -> dict[str, Any]:
    def side(path: str, i: int) -> str | None:
        blob = wanted[path][i]
        return _text(blobs.get(blob)) if blob else None

    files: list[dict[str, Any]] = []
    build_files: list[dict[str, Any]] = []
    tests: dict[str, list[Any]] = {k: [] for k in ("added", "deleted", "moved",
                                                   "assertions_removed", "skips_added",
                                                   "unparsed")}
    new_tests: dict[str, dict[str, TestInfo]] = {}
    deps: dict[str, list[Any]] = {"added": [], "removed": [], "changed": [], "unreadable": []}
    for path in sorted(set(changes) | set(raws)):
        change = changes.get(path)
        raw = raws.get(path)
        status = change.status if change else (raw.status if raw else "M")
        shown_path = shown(path)
        test = is_test_path(path)
        kind = build_kind(path)
        sections: list[str] = []
        before = side(path, 0) if path in wanted else None
        after = side(path, 1) if path in wanted else None
        if PurePosixPath(path).name == "pyproject.toml" and path in wanted:
            old_doc, new_doc = _toml(before), _toml(after)
            if (after is not None and new_doc is None) or (before is not None
                                                           and old_doc is None):
                deps["unreadable"].append(shown_path)
            sections = pyproject_build_sections(old_doc or {}, new_doc or {})
            if sections:
                kind = "build"
            _dep_diff(shown_path, pyproject_deps(old_doc or {}), pyproject_deps(new_doc or {}),
                      deps)
        elif _is_requirements(path) and path in wanted:
            if after is not None and "--hash" in after:
                kind = "lock"
            _dep_diff(shown_path, requirements_deps(before or "", shown_path),
                      requirements_deps(after or "", shown_path), deps)
        elif test and path.endswith(".py") and path in wanted:
            if before is not None or after is not None:
                new_tests[shown_path] = _test_changes(shown_path, before, after, tests)
        files.append({"path": shown_path, "status": status,
                      "insertions": change.insertions if change else 0,
                      "deletions": change.deletions if change else 0,
                      "binary": bool(change and change.binary),
                      "mode": _MODES.get(raw.new_mode, "file") if raw else "file",
                      "test": test, "build": kind})
        if kind:
            build_files.append({"path": shown_path, "kind": kind, "status": status,
                                "sections": sections})
    _moves(tests, new_tests)
    code = [f for f in files if not f["test"]]
    return {
        "version": VERSION,
        "entry": {"spec_id": given.spec_id, "task_id": given.task_id, "title": given.title,
                  "commit": given.entry_commit, "base": given.base, "merged": given.merged,
                  "main": given.main},
        "agent": {"role": given.role, "model": given.model},
        "approved": given.approved,
        "spec": {"boundaries": list(given.boundaries)},
        "task": {"paths": list(given.task_paths)},
        "files": files,
        "totals": {"files": len(files),
                   "insertions": sum(f["insertions"] for f in files),
                   "deletions": sum(f["deletions"] for f in files),
                   "code_files": len(code),
                   "code_lines": sum(f["insertions"] + f["deletions"] for f in code)},
        "dependencies": deps,
        "tests": tests,
        "build_files": build_files,
        "secrets": secrets_in(added),
        "findings": [{"rule": f.rule, "verdict": f.verdict.value, "file": f.file,
                      "line": f.line} for f in given.findings],
    }


def _toml(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError):
        return None


def _dep_diff(path: str, before: Deps, after: Deps, out: dict[str, list[Any]]) -> None:
    for key in sorted(set(after) - set(before)):
        out["added"].append({"name": key[1], "file": path, "section": key[0],
                             "spec": after[key]})
    for key in sorted(set(before) - set(after)):
        out["removed"].append({"name": key[1], "file": path, "section": key[0],
                               "spec": before[key]})
    for key in sorted(set(before) & set(after)):
        if before[key] != after[key]:
            out["changed"].append({"name": key[1], "file": path, "section": key[0],
                                   "spec": after[key], "before": before[key]})


def empty_document() -> dict[str, Any]:
    """The document of a change that changes nothing: what Rego tests start from (they
    replace its fields with `with input.<field> as ...`)."""
    return {
        "version": VERSION,
        "entry": {"spec_id": "", "task_id": "", "title": "", "commit": "", "base": "",
                  "merged": "", "main": ""},
        "agent": {"role": "", "model": ""}, "approved": False,
        "spec": {"boundaries": []}, "task": {"paths": []}, "files": [],
        "totals": {"files": 0, "insertions": 0, "deletions": 0, "code_files": 0,
                   "code_lines": 0},
        "dependencies": {"added": [], "removed": [], "changed": [], "unreadable": []},
        "tests": {"added": [], "deleted": [], "moved": [], "assertions_removed": [],
                  "skips_added": [], "unparsed": []},
        "build_files": [], "secrets": [], "findings": [],
    }


def sample_document() -> dict[str, Any]:
    """A document with one item in every list: validating a policy against it evaluates
    its rule bodies (rego-cpp reports an unknown function only when a body reaches it)."""
    doc = empty_document()
    where = {"file": "src/app.py", "line": 1}
    doc["files"] = [{"path": "src/app.py", "status": "M", "insertions": 1, "deletions": 1,
                     "binary": False, "mode": "file", "test": False, "build": ""},
                    {"path": "tests/test_app.py", "status": "D", "insertions": 0,
                     "deletions": 3, "binary": False, "mode": "", "test": True,
                     "build": ""}]
    doc["totals"] = {"files": 2, "insertions": 1, "deletions": 4, "code_files": 1,
                     "code_lines": 2}
    dep = {"name": "pkg", "file": "pyproject.toml", "section": "project", "spec": "pkg>=1"}
    doc["dependencies"] = {"added": [dep], "removed": [dep],
                           "changed": [{**dep, "before": "pkg>=0"}],
                           "unreadable": ["pyproject.toml"]}
    test = {"file": "tests/test_app.py", "test": "test_app", "line": 1}
    doc["tests"] = {"added": [{**test, "assertions": 1}], "deleted": [{**test, "assertions": 1}],
                    "moved": [{**test, "to": "tests/test_other.py"}],
                    "assertions_removed": [{**test, "before": 2, "after": 1}],
                    "skips_added": [{**test, "kind": "mark.skip"}],
                    "unparsed": ["tests/test_app.py"]}
    doc["build_files"] = [{"path": "tox.ini", "kind": "build", "status": "M", "sections": []}]
    doc["secrets"] = [{**where, "type": "AWS Access Key", "allowlisted": False}]
    doc["findings"] = [{"rule": "boundaries.task", "verdict": "warn", **where}]
    doc["spec"] = {"boundaries": ["src/**"]}
    doc["task"] = {"paths": ["src/app.py"]}
    doc["agent"] = {"role": "implementer", "model": "replay/demo"}
    return doc
