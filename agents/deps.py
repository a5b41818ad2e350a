"""Dependencies, judged on what a change adds.

A branch that imports a package nobody declared may pass its tests on the machine it ran on
and break everywhere else; one that imports a test tool from runtime code breaks every
install without the dev extra. The landing step judges the *change*, not whole files: only
the imports an entry adds to a file count (the merged version's imports minus the base
version's), so one old undeclared import does not block every later change to its file.

An import name is resolved to distributions with the target environment's metadata (the
repository's own virtualenv when it has one, else the engine's interpreter), then by a small
alias table for packages not installed (PyYAML is imported as `yaml`). It is compared with
what the project declares, split into runtime and dev-only (extras, dependency groups and
requirements files named dev, test, lint, docs, typing...).

The merged tree is the branch's: its files are read beneath the tree's handle (no link
followed, regular files only, at most MAX_SOURCE bytes each); the base versions come from
git's object store. What is per-main (the environment's names, parsed declarations) is
cached, so a typical entry parses only its changed files.
"""

from __future__ import annotations

import ast
import configparser
import hashlib
import importlib.metadata as metadata
import os
import re
import stat
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agents.beneath import Beneath, PathDenied

MAX_SOURCE = 2 * 1024 * 1024

# Distribution names whose import name differs, for packages the environment lacks.
KNOWN_ALIASES = {
    "pyyaml": "yaml", "beautifulsoup4": "bs4", "pillow": "PIL", "scikit-learn": "sklearn",
    "python-dateutil": "dateutil", "gitpython": "git", "opencv-python": "cv2",
    "attrs": "attr", "protobuf": "google", "pyjwt": "jwt", "python-dotenv": "dotenv",
    "pyzmq": "zmq", "pycryptodome": "Crypto", "scikit-image": "skimage",
    "python-magic": "magic", "pyserial": "serial", "typing-extensions": "typing_extensions",
    "msgpack-python": "msgpack", "pymupdf": "fitz", "pywin32": "win32api",
    "pysocks": "socks", "pyopenssl": "OpenSSL", "pygithub": "github",
}
# Extras, dependency groups and requirements files with these names are not installed
# with the package: code that runs in production must not import what only they declare.
DEV_GROUPS = frozenset({"dev", "test", "tests", "testing", "lint", "docs", "typing",
                        "doc", "development"})
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_REQUIREMENTS = re.compile(r"^requirements[^/]*\.txt$")
_WORD = re.compile(r"[a-z]+")
_STDLIB = frozenset(sys.stdlib_module_names) | {"__future__", "__main__"}
_IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError"})


def normalise(name: str) -> str:
    """PEP 503: runs of -, _ and . are one separator, case does not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _read(tree: Beneath, rel: str) -> str | None:
    try:
        return tree.read(rel, MAX_SOURCE).decode("utf-8", "replace")
    except (PathDenied, OSError):
        return None


def is_declaration(path: str) -> bool:
    """The files at the tree's root that declare dependencies."""
    return path in ("pyproject.toml", "setup.cfg") or bool(_REQUIREMENTS.match(path))


def is_test_code(path: str) -> bool:
    """Test code may use dev-only dependencies: under tests/ or test/, or named as pytest
    collects it."""
    parts = path.split("/")
    name = parts[-1]
    return (any(p in ("tests", "test") for p in parts[:-1]) or name == "conftest.py"
            or (name.startswith("test_") and name.endswith(".py")) or name.endswith("_test.py"))


# -- imports ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportUse:
    """One import a file makes. `guard` says why it may fail without harm ("" when it is a
    plain import); `module` is "" for a dynamic import whose name is computed (`expr`)."""

    module: str
    line: int
    guard: str = ""
    expr: str = ""

    @property
    def top(self) -> str:
        return self.module.split(".")[0]

    @property
    def key(self) -> tuple[str, bool, str]:
        """What makes two imports the same dependency: the top-level name and whether it
        is guarded (moving an import out of its try block adds a hard dependency)."""
        return (self.top, bool(self.guard), self.expr)


