"""Real repositories of queue entries, for tests/test_queue.py and tests/bench/bench_queue.py.

A repository has modules `pkg/mod_<k>.py` with a test each, pairs of modules whose test
fails only when both are changed, a flaky test that fails at a given rate, a shared file main
changes after the branches were cut (so an entry editing it conflicts), and a test runner
that takes at least T seconds. Each entry is one committed branch, handed to the engine as
a committed task of one planned spec (what agents would have left), so `Factory.run` lands
them through the real reconciler, queue, git and sandboxes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agents import events as ev
from agents.engine import Factory
from agents.gitcmd import GIT_ENV
from agents.orchestrator import spec_digest
from agents.replay import FORMAT

GOOD, BREAK, CONFLICT = "good", "break", "conflict"

SPEC = """\
+++
id = "q"
title = "Queue entries"
priority = 0
+++

## Goal
Land the entries.

## Acceptance
- the tests pass
"""

RUNNER = """\
import sys, time, unittest
started = time.monotonic()
suite = unittest.defaultTestLoader.discover("tests", top_level_dir=".")
result = unittest.TextTestRunner(stream=sys.stderr, verbosity=1).run(suite)
time.sleep(max(0.0, {t} - (time.monotonic() - started)))
sys.exit(0 if result.wasSuccessful() else 1)
"""

FLAKY = """\
import random, unittest


class FlakyTest(unittest.TestCase):
    def test_sometimes(self):
        self.assertGreater(random.random(), {rate})
"""

CONFIG = """\
[models]
planner = "replay/none"
implementer = "replay/none"
reviewer = "replay/none"

[sandbox]
backend = "{backend}"

[repo]
test_command = "{test_command}"

[queue]
mode = "{mode}"
runners = {runners}
approval = "{approval}"
resubmits = 0
"""


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout


def entry_name(i: int) -> str:
    return f"e{i:02d}"


def build(root: Path, kinds: list[str], pairs: list[tuple[int, int]], *, t: float = 0.0,
          flaky_rate: float = 0.0) -> dict[str, str]:
    """The repository at root, one branch per entry (task id -> branch). kinds[i] says what
    entry i does: GOOD adds a module of its own, BREAK breaks its module's test, CONFLICT
    edits the shared file main changes afterwards; `pairs` (i, j) pass alone and fail
    together (both must be GOOD)."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    for folder in ("pkg", "pairs", "tests"):
        (root / folder).mkdir()
        (root / folder / "__init__.py").write_text("")
    for k in range(len(kinds)):
        (root / "pkg" / f"mod_{k}.py").write_text("VALUE = 1\n")
        (root / "tests" / f"test_mod_{k}.py").write_text(
            f"import unittest\nfrom pkg import mod_{k}\n\n\nclass T(unittest.TestCase):\n"
            f"    def test_value(self):\n        self.assertEqual(mod_{k}.VALUE, 1)\n")
    for p, _ in enumerate(pairs):
        for side in "ab":
            (root / "pairs" / f"pair_{p}_{side}.py").write_text("FLAG = 0\n")
        (root / "tests" / f"test_pair_{p}.py").write_text(
            f"import unittest\nfrom pairs import pair_{p}_a, pair_{p}_b\n\n\n"
            f"class T(unittest.TestCase):\n    def test_not_both(self):\n"
            f"        self.assertFalse(pair_{p}_a.FLAG and pair_{p}_b.FLAG)\n")
    if flaky_rate:
        (root / "tests" / "test_flaky.py").write_text(FLAKY.format(rate=flaky_rate))
    (root / "pkg" / "shared.txt").write_text("shared line\n")
    (root / "run_tests.py").write_text(RUNNER.format(t=t))
    (root / ".gitignore").write_text(".factory/\n__pycache__/\n")
    (root / "specs").mkdir()
    (root / "specs" / "q.md").write_text(SPEC)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "the repository")
    side = {i: (p, "a") for p, (i, _) in enumerate(pairs)} | \
        {j: (p, "b") for p, (_, j) in enumerate(pairs)}
    branches = {}
    for i, kind in enumerate(kinds):
        task = entry_name(i)
        branch = f"factory/q/{task}"
        git(root, "checkout", "-q", "-b", branch, "main")
        if i in side:
            p, s = side[i]
            path = f"pairs/pair_{p}_{s}.py"
            (root / path).write_text("FLAG = 1\n")
        elif kind == BREAK:
            path = f"pkg/mod_{i}.py"
            (root / path).write_text("VALUE = 2\n")
        elif kind == CONFLICT:
            path = "pkg/shared.txt"
            (root / path).write_text(f"changed by {task}\n")
        else:
            path = f"pkg/feat_{i}.py"
            (root / path).write_text(f"FEATURE = {i}\n")
        git(root, "add", "-A")
        git(root, "commit", "-qm", f"{task}: change {path}")
        branches[task] = branch
        git(root, "checkout", "-q", "main")
    if CONFLICT in kinds:
        (root / "pkg" / "shared.txt").write_text("changed on main\n")
        git(root, "commit", "-qam", "main changes the shared file")
    return branches


