"""The engine never imports the console or Textual; the CLI's start path never imports
litellm (it takes seconds)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import agents

ROOT = Path(__file__).resolve().parents[1]


def loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_no_engine_module_pulls_in_the_console_or_textual() -> None:
    names = [m.name for m in pkgutil.walk_packages(agents.__path__, "agents.")]
    assert len(names) > 15
    modules = loaded_after("\n".join(f"import {name}" for name in names))
    leaked = sorted(m for m in modules if m.split(".")[0] in ("textual", "console"))
    assert leaked == []


def test_cli_start_path_does_not_import_litellm() -> None:
    modules = loaded_after("import console.cli\nconsole.cli.build_parser()")
    assert "litellm" not in modules


def test_console_start_path_does_not_import_litellm() -> None:
    """Everything the console imports to draw its first frame, engine included."""
    modules = loaded_after("import console.app, console.client, agents.engine, "
                           "agents.store.projections")
    assert "textual" in modules
    assert "litellm" not in modules
