"""Numbered schema migrations. A store records its version in PRAGMA user_version.

Never edit a released migration: append a new one. Each entry runs in one transaction.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the event log, its chain head, and the projections of the spine.
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        spec_id TEXT,
        task_id TEXT,
        agent_id TEXT,
        data TEXT NOT NULL,
        prev_hash BLOB NOT NULL,
        hash BLOB NOT NULL
    );
    CREATE INDEX events_agent ON events(agent_id, id) WHERE agent_id IS NOT NULL;
    CREATE TABLE chain_head (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        last_id INTEGER NOT NULL,
        last_hash BLOB NOT NULL
    );
    CREATE TABLE runs (
        id TEXT PRIMARY KEY, status TEXT, started REAL, finished REAL, specs TEXT,
        concurrency INTEGER, sandbox TEXT, detail TEXT
    );
    CREATE TABLE specs (
        id TEXT PRIMARY KEY, title TEXT, path TEXT, priority INTEGER, depends_on TEXT,
        digest TEXT, status TEXT, tasks_total INTEGER, tasks_landed INTEGER,
        tasks_rejected INTEGER, tasks_failed INTEGER, tokens INTEGER, cost REAL,
        detail TEXT, updated REAL
    );
    CREATE TABLE tasks (
        key TEXT PRIMARY KEY, spec_id TEXT, task_id TEXT, title TEXT, role TEXT, status TEXT,
        depends_on TEXT, paths TEXT, acceptance TEXT, instructions TEXT, attempt INTEGER,
        agent_id TEXT, branch TEXT, worktree TEXT, base_commit TEXT, commit_sha TEXT,
        landed_commit TEXT, tokens INTEGER, cost REAL, reason TEXT, updated REAL
    );
    CREATE TABLE agents (
        id TEXT PRIMARY KEY, spec_id TEXT, task_id TEXT, role TEXT, model TEXT, status TEXT,
        step INTEGER, tokens_in INTEGER, tokens_out INTEGER, cost REAL, started REAL,
        finished REAL, summary TEXT, last_tool TEXT, messages INTEGER, updated REAL
    );
    CREATE TABLE branches (
        name TEXT PRIMARY KEY, spec_id TEXT, task_id TEXT, head TEXT, base TEXT, status TEXT,
        files TEXT, insertions INTEGER, deletions INTEGER, gate TEXT, reason TEXT,
        landed_commit TEXT, updated REAL
    );
    CREATE TABLE gates (
        key TEXT PRIMARY KEY, task_key TEXT, gate TEXT, passed INTEGER, detail TEXT,
        duration REAL, updated REAL
    );
    CREATE TABLE budgets (
        key TEXT PRIMARY KEY, scope TEXT, owner TEXT, tokens INTEGER, cost REAL
    );
    """,
    # 2: the merge queue and the conflict forecast.
    """
    CREATE TABLE queue (
        key TEXT PRIMARY KEY, spec_id TEXT, task_id TEXT, branch TEXT, commit_sha TEXT,
        position INTEGER, status TEXT, risk TEXT, risk_reasons TEXT, approval TEXT,
        reason TEXT, entered REAL, updated REAL
    );
    CREATE TABLE conflicts (
        key TEXT PRIMARY KEY, a TEXT, b TEXT, a_head TEXT, b_head TEXT, status TEXT,
        files TEXT, updated REAL
    );
    """,
    # 3: questions agents ask the person supervising the run (the console's inbox).
    """
    CREATE TABLE questions (
        id TEXT PRIMARY KEY, agent_id TEXT, spec_id TEXT, task_id TEXT, task_key TEXT,
        question TEXT, options TEXT, status TEXT, answer TEXT, answered_by TEXT, why TEXT,
        asked REAL, answered REAL, updated REAL
    );
    """,
    # 4: the reconciler: leases on work in progress, the digest of the text last planned
    # (apart from the text on disk), a person's request to cancel, a task's place in its
    # plan (work starts in the plan's order), a run's budget stop.
    """
    CREATE TABLE leases (
        work TEXT PRIMARY KEY, holder TEXT, kind TEXT, since REAL, updated REAL
    );
    ALTER TABLE specs ADD COLUMN planned_digest TEXT;
    -- Stores before this recorded no planned digest: what was planned is taken to be the
    -- text as recorded (as the plan_accepted handler assumes for their events).
    UPDATE specs SET planned_digest = digest WHERE status != 'registered';
    ALTER TABLE tasks ADD COLUMN cancel TEXT;
    ALTER TABLE tasks ADD COLUMN ordinal INTEGER;
    -- A task's place in the last plan that named it, as the plan_accepted handler keeps it.
    UPDATE tasks SET ordinal = (
        SELECT CAST(j.key AS INTEGER) FROM events e, json_each(e.data, '$.tasks') j
        WHERE e.kind = 'plan_accepted' AND e.spec_id = tasks.spec_id
          AND json_extract(j.value, '$.id') = tasks.task_id
        ORDER BY e.id DESC LIMIT 1);
    ALTER TABLE runs ADD COLUMN budget_stop TEXT;
    """,
    # 5: each event's schema version (agents/store/upcast.py: EVENT_SCHEMA, the upcasters).
    # A column rather than a key inside the JSON: a row's JSON stays exactly what the event's
    # model serialises (the daemon forwards those bytes to consoles, which parse them with the
    # same models, unknown keys forbidden), old rows keep their bytes and so their hashes,
    # and adding a column with a constant default rewrites nothing, however long the log.
    # The chain covers the version all the same: it picks the form of the row's hash
    # (store.chain_hash), so editing it breaks the chain like editing the JSON does.
    """
    ALTER TABLE events ADD COLUMN schema INTEGER NOT NULL DEFAULT 1;
    """,
    # 6: the merge queue's chain (agents/queue/chain.py): links, test runs, flaky tests,
    # the queue's own row, and what the queue notes on an entry that came back from a
    # failed batch.
    """
    ALTER TABLE queue ADD COLUMN cap INTEGER;
    ALTER TABLE queue ADD COLUMN suspect INTEGER;
    ALTER TABLE queue ADD COLUMN failed_tests TEXT;
    ALTER TABLE queue ADD COLUMN suspect_single INTEGER;
    CREATE TABLE links (
        key TEXT PRIMARY KEY, spec_id TEXT, task_id TEXT, base TEXT, entry_commit TEXT,
        merge_commit TEXT, tree TEXT, ok INTEGER, gate TEXT, reason TEXT, updated REAL
    );
    CREATE TABLE test_runs (
        id TEXT PRIMARY KEY, commit_sha TEXT, keys TEXT, position INTEGER, size INTEGER,
        attempt INTEGER, alone TEXT, runner INTEGER, status TEXT, failing TEXT, reason TEXT,
        output TEXT, duration REAL, handled INTEGER, flaky INTEGER, started REAL,
        updated REAL
    );
    CREATE TABLE flaky_tests (
        name TEXT PRIMARY KEY, flakes INTEGER, last_run TEXT, updated REAL
    );
    CREATE TABLE queue_state (
        key TEXT PRIMARY KEY, main TEXT, batch INTEGER, paused INTEGER, pause_reason TEXT,
        retry_at REAL, runs INTEGER, updated REAL
    );
    """,
    # 7: a refused entry that went back to its agent (agents/decide.py, Return): how many
    # times it went back, whether its revision is still to start, and the refused commit
    # the revision starts from; tests quarantined because main itself fails them.
    """
    ALTER TABLE tasks ADD COLUMN returns INTEGER;
    ALTER TABLE tasks ADD COLUMN revising INTEGER;
    ALTER TABLE tasks ADD COLUMN since TEXT;
    ALTER TABLE flaky_tests ADD COLUMN quarantined REAL;
    ALTER TABLE flaky_tests ADD COLUMN reason TEXT;
    """,
    # 8: the gates' verdicts and findings (agents/gates), and each test's history over the
    # race gate's repeated runs.
    """
    ALTER TABLE gates ADD COLUMN verdict TEXT;
    ALTER TABLE gates ADD COLUMN findings TEXT;
    UPDATE gates SET verdict = CASE WHEN passed THEN 'pass' ELSE 'deny' END, findings = '[]';
    CREATE TABLE test_history (
        name TEXT PRIMARY KEY, runs INTEGER, failures INTEGER, last_failed TEXT, updated REAL
    );
    """,
]
