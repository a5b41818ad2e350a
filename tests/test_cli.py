"""The `factory` command as a person runs it (a real subprocess, no terminal)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_repo
from tests.test_engine import build_demo


def factory(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "console.cli", *args], cwd=cwd, text=True,
                          capture_output=True, env={**os.environ, "COLUMNS": "200"},
                          timeout=300)


def test_init_then_lint_the_example(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    done = factory("init", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert "wrote .factory.toml" in done.stdout and "wrote specs/example.md.sample" in done.stdout
    lint = factory("spec", "lint", "specs/example.md.sample", cwd=repo)
    assert lint.returncode == 0 and "precision 100/100" in lint.stdout
    again = factory("init", cwd=repo)
    assert again.returncode == 2 and "already exists; not overwriting it" in again.stderr


def test_lint_reports_lines_and_fails_on_errors(tmp_path: Path) -> None:
    spec = tmp_path / "vague.md"
    spec.write_text('+++\nid = "v"\ntitle = "V"\n+++\n\n## Goal\nMake it better, etc.\n\n'
                    "## Acceptance\nRun things somehow.\n")
    done = factory("spec", "lint", str(spec), cwd=tmp_path)
    assert done.returncode == 1
    assert f"{spec}:7: warning vague-word" in done.stdout
    assert f"{spec}:9: error no-acceptance-command" in done.stdout


def test_bad_config_is_a_clear_error_without_traceback(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / ".factory.toml").write_text("[run]\nconcurrency = 'lots'\n")
    done = factory("run", cwd=repo)
    assert done.returncode == 2
    assert "run.concurrency: expected an integer, got 'lots'" in done.stderr
    assert ".factory.toml:2:" in done.stderr and "Traceback" not in done.stderr


def test_no_config_anywhere(tmp_path: Path) -> None:
    done = factory("status", cwd=tmp_path)
    assert done.returncode == 2 and "run `factory init` first" in done.stderr


def test_run_status_and_audit(tmp_path: Path) -> None:
    root = build_demo(tmp_path)
    run = factory("run", cwd=root)
    # The demo's gates reject one branch for good: not everything planned landed, so 1, and the
    # summary says what and why.
    assert run.returncode == 1, run.stdout + run.stderr
    assert "LANDED on main" in run.stdout and "REJECTED at dependencies" in run.stdout
    assert ": failed;" in run.stdout and "rejected stats/unicode-words: dependencies" in \
        run.stdout
    assert "sandbox backend is 'none'" in run.stderr  # said loudly
    status = factory("status", "--json", cwd=root)
    data = json.loads(status.stdout)
    assert sum(t["status"] == "landed" for t in data["tasks"]) == 6
    assert "Factory" not in status.stderr
    audit = factory("audit", "verify", cwd=root)
    assert audit.returncode == 0 and "hash chain intact" in audit.stdout
    conn = sqlite3.connect(root / ".factory" / "factory.db")
    conn.execute("UPDATE events SET ts = ts + 1 WHERE id = 5")
    conn.commit()
    conn.close()
    tampered = factory("audit", "verify", cwd=root)
    assert tampered.returncode == 1
    assert "event 5: content does not match its hash" in tampered.stdout


def test_unknown_spec_is_named(tmp_path: Path) -> None:
    root = build_demo(tmp_path)
    done = factory("run", "nope", cwd=root)
    assert done.returncode == 2
    assert "unknown spec(s): nope; known: cli, slug, stats" in done.stderr
