"""A run killed with SIGKILL mid-way and restarted: nothing committed is lost, nothing lands
twice, and the run completes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.store.audit import compare_projections, verify_chain
from tests.conftest import git
from tests.test_engine import build_demo, check_outcome


def factory_run(root: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "console.cli", "run", "--root", str(root), "--headless"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )


def committed(db: Path) -> list[tuple[int, bytes, str]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT id, hash, kind FROM events ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


@pytest.mark.parametrize("kill_after", [("task_started", 2), ("landing_started", 1),
                                        ("branch_landed", 2)])
def test_sigkill_and_restart(tmp_path: Path, kill_after: tuple[str, int]) -> None:
    root = build_demo(tmp_path, latency_ms=120)
    db = root / ".factory" / "factory.db"
    kind, count = kill_after
    proc = factory_run(root)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if db.exists() and sum(k == kind for _, _, k in committed(db)) >= count:
                break
            assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
            time.sleep(0.02)
        else:
            pytest.fail(f"never saw {count} {kind} events")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = committed(db)
    assert before, "nothing was committed before the kill"
    finished = {k for _, _, k in before}
    assert "run_finished" not in finished  # it really was cut short

    again = factory_run(root)
    out, _ = again.communicate(timeout=180)
    # The run goes to its end; the demo's gates reject three branches by design (exit 1).
    assert again.returncode == 1 and b": failed;" in out, out.decode()

    after = committed(db)
    assert after[:len(before)] == before  # every committed event survived, unchanged
    assert verify_chain(db).ok
    assert compare_projections(db) == []
    conn = sqlite3.connect(db)
    landed_events = conn.execute(
        "SELECT spec_id || '/' || task_id, count(*) FROM events WHERE kind = 'branch_landed' "
        "GROUP BY 1").fetchall()
    reasons = conn.execute("SELECT key, status, reason FROM tasks").fetchall()
    rejected = dict(conn.execute(
        "SELECT spec_id || '/' || task_id, json_extract(data, '$.gate') FROM events "
        "WHERE kind = 'branch_rejected'").fetchall())
    conn.close()
    assert all(n == 1 for _, n in landed_events), landed_events
    landed = {k for k, _ in landed_events}
    assert {k for k, status, _ in reasons if status == "landed"} == landed, reasons
    try:
        check_outcome(landed, rejected)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; tasks: {reasons}") from None
    # Main holds each landed task exactly once.
    tasks = [line for line in git(root, "log", "--first-parent", "main",
                                  "--format=%(trailers:key=Factory-Task,valueonly)").split("\n")
             if line.strip()]
    assert sorted(tasks) == sorted(landed)
    assert git(root, "status", "--porcelain").strip() == ""
