"""A multi-agent run killed with SIGKILL at ten random moments and restarted each time.

The moments are event counts drawn from a seeded generator (the seed is printed, and
FACTORY_KILL_SEED replays a run); each restart is the real `factory run` in a new process,
on the demo's repository with bubblewrap sandboxes. At the end the audit chain verifies and
the projections equal a replay, every task ended landed or rejected by a gate, no commit
landed twice, and main holds each landed task exactly once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from agents import demo
from agents.store.audit import compare_projections, verify_chain
from tests.conftest import git
from tests.test_engine import check_outcome

SEED = int(os.environ.get("FACTORY_KILL_SEED", "20261202"))
KILLS = 10


def factory_run(root: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "console.cli", "run", "--root", str(root), "--headless"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})


def events(db: Path) -> list[tuple[int, str]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT id, kind FROM events ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def test_killed_ten_times_and_restarted(tmp_path: Path) -> None:
    rnd = random.Random(SEED)
    print(f"kill seed {SEED} (FACTORY_KILL_SEED={SEED} replays it)")
    root = demo.build(tmp_path / "demo", "bwrap")
    replay = root / ".factory" / "replay" / "demo.json"
    doc = json.loads(replay.read_text())
    doc["latency_ms"] = 60
    replay.write_text(json.dumps(doc))
    db = root / ".factory" / "factory.db"

    kills = []
    for n in range(KILLS):
        seen = len(events(db))
        target = seen + rnd.randint(3, 30)
        proc = factory_run(root)
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                if len(events(db)) >= target or proc.poll() is not None:
                    break
                time.sleep(0.005)
        finally:
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate()
        if proc.returncode != -signal.SIGKILL:
            print(f"run {n} ended by itself before its kill (exit {proc.returncode})")
            break
        count = len(events(db))
        kills.append(count)
        print(f"kill {n + 1}: SIGKILL after event {count} (aimed at {target})")
        assert verify_chain(db).ok, f"the chain broke at kill {n + 1}"

    final = factory_run(root)
    out, _ = final.communicate(timeout=600)
    text = out.decode()
    # The demo's gates reject three branches by design, so the run ends with 1.
    assert final.returncode == 1 and ": failed;" in text, text
    assert len(kills) >= 3, f"only {len(kills)} kills landed before the run was over"

    report = verify_chain(db)
    assert report.ok, report.problems
    assert compare_projections(db) == []
    conn = sqlite3.connect(db)
    try:
        landed_events = conn.execute(
            "SELECT spec_id || '/' || task_id, count(*) FROM events "
            "WHERE kind = 'branch_landed' GROUP BY 1").fetchall()
        statuses = dict(conn.execute("SELECT key, status FROM tasks").fetchall())
        rejected = dict(conn.execute(
            "SELECT spec_id || '/' || task_id, json_extract(data, '$.gate') FROM events "
            "WHERE kind = 'branch_rejected'").fetchall())
        commits = conn.execute(
            "SELECT json_extract(data, '$.commit'), count(*) FROM events "
            "WHERE kind = 'branch_landed' GROUP BY 1").fetchall()
    finally:
        conn.close()
    assert all(n == 1 for _, n in landed_events), landed_events
    assert all(n == 1 for _, n in commits), commits
    assert set(statuses.values()) <= {"landed", "rejected"}, statuses
    landed = {k for k, status in statuses.items() if status == "landed"}
    assert landed == {k for k, _ in landed_events}
    check_outcome(landed, {k: g for k, g in rejected.items() if statuses[k] == "rejected"})
    on_main = [line for line in git(root, "log", "--first-parent", "main",
                                    "--format=%(trailers:key=Factory-Task,valueonly)")
               .split("\n") if line.strip()]
    assert sorted(on_main) == sorted(landed)
    assert git(root, "status", "--porcelain").strip() == ""