class _Imports(ast.NodeVisitor):
    """Every import of a module, with the guard it sits under. Names bound to `typing`,
    `TYPE_CHECKING`, `sys`, `version_info`, `importlib` and `import_module` are followed
    through aliases (`import typing as t`, `from typing import TYPE_CHECKING as TC`)."""

    def __init__(self) -> None:
        self.found: list[ImportUse] = []
        self.guards: list[str] = []
        self.typing = {"typing", "typing_extensions"}
        self.type_checking = {"TYPE_CHECKING"}
        self.sys = {"sys"}
        self.version_info: set[str] = set()
        self.importlib = {"importlib"}
        self.import_module: set[str] = set()

    def _add(self, module: str, line: int, expr: str = "") -> None:
        self.found.append(ImportUse(module, line, self.guards[-1] if self.guards else "", expr))

    def _within(self, guard: str, nodes: Iterable[ast.AST]) -> None:
        self.guards.append(guard)
        for node in nodes:
            self.visit(node)
        self.guards.pop()

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)
            bound = alias.asname or alias.name.split(".")[0]
            if alias.name in ("typing", "typing_extensions"):
                self.typing.add(bound)
            elif alias.name == "sys":
                self.sys.add(bound)
            elif alias.name == "importlib":
                self.importlib.add(bound)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            return  # relative: the project's own code
        self._add(node.module, node.lineno)
        for alias in node.names:
            bound = alias.asname or alias.name
            if node.module in ("typing", "typing_extensions") and alias.name == "TYPE_CHECKING":
                self.type_checking.add(bound)
            elif node.module == "sys" and alias.name == "version_info":
                self.version_info.add(bound)
            elif node.module == "importlib" and alias.name == "import_module":
                self.import_module.add(bound)

    def _guarded_try(self, node: ast.Try) -> None:
        caught: set[str] = set()
        for handler in node.handlers:
            kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            caught.update(k.id if isinstance(k, ast.Name) else
                          k.attr if isinstance(k, ast.Attribute) else "" for k in kinds if k)
        if caught & _IMPORT_ERRORS:
            self._within("inside try/except ImportError", node.body)
        else:
            for child in node.body:
                self.visit(child)
        for child in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(child)

    visit_Try = _guarded_try
    visit_TryStar = _guarded_try

    def _is_type_checking(self, test: ast.expr) -> bool:
        if isinstance(test, ast.Name):
            return test.id in self.type_checking
        return (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
                and isinstance(test.value, ast.Name) and test.value.id in self.typing)

    def _is_version_check(self, test: ast.expr) -> bool:
        for node in ast.walk(test):
            if isinstance(node, ast.Name) and node.id in self.version_info:
                return True
            if (isinstance(node, ast.Attribute) and node.attr == "version_info"
                    and isinstance(node.value, ast.Name) and node.value.id in self.sys):
                return True
        return False

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        if self._is_type_checking(node.test):
            self._within("under TYPE_CHECKING (for type checkers only)", node.body)
            for child in node.orelse:
                self.visit(child)
        elif self._is_version_check(node.test):
            self._within("under a sys.version_info check", [*node.body, *node.orelse])
        else:
            self.generic_visit(node)

    def _dynamic_target(self, func: ast.expr) -> bool:
        if isinstance(func, ast.Name):
            return func.id == "__import__" or func.id in self.import_module
        return (isinstance(func, ast.Attribute) and func.attr == "import_module"
                and isinstance(func.value, ast.Name) and func.value.id in self.importlib)

    def visit_Call(self, node: ast.Call) -> None:
        if self._dynamic_target(node.func) and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                if arg.value and not arg.value.startswith("."):
                    self._add(arg.value, node.lineno)
            else:
                self._add("", node.lineno, ast.unparse(arg))
        self.generic_visit(node)