def configure(root: Path, *, mode: str, runners: int, backend: str = "bwrap",
              approval: str = "never", test_command: str | None = None) -> None:
    command = test_command or f"{sys.executable} run_tests.py"
    (root / ".factory.toml").write_text(CONFIG.format(
        backend=backend, test_command=command.replace("\\", "\\\\").replace('"', '\\"'),
        mode=mode, runners=runners, approval=approval))
    replay = root / ".factory" / "replay"
    replay.mkdir(parents=True, exist_ok=True)
    (replay / "none.json").write_text(json.dumps({"format": FORMAT, "agents": {}}))


async def seed(factory: Factory, root: Path, branches: dict[str, str]) -> None:
    """The spec as planned, and every task committed."""
    digest = spec_digest((root / "specs" / "q.md").read_text())
    base = git(root, "rev-parse", f"{next(iter(branches.values()))}~1").strip() \
        if branches else git(root, "rev-parse", "main").strip()
    tasks = [ev.PlannedTask(id=t, title=f"entry {t}", paths=["pkg/", "pairs/"],
                            acceptance=["the tests pass"]) for t in branches]
    events: list[ev.Event] = [
        ev.SpecRegistered(spec_id="q", title="Queue entries", path="specs/q.md",
                          digest=digest),
        ev.PlanAccepted(spec_id="q", tasks=tasks, digest="queue-plan", spec_digest=digest),
    ]
    for task, branch in branches.items():
        commit = git(root, "rev-parse", branch).strip()
        files = git(root, "diff", "--name-only", f"{commit}~1", commit).split()
        ids = {"spec_id": "q", "task_id": task, "agent_id": f"a-{task}"}
        events += [ev.TaskStarted(**ids, attempt=1, branch=branch, worktree="",
                                  base_commit=base),
                   ev.AgentStarted(**ids, role="implementer", model="replay/none"),
                   ev.AgentFinished(**ids, status="finished", summary="done"),
                   ev.BranchCommitted(**ids, branch=branch, commit=commit, base_commit=base,
                                      files=files, insertions=1, deletions=1)]
    await factory.store.append(*events)


def main_trees_green(root: Path, start: str, kinds: list[str],
                     pairs: list[tuple[int, int]]) -> list[str]:
    """Commits main pointed to (the first-parent line after start) whose tree would fail
    the deterministic tests: a broken module, or both halves of a pair."""
    red = []
    for sha in git(root, "rev-list", "--first-parent", f"{start}..main").split():
        listing = git(root, "ls-tree", "-r", "--name-only", sha).split()
        broken = any(kind == BREAK and "VALUE = 2" in git(root, "show", f"{sha}:pkg/mod_{i}.py")
                     for i, kind in enumerate(kinds))
        both = any(all("FLAG = 1" in git(root, "show", f"{sha}:pairs/pair_{p}_{s}.py")
                       for s in "ab") for p in range(len(pairs))
                   if f"pairs/pair_{p}_a.py" in listing)
        if broken or both:
            red.append(sha)
    return red
