"""Steering the merge queue from a terminal: `factory queue`, `approve`, `reject`, `retry`,
`queue move`, against a running headless run (over its socket) and through the store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from agents.engine import Factory
from tests.queue_support import GOOD, build, configure, seed


def factory(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "console.cli", *args], cwd=cwd, text=True,
                          capture_output=True, env={**os.environ, "COLUMNS": "200"},
                          timeout=120)


def queue(root: Path) -> dict:
    done = factory("queue", "--json", cwd=root)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def seeded(root: Path, branches: dict[str, str]) -> None:
    opened = await Factory.open(root)
    try:
        await seed(opened, root, branches)
    finally:
        await opened.close()


def test_a_headless_run_waits_for_a_person_who_steers_it_from_another_terminal(
        tmp_path: Path) -> None:
    root = tmp_path / "repo"
    branches = build(root, [GOOD, GOOD, GOOD], [])
    configure(root, mode="serial", runners=1, approval="always")
    asyncio.run(seeded(root, branches))
    run = subprocess.Popen([sys.executable, "-m", "console.cli", "run", "--headless"],
                           cwd=root, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 60
        while len(queue(root)["approvals"]) < 3:
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.3)
        order = [e["key"] for e in queue(root)["entries"]]
        assert sorted(order) == ["q/e00", "q/e01", "q/e02"]
        moved = factory("queue", "move", order[2], "up", cwd=root)
        assert moved.returncode == 0, moved.stderr
        assert [e["key"] for e in queue(root)["entries"]] == [order[0], order[2], order[1]]
        shown = factory("queue", cwd=root)
        assert f"waiting for a person: {order[0]} (factory approve {order[0]}" in shown.stdout
        assert factory("approve", "q/e00", cwd=root).returncode == 0
        assert factory("approve", "q/e02", cwd=root).returncode == 0
        rejected = factory("reject", "q/e01", "--reason", "not this one", cwd=root)
        assert rejected.returncode == 0, rejected.stderr
        out, errors = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 1, out + errors  # one entry was rejected
    assert "landed   q/e00" in out and "landed   q/e02" in out
    assert "rejected q/e01: approval: not this one" in out
    # While it waited, the run said so, naming the command.
    assert "wait for a person" in out and f"`factory approve {order[0]}` lets it land" in out

    # Nothing serves the factory now: commands go through the store, for the next run.
    again = factory("retry", "q/e01", cwd=root)
    assert again.returncode == 0, again.stderr
    assert queue(root)["approvals"] == ["q/e01"]  # a person's verdict is asked again
    status = json.loads(factory("status", "--json", cwd=root).stdout)
    assert status["queue"]["approvals"] == ["q/e01"]
    wrong = factory("approve", "q/nope", cwd=root)
    assert wrong.returncode == 2 and "no queue entry q/nope" in wrong.stderr
    unreasoned = factory("reject", "q/e01", cwd=root)
    assert unreasoned.returncode == 2 and "--reason" in unreasoned.stderr