def imports_of(source: str) -> list[ImportUse] | None:
    """The file's imports in source order; None when it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    visitor = _Imports()
    visitor.visit(tree)
    return sorted(visitor.found, key=lambda u: u.line)


def imported_modules(source: str) -> set[str]:
    """Top-level names a file imports (literal dynamic imports included)."""
    return {u.top for u in imports_of(source) or [] if u.module}


def added_imports(before: str | None, after: str) -> list[ImportUse] | None:
    """The imports `after` makes that `before` did not (all of them for a new file); None
    when `after` does not parse."""
    now = imports_of(after)
    if now is None:
        return None
    old = {u.key for u in imports_of(before) or []} if before is not None else set()
    return [u for u in now if u.key not in old]


# -- what the project declares ------------------------------------------------------------


@dataclass
class Declared:
    """Normalised distribution name -> where it is declared, runtime and dev-only apart."""

    runtime: dict[str, str] = field(default_factory=dict)
    dev: dict[str, str] = field(default_factory=dict)

    def add(self, spec: object, where: str, dev: bool) -> None:
        match = _NAME.match(spec) if isinstance(spec, str) else None
        if match:
            (self.dev if dev else self.runtime).setdefault(normalise(match.group(1)), where)


def _is_dev(name: str) -> bool:
    return normalise(name).replace("-", "") in DEV_GROUPS or \
        bool(set(_WORD.findall(name.lower())) & DEV_GROUPS)


def _pyproject(text: str, out: Declared) -> None:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return
    project = doc.get("project", {})
    if not isinstance(project, dict):
        return
    for spec in project.get("dependencies", []) or []:
        out.add(spec, "pyproject.toml [project] dependencies", False)
    for extra, specs in (project.get("optional-dependencies", {}) or {}).items():
        for spec in specs if isinstance(specs, list) else []:
            out.add(spec, f"pyproject.toml extra {extra!r}", _is_dev(extra))
    groups = doc.get("dependency-groups", {})
    groups = groups if isinstance(groups, dict) else {}

    def members(group: str, seen: frozenset[str]) -> Iterator[str]:
        for item in groups.get(group, []) if group not in seen else []:
            if isinstance(item, dict) and isinstance(item.get("include-group"), str):
                yield from members(item["include-group"], seen | {group})
            elif isinstance(item, str):
                yield item

    for group in groups:
        for spec in members(group, frozenset()):
            out.add(spec, f"pyproject.toml dependency group {group!r}", _is_dev(group))
    poetry = doc.get("tool", {}).get("poetry", {}) if isinstance(doc.get("tool"), dict) else {}
    if isinstance(poetry, dict):
        for name in poetry.get("dependencies", {}) or {}:
            if name != "python":
                out.add(name, "pyproject.toml [tool.poetry.dependencies]", False)
        for name in poetry.get("dev-dependencies", {}) or {}:
            out.add(name, "pyproject.toml [tool.poetry.dev-dependencies]", True)
        for group, body in (poetry.get("group", {}) or {}).items():
            for name in (body.get("dependencies", {}) if isinstance(body, dict) else {}) or {}:
                out.add(name, f"pyproject.toml poetry group {group!r}", _is_dev(group))


def _requirements(name: str, text: str, out: Declared) -> None:
    dev = _is_dev(name.removeprefix("requirements").removesuffix(".txt"))
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith(("#", "-")):
            out.add(line, name, dev)


def _setup_cfg(text: str, out: Declared) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error:
        return
    if parser.has_option("options", "install_requires"):
        for line in parser.get("options", "install_requires").splitlines():
            out.add(line.strip(), "setup.cfg install_requires", False)
    if parser.has_section("options.extras_require"):
        for extra, specs in parser.items("options.extras_require"):
            for line in specs.splitlines():
                out.add(line.strip(), f"setup.cfg extra {extra!r}", _is_dev(extra))


_DECLARED: dict[str, Declared] = {}


def parse_declarations(files: Mapping[str, str]) -> Declared:
    """What the declaration files (name -> text) declare. Cached on their content: main's
    declarations are parsed once, not once per entry."""
    key = hashlib.sha256(repr(sorted(files.items())).encode("utf-8", "surrogateescape")
                         ).hexdigest()
    if key in _DECLARED:
        return _DECLARED[key]
    out = Declared()
    for name, text in sorted(files.items()):
        if name == "pyproject.toml":
            _pyproject(text, out)
        elif name == "setup.cfg":
            _setup_cfg(text, out)
        else:
            _requirements(name, text, out)
    if len(_DECLARED) > 64:
        _DECLARED.clear()
    _DECLARED[key] = out
    return out


# -- the target environment ---------------------------------------------------------------


def _site_packages(repo: Path) -> Path | None:
    """The repository's own virtualenv's site-packages, if it has one."""
    for venv in (".venv", "venv"):
        for pattern in ("lib/python*/site-packages", "Lib/site-packages"):
            found = sorted((repo / venv).glob(pattern))
            if found:
                return found[-1]
    return None


def _top_levels(dist: metadata.Distribution) -> set[str]:
    """What a distribution makes importable: top_level.txt, else the files it installed
    (what `packages_distributions` does, for a path other than sys.path)."""
    text = dist.read_text("top_level.txt")
    if text:
        return {line.strip() for line in text.splitlines() if line.strip()}
    names: set[str] = set()
    for f in dist.files or []:
        parts = f.parts
        if not parts or parts[0].endswith((".dist-info", ".egg-info", ".data")) \
                or parts[0] in ("..", "__pycache__"):
            continue
        if len(parts) > 1:
            names.add(parts[0])
        elif parts[0].endswith(".py"):
            names.add(parts[0][:-3])
        elif ".cpython-" in parts[0] or parts[0].endswith((".so", ".pyd")):
            names.add(parts[0].split(".")[0])
    return names


_ENV: dict[tuple[str, ...], dict[str, list[str]]] = {}


def _stamp(paths: Iterable[str]) -> tuple[str, ...]:
    out = []
    for p in paths:
        try:
            out.append(f"{p}@{os.stat(p).st_mtime_ns}")
        except OSError:
            out.append(f"{p}@-")
    return tuple(out)


def environment_names(repo: Path | None) -> tuple[dict[str, list[str]], str]:
    """import name -> distributions that provide it, in the target environment, and which
    environment that is. Cached on the site-packages folders' mtimes (installing or removing
    a package changes them)."""
    site = _site_packages(repo) if repo is not None else None
    paths = [str(site)] if site else [p for p in sys.path if p and os.path.isdir(p)]
    key = _stamp(paths)
    if key not in _ENV:
        if site is None:
            mapping = {k: list(v) for k, v in metadata.packages_distributions().items()}
        else:
            mapping = {}
            # Each dist-info read directly: the finders behind distributions(path=...)
            # keep caches (and other finders chain in) that once gave this folder nothing.
            infos = sorted(Path(site).glob("*.dist-info")) + sorted(Path(site).glob("*.egg-info"))
            for dist in (metadata.PathDistribution(info) for info in infos if info.is_dir()):
                name = dist.metadata["Name"]
                if name:
                    for top in _top_levels(dist):
                        mapping.setdefault(top, []).append(name)
        if len(_ENV) > 8:
            _ENV.clear()
        _ENV[key] = mapping
    return _ENV[key], str(site) if site else sys.prefix


_ALIASED: dict[str, list[str]] = {}
for _dist, _module in KNOWN_ALIASES.items():
    _ALIASED.setdefault(_module, []).append(_dist)


def distributions_for(top: str, env: Mapping[str, list[str]]) -> list[str]:
    """The distributions an import name may come from: the environment's, the alias
    table's, and one named like the module (how most are named)."""
    names = [*env.get(top, []), *_ALIASED.get(top, []), top]
    return list(dict.fromkeys(names))


