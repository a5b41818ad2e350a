"""`factory policy check [FOLDER]`: lint Rego policies and run their tests before they land.

The policy gate reads policies from main (agents/gates/policy.py); this command reads the
person's working copy of a folder (the one named, else `[gates.policy] folder`), together
with the default policies, so a mistake is found before it is committed. Each problem is
printed as file:line: message (a parse error's line; a module that crashes the engine is
named too), each Rego test that fails likewise; the exit code is 1 when anything is wrong.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.errors import FactoryError


def add_policy_commands(sub: Any, group: Callable[..., Any],
                        root_option: Callable[..., None],
                        json_option: Callable[..., None]) -> None:
    policy = group(sub, "policy", "Rego policies of the policy gate")
    p = policy.add_parser("check", help="lint policies and run their Rego tests (the "
                          "defaults and FOLDER's, or [gates.policy] folder's)")
    p.add_argument("folder", nargs="?", metavar="FOLDER",
                   help="a folder of .rego files (default: [gates.policy] folder of the "
                   "repository's .factory.toml)")
    root_option(p, "the repository whose [gates.policy] folder is checked when no FOLDER "
                "is given (default: found from here)")
    json_option(p)
    p.set_defaults(fn=cmd_policy_check)


def _folder(args: argparse.Namespace) -> Path | None:
    if args.folder:
        folder = Path(args.folder)
        if not folder.is_dir():
            raise FactoryError(f"{folder}: not a folder")
        return folder
    from agents.config import CONFIG_NAME, find_config, load_config

    found = Path(args.root).resolve() / CONFIG_NAME if args.root else find_config(Path.cwd())
    if found is None or not found.exists():
        return None  # no repository: the defaults alone
    config = load_config(found)
    if not config.gates.policy.folder:
        return None
    folder = found.parent / config.gates.policy.folder
    if not folder.is_dir():
        raise FactoryError(f"{folder}: no such folder ([gates.policy] folder = "
                           f"{config.gates.policy.folder!r})")
    return folder


def cmd_policy_check(args: argparse.Namespace) -> int:
    from agents.gates.policy import default_sources, folder_sources, validate_sync
    from agents.textsafe import clean_line

    folder = _folder(args)
    sources = [*default_sources(), *(folder_sources(folder) if folder else [])]
    report = validate_sync(sources, tests=True)
    failed = [t for t in report.tests if not t[3]]
    ok = not report.problems and not failed
    if args.json:
        print(json.dumps({
            "ok": ok, "policies": [s.name for s in sources],
            "problems": [{"file": p.file, "line": p.line, "message": p.message}
                         for p in report.problems],
            "tests": [{"file": f, "line": n, "name": name, "passed": passed}
                      for f, n, name, passed in report.tests]}))
        return 0 if ok else 1
    for p in report.problems:
        print(clean_line(p.shown()))
    for file, line, name, _ in failed:
        print(clean_line(f"{file}:{line}: {name} failed"))
    passed = len(report.tests) - len(failed)
    print(f"{len(sources)} policy files, {len(report.problems)} problems, "
          f"{passed}/{len(report.tests)} tests passed")
    return 0 if ok else 1
