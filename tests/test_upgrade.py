"""A store written by an earlier release, opened by this one: the chain verifies, the
projections equal a replay of the log, and the run it was part of continues.

The fixtures (tests/fixtures/upgrade/demo-<commit>.tar.gz, written by make_fixture.py at that
commit) are demo repositories whose run was stopped right after its first landing: one task
landed, one rejected, one cut short in the middle of its landing, three agents working.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from agents.engine import Factory
from agents.store import upcast
from agents.store.audit import compare_projections, verify, verify_chain
from agents.store.schema import MIGRATIONS
from tests.conftest import git
from tests.test_engine import SLUG_PAIR

# The outcome the fixtures' own trajectory (an earlier demo) gives: its agents end with their
# first submission, so whatever the queue refuses stays rejected, with its gate's reason.
FIRST_LANDED = {"stats/sentences", "cli/main"}
FIRST_REJECTED = {"stats/unicode-words": "dependencies", "stats/fast-count": "tests"}


def check_outcome(landed: set[str], rejected: dict[str, str]) -> None:
    winner = landed - FIRST_LANDED
    assert FIRST_LANDED <= landed and len(winner) == 1 and winner <= SLUG_PAIR, landed
    assert rejected == {**FIRST_REJECTED, (SLUG_PAIR - winner).pop(): "conflicts"}, rejected

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "upgrade").glob("demo-*.tar.gz"))


@pytest.fixture(params=FIXTURES, ids=[f.name.removesuffix(".tar.gz") for f in FIXTURES])
def old_demo(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    with tarfile.open(request.param) as tar:
        tar.extractall(tmp_path, filter="tar")
    root = tmp_path / "demo"
    # The demo's test command names the interpreter that wrote it (the machine the fixture was
    # made on); on this machine it is this interpreter. Only the working tree's copy changes:
    # the engine reads its configuration from there, and main's history stays as recorded.
    config = root / ".factory.toml"
    text = config.read_text()
    recorded = re.search(r'^test_command = "(\S+) -m unittest', text, re.MULTILINE)
    assert recorded, text
    config.write_text(text.replace(recorded.group(1), sys.executable))
    return root


def factory(*args: str, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "console.cli", *args, "--root", str(root)],
                          cwd=root, text=True, capture_output=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200",
                               "LITELLM_LOCAL_MODEL_COST_MAP": "True"})


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_there_is_a_fixture() -> None:
    assert FIXTURES, "tests/fixtures/upgrade/ holds no demo-*.tar.gz"


async def test_an_old_store_verifies_replays_and_its_run_continues(old_demo: Path) -> None:
    root = old_demo
    db = root / ".factory" / "factory.db"
    [(schema,)] = rows(db, "PRAGMA user_version")
    assert schema < len(MIGRATIONS)  # really a store of an earlier release
    before = rows(db, "SELECT id, ts, data, prev_hash, hash FROM events ORDER BY id")
    landed_before = {k for (k,) in rows(db, "SELECT key FROM tasks WHERE status = 'landed'")}
    assert landed_before, "the fixture's run was stopped after its first landing"

    # Audited as it is: the audit reads an unmigrated store through a copy, writing nothing.
    done = factory("audit", "verify", root=root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(before)} events, hash chain intact, projections match a replay" in done.stdout
    assert rows(db, "PRAGMA user_version") == [(schema,)]
    assert compare_projections(db) == []

    factory_ = await Factory.open(root)  # migrates the store to this release's schema
    try:
        assert rows(db, "PRAGMA user_version") == [(len(MIGRATIONS),)]
        assert compare_projections(db) == []  # the migrated tables equal a replay too
        summary = await factory_.run()
    finally:
        await factory_.close()
    # The demo's gates reject three branches by design (README): the run ends "failed"
    # (not everything planned landed), with nothing failed outright.
    assert summary.status == "failed" and summary.rejected, summary
    assert summary.failed == []

    # The old rows are untouched (bytes and hashes), and the chain goes on through new ones.
    after = rows(db, "SELECT id, ts, data, prev_hash, hash FROM events ORDER BY id")
    assert after[:len(before)] == before and len(after) > len(before)
    assert {v for (v,) in rows(db, f"SELECT DISTINCT schema FROM events WHERE id > "
                                   f"{len(before)}")} == {upcast.EVENT_SCHEMA}
    report = verify(db)
    assert report.ok, (report.problems, [str(d) for d in report.drift or []])
    assert verify_chain(db).ok
    done = factory("audit", "verify", root=root)
    assert done.returncode == 0, done.stdout + done.stderr

    # Every task is handled as the demo handles it, and nothing landed twice.
    tasks = dict(rows(db, "SELECT key, status FROM tasks"))
    assert set(tasks.values()) <= {"landed", "rejected"}, tasks
    landed_events = rows(db, "SELECT spec_id || '/' || task_id, count(*) FROM events "
                             "WHERE kind = 'branch_landed' GROUP BY 1")
    assert all(n == 1 for _, n in landed_events), landed_events
    landed = {k for k, _ in landed_events}
    assert landed == {k for k, s in tasks.items() if s == "landed"} and landed_before <= landed
    rejected = dict(rows(db, "SELECT spec_id || '/' || task_id, json_extract(data, '$.gate') "
                             "FROM events WHERE kind = 'branch_rejected'"))
    check_outcome(landed, rejected)
    main = git(root, "log", "--format=%H", "main").split()
    merges = dict(rows(db, "SELECT key, landed_commit FROM tasks WHERE status = 'landed'"))
    assert set(merges) == landed
    for key, merge in merges.items():
        assert main.count(str(merge)) == 1, (key, merge)
    trailers = [line for line in git(root, "log", "--first-parent", "main",
                                     "--format=%(trailers:key=Factory-Task,valueonly)"
                                     ).split("\n") if line.strip()]
    assert sorted(trailers) == sorted(landed)
    # The checkout holds nothing the run did (beside the fixture's own edit, the interpreter).
    assert git(root, "status", "--porcelain", "--", ".", ":!.factory.toml").strip() == ""


def test_an_old_store_rebuilds_to_what_it_holds(old_demo: Path) -> None:
    root = old_demo
    db = root / ".factory" / "factory.db"
    tables = ("runs", "specs", "tasks", "agents", "branches", "gates", "budgets", "queue",
              "conflicts", "questions")
    before = {t: rows(db, f"SELECT * FROM {t} ORDER BY 1") for t in tables}
    done = factory("store", "rebuild", root=root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every projection already matched the log" in done.stdout
    # Rebuilding is a writer's work: the store is migrated, and its rows are as they were.
    assert rows(db, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert {t: rows(db, f"SELECT {', '.join(_columns(db, t, before[t]))} FROM {t} ORDER BY 1")
            for t in tables} == before


def _columns(db: Path, table: str, old: list[tuple[object, ...]]) -> list[str]:
    """The table's columns as the old release had them (later migrations add columns)."""
    names = [name for _, name, *_ in rows(db, f"PRAGMA table_info({table})")]
    width = len(old[0]) if old else len(names)
    return names[:width]