# -- the tree -----------------------------------------------------------------------------


@dataclass
class TreeFiles:
    """What the merged tree holds, read beneath its handle."""

    sources: dict[str, str]  # changed .py file -> text (regular, readable, bounded)
    too_large: list[str]  # changed .py files that are regular but larger than MAX_SOURCE
    declarations: dict[str, str]  # declaration file at the root -> text
    local: set[str]  # top-level names of the project's own code


def _names_in(tree: Beneath, rel: str) -> list[tuple[str, bool, bool]]:
    """(name, is a regular file, is a directory) for a folder's entries, links excluded."""
    try:
        fd = tree.open_dir(rel)
    except (PathDenied, OSError):
        return []
    try:
        with os.scandir(fd) as entries:
            return [(e.name, e.is_file(follow_symlinks=False), e.is_dir(follow_symlinks=False))
                    for e in entries]
    finally:
        os.close(fd)


def read_tree(root: Path, changed: Iterable[str]) -> TreeFiles:
    """The changed Python files, the declaration files and the project's own top-level
    names, all beneath one handle on root: a link, FIFO, device or oversized file is never
    read (an oversized regular file is reported, so it cannot hide an import)."""
    sources: dict[str, str] = {}
    too_large: list[str] = []
    declarations: dict[str, str] = {}
    local: set[str] = set()
    with Beneath(root) as tree:
        for rel in changed:
            if not rel.endswith(".py"):
                continue
            text = _read(tree, rel)
            if text is not None:
                sources[rel] = text
                continue
            try:
                st = tree.lstat(rel)
            except (PathDenied, OSError):
                st = None
            if st is not None and stat.S_ISREG(st.st_mode) and st.st_size > MAX_SOURCE:
                too_large.append(rel)
        top = _names_in(tree, "")
        for name, regular, _ in top:
            if regular and is_declaration(name):
                text = _read(tree, name)
                if text is not None:
                    declarations[name] = text
        src = [(n, r, d) for n, r, d in _names_in(tree, "src")] \
            if any(n == "src" and d for n, _, d in top) else []
        for name, regular, directory in [*top, *src]:
            if name.startswith("."):
                continue
            if regular and name.endswith(".py"):
                local.add(name[:-3])
            elif directory and name.isidentifier():
                local.add(name)
    return TreeFiles(sources, too_large, declarations, local)


