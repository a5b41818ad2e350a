"""`factory gc` on a real demo repository after a real run (one task landed five branches,
one was rejected), with what a crash leaves made the way git makes it.

What a person relies on: a dry run removes nothing and says what a real one frees; the real
one frees it (measured on disk) and keeps main, a landed task's branch and history, a
person's own branches, worktrees and files, and a rejected branch until
`[run] keep_rejected_hours` has passed; gc refuses while a run or a daemon holds the store.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agents import demo
from agents.config import load_config, save_value
from agents.engine import Factory
from agents.gc import collect, disk_bytes

REJECTED = "factory/stats/unicode-words"
LANDED = "factory/slug/max-length"


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()


def factory(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "console.cli", *args], cwd=cwd, text=True,
                          capture_output=True, env={**os.environ, "COLUMNS": "200"},
                          timeout=120)


async def _run(root: Path) -> None:
    f = await Factory.open(root, load_config(root / ".factory.toml"))
    try:
        await f.run()
    finally:
        await f.close()


@pytest.fixture(scope="module")
def ran_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = demo.build(tmp_path_factory.mktemp("gc") / "demo", "none")
    asyncio.run(_run(root))
    return root


@pytest.fixture
def repo(ran_demo: Path, tmp_path: Path) -> Path:
    """A copy of the run demo, with what crashes leave and what a person owns."""
    root = tmp_path / "demo"
    shutil.copytree(ran_demo, root, symlinks=True)
    assert git(root, "branch", "--list", REJECTED), "the demo run must reject one branch"
    fac = root / ".factory"
    # A task worktree a crashed run left (its folder and git's record of it).
    git(root, "worktree", "add", "-q", "--detach", str(fac / "worktrees" / "gone--task"))
    (fac / "worktrees" / "gone--task" / "big.bin").write_bytes(os.urandom(300_000))
    # Landing scratch, and a view whose folder went while git kept its record.
    (fac / "landing" / "batch-1").mkdir()
    (fac / "landing" / "batch-1" / "tree.bin").write_bytes(os.urandom(200_000))
    git(root, "worktree", "add", "-q", "--detach", str(fac / "views" / "plan-1"))
    shutil.rmtree(fac / "views" / "plan-1")
    # A person's: a branch with a commit, a worktree outside .factory whose folder is
    # missing (a drive not mounted now), and a file.
    git(root, "branch", "feature")
    git(root, "worktree", "add", "-q", "--detach", str(tmp_path / "usb" / "mine"))
    shutil.rmtree(tmp_path / "usb")
    (root / "notes.txt").write_text("mine\n")
    return root


def state(root: Path) -> dict[str, Any]:
    return {
        "branches": git(root, "for-each-ref", "--format=%(refname) %(objectname)",
                        "refs/heads"),
        "records": sorted(p.name for p in (root / ".git" / "worktrees").iterdir()),
        "factory": sorted(str(p.relative_to(root)) for p in (root / ".factory").rglob("*")
                          if p.name not in ("factory.db", "factory.db-wal", "factory.db-shm",
                                            "run.lock")),
        "notes": (root / "notes.txt").read_text(),
    }


def test_dry_run_removes_nothing_and_gc_frees_what_it_said(repo: Path) -> None:
    before = state(repo)
    orphan = repo / ".factory" / "worktrees" / "gone--task"
    orphan_size = disk_bytes(orphan)
    later = str(time.time() + 25 * 3600)  # past the 24 h the rejected branch is kept

    dry = factory("gc", "--root", str(repo), "--dry-run", "--json", cwd=repo)
    assert dry.returncode == 0, dry.stderr
    said = json.loads(dry.stdout)
    assert state(repo) == before  # nothing removed
    targets = {i["target"]: i for i in said["items"]}
    assert targets[".factory/worktrees/gone--task"]["remove"]
    # The folder, plus git's record of it: measured, at least the file in it.
    assert targets[".factory/worktrees/gone--task"]["bytes"] >= orphan_size >= 300_000
    assert targets[".factory/landing/batch-1"]["bytes"] >= 200_000
    assert targets[".factory/views/plan-1"]["kind"] == "record"
    assert not targets[REJECTED]["remove"]  # rejected just now: kept for inspection
    assert LANDED not in targets and "feature" not in targets and "main" not in targets
    assert not any("usb" in t for t in targets)

    # The same, for real, a day later (as if), through the library the command calls.
    config = load_config(repo / ".factory.toml")
    main_before = git(repo, "rev-parse", "main")
    report = asyncio.run(collect(repo, config, now=float(later)))
    done = {i.target: i for i in report.items}
    assert all(i.removed and not i.error for i in report.items), report.items
    assert done[".factory/worktrees/gone--task"].bytes == \
        targets[".factory/worktrees/gone--task"]["bytes"]
    assert not orphan.exists() and not (repo / ".factory" / "landing" / "batch-1").exists()
    assert "gone--task" not in git(repo, "worktree", "list")
    assert "plan-1" not in git(repo, "worktree", "list")
    assert not git(repo, "branch", "--list", REJECTED)
    # Freed, measured: .factory shrank by at least the folders' own bytes.
    assert report.factory_bytes_before - report.factory_bytes_after >= 500_000
    # Kept: main, its history of the landed tasks, their branches, a person's things.
    assert git(repo, "rev-parse", "main") == main_before
    assert git(repo, "branch", "--list", LANDED)
    landed = git(repo, "rev-parse", LANDED)
    assert subprocess.run(["git", "merge-base", "--is-ancestor", landed, "main"],
                          cwd=repo).returncode == 0
    assert git(repo, "branch", "--list", "feature")
    assert "mine" in state(repo)["records"]
    assert (repo / "notes.txt").read_text() == "mine\n"
    assert git(repo, "fsck", "--no-dangling") == ""  # nothing reachable lost
    # The log says what went.
    rows = sqlite(repo, "SELECT data FROM events WHERE kind = 'notice'")
    assert any("factory gc removed 4 item(s)" in r and REJECTED in r for r in rows)

    again = factory("gc", "--root", str(repo), cwd=repo)
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def sqlite(root: Path, query: str) -> list[str]:
    import sqlite3

    with sqlite3.connect(root / ".factory" / "factory.db") as conn:
        return [r[0] for r in conn.execute(query)]


def test_rejected_branch_goes_once_its_time_is_up(repo: Path) -> None:
    kept = factory("gc", "--root", str(repo), cwd=repo)
    assert kept.returncode == 0, kept.stderr
    assert f"kept  branch {REJECTED}: rejected" in kept.stdout
    assert "keep_rejected_hours = 24" in kept.stdout
    assert git(repo, "branch", "--list", REJECTED)
    assert "removed  worktree .factory/worktrees/gone--task" in kept.stdout

    save_value(repo / ".factory.toml", "run.keep_rejected_hours", 0)
    gone = factory("gc", "--root", str(repo), cwd=repo)
    assert gone.returncode == 0, gone.stderr
    assert f"removed  branch {REJECTED}" in gone.stdout
    assert "git's own `git gc` frees them" in gone.stdout
    assert not git(repo, "branch", "--list", REJECTED)
    assert git(repo, "branch", "--list", LANDED) and git(repo, "branch", "--list", "feature")


def test_refuses_while_a_run_holds_the_store(repo: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from agents.engine import RunLock; "
         f"lock = RunLock(Path({str(repo)!r}) / '.factory' / 'run.lock'); lock.acquire(); "
         "print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = state(repo)
        for args in (("--dry-run",), ()):
            done = factory("gc", "--root", str(repo), *args, cwd=repo)
            assert done.returncode == 2
            assert "the factory is already running" in done.stderr
            assert "stop it before `factory gc`" in done.stderr
        assert state(repo) == before
    finally:
        holder.kill()
        holder.wait()


def test_refuses_while_a_daemon_serves(repo: Path) -> None:
    up = factory("up", "--root", str(repo), cwd=repo)
    assert up.returncode == 0, up.stderr
    try:
        before = state(repo)
        done = factory("gc", "--root", str(repo), cwd=repo)
        assert done.returncode == 2
        assert "open in another process" in done.stderr and "before `factory gc`" in done.stderr
        assert state(repo) == before
    finally:
        down = factory("down", "--root", str(repo), cwd=repo)
        assert down.returncode == 0, down.stderr


async def test_the_console_shows_the_factorys_disk_use(repo: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from console.app import FactoryApp
    from console.cli import connect_in_process
    from console.widgets.status import RunStatus

    monkeypatch.setenv("XDG_CONFIG_HOME", str(repo.parent / "xdg"))
    monkeypatch.setattr(RunStatus, "DISK_FIRST", 0.1)
    app = FactoryApp(connect=lambda: connect_in_process(repo))
    async with app.run_test(size=(200, 40)) as pilot:
        status = app.query_one(RunStatus)
        for _ in range(200):
            await pilot.pause(0.05)
            if "disk " in str(status.render()):
                break
        shown = str(status.render())
        size = disk_bytes(repo / ".factory")
        assert "disk " in shown, shown
        # Measured, not guessed: within a tenth of what .factory/ holds now (the store grows).
        value, unit = shown.split("disk ", 1)[1].split()[:2]
        factor = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}[unit]
        assert abs(float(value) * factor - size) <= size / 10