# -- the judgement ------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with what a change adds (the gate makes it a Finding)."""

    rule: str
    verdict: str  # "deny", "warn" or "needs_approval" (agents.gates.base.Verdict's values)
    message: str
    file: str
    line: int = 0
    module: str = ""


@dataclass
class Judged:
    problems: list[Problem]
    environment: str
    files: int  # Python files parsed


def judge(tree: TreeFiles, base_sources: Mapping[str, str | None],
          base_declarations: Mapping[str, str] | None, env: Mapping[str, list[str]],
          environment: str = "", added_lines: Mapping[str, list[tuple[int, str]]] | None = None
          ) -> Judged:
    """The problems with what the change adds. `base_sources` holds the base version of
    each changed file (None or absent: the file is new); `base_declarations` the base's
    declaration files (None: the change did not touch them)."""
    declared = parse_declarations(tree.declarations)
    problems: list[Problem] = []
    local = {normalise(n) for n in tree.local}
    for rel in tree.too_large:
        problems.append(Problem("dependencies.unreadable", "warn",
                                f"is larger than {MAX_SOURCE} bytes: its imports were not "
                                "checked", rel))
    for rel, text in sorted(tree.sources.items()):
        added = added_imports(base_sources.get(rel), text)
        if added is None:
            continue  # does not parse: the tests gate says so
        test = is_test_code(rel)
        for use in added:
            problems.extend(_judge_use(rel, use, test, declared, local, env))
    if base_declarations is not None:
        problems.extend(_new_declarations(parse_declarations(base_declarations), declared,
                                          added_lines or {}))
    return Judged(problems, environment, len(tree.sources))


def _judge_use(rel: str, use: ImportUse, test: bool, declared: Declared, local: set[str],
               env: Mapping[str, list[str]]) -> Iterator[Problem]:
    if not use.module:
        yield Problem("dependencies.dynamic", "warn",
                      f"imports a module named by {use.expr!r}, which cannot be resolved",
                      rel, use.line)
        return
    top = use.top
    if top in _STDLIB or normalise(top) in local:
        return
    dists = distributions_for(top, env)
    runtime = [d for d in dists if normalise(d) in declared.runtime]
    if runtime:
        return
    dev = [d for d in dists if normalise(d) in declared.dev]
    if dev and test:
        return
    guard = f" ({use.guard})" if use.guard else ""
    if dev:
        where = declared.dev[normalise(dev[0])]
        rule, message = "dependencies.dev_only", (
            f"imports {use.module} in runtime code, but its distribution {dev[0]} is "
            f"declared only in the dev extra ({where}){guard}")
    else:
        rule, message = "dependencies.undeclared", (
            f"imports {use.module}, whose distribution {dists[0]} the project does not "
            f"declare{guard}")
    if use.guard:
        rule = "dependencies.optional"
    yield Problem(rule, "warn" if use.guard else "deny", message, rel, use.line, use.module)


def _new_declarations(before: Declared, after: Declared,
                      added_lines: Mapping[str, list[tuple[int, str]]]) -> Iterator[Problem]:
    known = set(before.runtime) | set(before.dev)
    for kind, now, was in (("runtime", after.runtime, before.runtime),
                           ("dev", after.dev, known)):
        for name, where in sorted(now.items()):
            if name in was or (kind == "dev" and name in after.runtime):
                continue
            file = where.split(" ")[0]
            line = next((n for n, text in added_lines.get(file, [])
                         if normalise(name) in normalise(text)), 0)
            moved = " (it was dev-only)" if name in before.dev and kind == "runtime" else ""
            yield Problem("dependencies.new", "needs_approval",
                          f"declares a new {kind} dependency {name} in {where}{moved}: "
                          "a person approves new dependencies", file, line, name)


def phantom_imports(root: Path, changed: list[str]) -> dict[str, list[str]]:
    """module -> files importing it, for third-party imports nobody declared, judging the
    named files whole (as if they were new) against the engine's environment: the check
    without history, for a tree that is not a git checkout."""
    tree = read_tree(root, changed)
    env, _ = environment_names(None)
    found: dict[str, list[str]] = {}
    for p in judge(tree, {}, None, env).problems:
        if p.rule == "dependencies.undeclared" and \
                p.file not in found.get(p.module.split(".")[0], []):
            found.setdefault(p.module.split(".")[0], []).append(p.file)
    return found
