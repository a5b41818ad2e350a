"""Privilege and exposure: what the planner may read, who may read the engine's own files, and
who agents' commands (and landing tests) run as, all on real parts.

A. The planner reads a clean view of main (tracked, committed files only): a real
   `Factory.run` against the scripted model server, the planner asking for the operator's
   `.env`, untracked, staged and modified files and a committed link to an outside secret.
B. `.factory/` is 0700 and the store, its -wal and -shm and `run.lock` 0600, under a umask
   that would have made them world-readable; `.git/info/exclude` lists `.factory/` once.
C. With the engine running as root, commands (bwrap and docker) run as uid/gid 65533 with no
   capability; the files they and the engine's file tools make belong to that user; fresh
   worktrees are handed over when their sandbox opens; landing tests run as it too;
   `run_as` refuses root and nonsense and honours "UID:GID".
D. `factory doctor` reports that boundary (and the quotas) as configured.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agents import events as ev
from agents.beneath import openat2_available
from agents.engine import Factory
from agents.errors import FactoryError
from agents.landing import LandingRequest
from agents.queue import chain
from agents.queue.executor import ChainExecutor
from agents.sandbox.base import Limits, Sandbox, SandboxBackend, SandboxContext, SandboxError
from agents.sandbox.docker import LOCAL_IMAGE
from agents.sandbox.select import BackendName, make_backend
from agents.store import Store
from agents.tools import ToolContext, ToolOutcome, call_tool
from agents.workspace import Workspace, Worktree
from tests.conftest import PROJECT, git, make_repo
from tests.openai_server import Reply, ScriptedServer, call, error

BACKENDS = ["bwrap", "docker"]
COMMAND_USER = (65533, 65533)
KEY_ENV = "FACTORY_PRIVILEGE_TEST_KEY"
FACTORY_CLI = Path(sys.executable).with_name("factory")
LIMITS = Limits(wall_seconds=20, memory_mb=512, max_processes=64, output_bytes=200_000)

SPEC = """\
+++
id = "calc"
title = "Record who commands run as"
+++

## Goal
Write a note saying which user the sandbox ran the commands as.

## Architecture
A text file next to the package.

## Boundaries
- calc/

## Edge cases
- None.

## Invariants
- `add` and `sub` do not change.

## Acceptance
- `test -f calc/whoami.txt`
"""

TASK = {
    "id": "whoami",
    "title": "Record the command user",
    "paths": ["calc/whoami.txt", "calc/notes/"],
    "acceptance": ["test -f calc/whoami.txt"],
}


def plan_call() -> Reply:
    return call("submit_plan", {"tasks": [TASK]})


def finish(summary: str = "done") -> Reply:
    return call("finish", {"summary": summary})


def calls(*pairs: tuple[str, dict[str, Any]]) -> Reply:
    """One model turn asking for several tools at once."""
    return Reply(tool_calls=list(pairs))


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "test-key")


def configure(
    root: Path,
    server: ScriptedServer,
    *,
    sandbox: str = 'backend = "none"',
    test_command: str = "true",
) -> None:
    (root / ".factory.toml").write_text(f"""\
[models]
planner = "openai/gpt-4o-mini"
implementer = "openai/gpt-4o-mini"
reviewer = "openai/gpt-4o-mini"
api_base = "{server.api_base}"
api_key_env = "{KEY_ENV}"
max_retries = 0

[run]
concurrency = 1
task_retries = 0

[sandbox]
{sandbox}

[repo]
test_command = '{test_command}'
""")


def project(
    root: Path, server: ScriptedServer, files: dict[str, str] | None = None, **config: str
) -> Path:
    """The calc repository with one spec, configured to reach the scripted server."""
    make_repo(root, {**PROJECT, **(files or {})})
    (root / "specs").mkdir()
    (root / "specs" / "calc.md").write_text(SPEC)
    configure(root, server, **config)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "spec and configuration")
    return root


async def run_factory(root: Path) -> tuple[Any, list[ev.Event]]:
    factory = await Factory.open(root)
    try:
        summary = await factory.run()
        events = [s.event for s in await factory.store.read_events(limit=100_000)]
    finally:
        await factory.close()
    return summary, events


def tool_events(events: list[ev.Event], agent_id: str) -> list[ev.ToolExecuted]:
    return [e for e in events if isinstance(e, ev.ToolExecuted) and e.agent_id == agent_id]


def worktrees(root: Path) -> list[str]:
    return [
        line.split(" ", 1)[1]
        for line in git(root, "worktree", "list", "--porcelain").splitlines()
        if line.startswith("worktree ")
    ]


def views_left(root: Path) -> list[str]:
    views = root / ".factory" / "views"
    return sorted(os.listdir(views)) if views.is_dir() else []


# -- A. the planner reads main's tracked files only ----------------------------------------

ENV_KEY = "sk-proj-FAKEKEY-dotenv-4f1d9a2b"
UNTRACKED = "UNTRACKED-SECRET-77c2e0"
MODIFIED = "WORKTREE-SECRET-91b0aa"
STAGED = "STAGED-SECRET-c4d8f1"
OUTSIDE = "OUTSIDE-SECRET-3e5f07"
SECRETS = (ENV_KEY, UNTRACKED, MODIFIED, STAGED, OUTSIDE)
COMMITTED_SETTINGS = 'TOKEN = "committed-placeholder"\n'


@dataclass
class Operator:
    """An operator's repository with secrets everywhere but in main's committed files."""

    root: Path
    server: ScriptedServer
    hook_marker: Path
    # What the model server had seen of `.factory/views/` at each request.
    seen_views: list[list[str]] = field(default_factory=list)


@pytest.fixture
def operator(tmp_path: Path, server: ScriptedServer) -> Operator:
    vault = tmp_path / "vault.txt"
    vault.write_text(f"password = {OUTSIDE}\n")
    root = project(
        tmp_path / "repo",
        server,
        files={
            ".gitignore": ".factory/\n__pycache__/\n.env\n",
            "calc/settings.py": COMMITTED_SETTINGS,
        },
    )
    (root / "docs").mkdir()
    os.symlink(vault, root / "docs" / "credentials")
    git(root, "add", "docs/credentials")
    git(root, "commit", "-qm", "a link to the vault")
    # The person's own working state, none of it committed to main.
    (root / ".env").write_text(f"OPENAI_API_KEY={ENV_KEY}\n")
    (root / "notes").mkdir()
    (root / "notes" / "untracked.txt").write_text(f"remember {UNTRACKED}\n")
    (root / "calc" / "settings.py").write_text(f'TOKEN = "{MODIFIED}"\n')
    (root / "staged.txt").write_text(f"{STAGED}\n")
    git(root, "add", "staged.txt")
    # A convenience hook many people keep: copy the .env into every new worktree.
    marker = tmp_path / "hook-ran"
    hook = root / ".git" / "hooks" / "post-checkout"
    hook.write_text(f"#!/bin/sh\ncp '{root}/.env' leaked.env\ntouch '{marker}'\n")
    hook.chmod(0o755)
    op = Operator(root, server, marker)
    answer = server._answer

    def spy(path: str, body: dict[str, Any]) -> Any:
        op.seen_views.append(views_left(root))
        return answer(path, body)

    server._answer = spy  # type: ignore[method-assign]
    return op


def assert_no_secret(text: str, where: str) -> None:
    found = [s for s in SECRETS if s in text]
    assert not found, f"{where} holds {found}"


def assert_views_gone(root: Path) -> None:
    assert views_left(root) == []
    assert worktrees(root) == [str(root)]
    admin = root / ".git" / "worktrees"
    assert not admin.is_dir() or os.listdir(admin) == []


READS = calls(
    ("read_file", {"path": ".env"}),
    ("read_file", {"path": "notes/untracked.txt"}),
    ("read_file", {"path": "calc/settings.py"}),
    ("read_file", {"path": "staged.txt"}),
    ("read_file", {"path": "docs/credentials"}),
    ("read_file", {"path": "leaked.env"}),
)
LISTS = calls(
    ("list_files", {"path": "."}),
    ("list_files", {"path": "notes"}),
    ("list_files", {"path": ".", "pattern": ".env*"}),
)
SEARCHES = calls(
    ("search_code", {"pattern": "SECRET|FAKEKEY|TOKEN|password"}),
    ("search_code", {"pattern": ".", "path": ".env"}),
    ("search_code", {"pattern": ".", "path": "docs"}),
)


async def plan_with(op: Operator, *turns: Reply) -> tuple[Any, dict[str, ev.ToolExecuted]]:
    op.server.script(*turns, plan_call(), finish("nothing to change"))
    summary, events = await run_factory(op.root)
    planned = tool_events(events, "plan:calc.1")
    by_call = {f"{e.name} {json.dumps(e.arguments, sort_keys=True)}": e for e in planned}
    return summary, by_call


def result(by_call: dict[str, ev.ToolExecuted], name: str, **arguments: Any) -> ev.ToolExecuted:
    return by_call[f"{name} {json.dumps(arguments, sort_keys=True)}"]


async def test_planner_lists_and_searches_mains_tracked_files_only(operator: Operator) -> None:
    _, by_call = await plan_with(operator, LISTS, SEARCHES)
    listing = result(by_call, "list_files", path=".").result.splitlines()
    assert "calc/ops.py" in listing and "calc/settings.py" in listing
    assert "docs/credentials (symbolic link)" in listing
    for hidden in (".env", "notes/untracked.txt", "staged.txt", "leaked.env"):
        assert hidden not in listing, (hidden, listing)
    assert not any(".env" in line or "notes/" in line for line in listing), listing
    notes = result(by_call, "list_files", path="notes")
    assert notes.is_error and "no such folder" in notes.result
    assert result(by_call, "list_files", path=".", pattern=".env*").result == "(no files)"

    hits = result(by_call, "search_code", pattern="SECRET|FAKEKEY|TOKEN|password").result
    assert hits.splitlines() == [f"calc/settings.py:1: {COMMITTED_SETTINGS.strip()}"]
    assert result(by_call, "search_code", pattern=".", path=".env").is_error
    # The link's target is never read by a search either.
    assert result(by_call, "search_code", pattern=".", path="docs").result == "(no matches)"
    for event in by_call.values():
        assert_no_secret(event.result, f"{event.name}({event.arguments})")


async def test_planner_reads_mains_committed_content(operator: Operator) -> None:
    summary, by_call = await plan_with(operator, READS)
    assert result(by_call, "read_file", path="calc/settings.py").result == COMMITTED_SETTINGS
    for missing in (".env", "notes/untracked.txt", "staged.txt", "leaked.env"):
        outcome = result(by_call, "read_file", path=missing)
        assert outcome.is_error and "no such file" in outcome.result, (missing, outcome)
    link = result(by_call, "read_file", path="docs/credentials")
    assert link.is_error and "symbolic link" in link.result, link.result
    for event in by_call.values():
        assert_no_secret(event.result, f"{event.name}({event.arguments})")
    # The operator's post-checkout hook never ran for the view (it would copy the .env in),
    # though git itself runs it for any other new worktree.
    assert not operator.hook_marker.exists()
    probe = operator.root.parent / "probe"
    git(operator.root, "worktree", "add", "-q", "--detach", str(probe), "main")
    assert operator.hook_marker.exists() and ENV_KEY in (probe / "leaked.env").read_text()
    git(operator.root, "worktree", "remove", "--force", str(probe))
    # The plan went through; the person's working state is exactly as they left it.
    assert summary.failed == [("calc/whoami", "the agent finished without changing any file")]
    assert (operator.root / ".env").read_text() == f"OPENAI_API_KEY={ENV_KEY}\n"
    assert MODIFIED in (operator.root / "calc" / "settings.py").read_text()
    status = git(operator.root, "status", "--porcelain", "--untracked-files=all")
    assert set(status.splitlines()) == {
        "A  staged.txt",
        " M calc/settings.py",
        "?? notes/untracked.txt",
    }, status


async def test_no_secret_reaches_the_store_or_the_model(operator: Operator) -> None:
    await plan_with(operator, LISTS, READS, SEARCHES)
    requests = operator.server.requests
    assert len(requests) == 5  # four planner turns and the implementer's one
    # The model did receive the tool results (so the check below is not vacuous).
    planner_last = json.dumps(requests[3])
    assert "committed-placeholder" in planner_last and "docs/credentials" in planner_last
    for i, body in enumerate(requests):
        assert_no_secret(json.dumps(body), f"request {i} to the model server")
    store = operator.root / ".factory" / "factory.db"
    for path in (store, Path(f"{store}-wal")):
        if path.exists():
            assert_no_secret(path.read_bytes().decode("latin-1"), str(path))
    async_store = await Store.open(store, readonly=True)
    try:
        messages = await async_store.messages("plan:calc.1")
    finally:
        await async_store.close()
    assert any(m.get("role") == "tool" for m in messages)
    assert_no_secret(json.dumps(messages), "the planner's recorded conversation")


async def test_the_view_exists_while_planning_and_is_removed_after(operator: Operator) -> None:
    await plan_with(operator, LISTS)
    planner_turns = operator.seen_views[:2]
    assert all(len(seen) == 1 and seen[0].startswith("plan-calc-") for seen in planner_turns), (
        operator.seen_views
    )
    assert operator.seen_views[-1] == []  # the implementer's turn: planning is over
    assert_views_gone(operator.root)


async def test_the_view_is_removed_when_the_planner_fails(operator: Operator) -> None:
    operator.server.script(LISTS, error(400, "the model refuses"))
    summary, events = await run_factory(operator.root)
    rejected = [e for e in events if isinstance(e, ev.PlanRejected)]
    assert len(rejected) == 1 and "planner failed" in rejected[0].reason, rejected
    assert summary.landed == [] and len(operator.seen_views[0]) == 1
    assert_views_gone(operator.root)
    for event in tool_events(events, "plan:calc.1"):
        assert_no_secret(event.result, event.name)


async def test_a_view_a_crash_left_is_removed_by_the_next_run(operator: Operator) -> None:
    stale = operator.root / ".factory" / "views" / "plan-calc-999-0"
    stale.parent.mkdir(parents=True)
    git(
        operator.root,
        "-c",
        "core.hooksPath=/dev/null",
        "worktree",
        "add",
        "-q",
        "--detach",
        str(stale),
        "main",
    )
    assert len(worktrees(operator.root)) == 2
    operator.server.script(error(400, "no plan today"))
    await run_factory(operator.root)
    assert_views_gone(operator.root)


# -- B. the engine's own files are private --------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: anything made without an explicit mode would be world-readable (-writable)."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def assert_umask_is_open(tmp_path: Path) -> None:
    probe = tmp_path / "umask-probe"
    probe.write_text("x")
    assert mode(probe) == 0o666  # the default the engine must not get
    probe.unlink()


def assert_private_store(store: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{store}{suffix}")
        assert path.exists(), f"{path} missing (is the store in WAL mode?)"
        assert mode(path) == 0o600, (path, oct(mode(path)))


async def test_factory_state_is_private_under_an_open_umask(
    tmp_path: Path, server: ScriptedServer, open_umask: None
) -> None:
    assert_umask_is_open(tmp_path)
    root = project(tmp_path / "repo", server)
    factory = await Factory.open(root)
    try:
        assert mode(root / ".factory") == 0o700
        assert_private_store(root / ".factory" / "factory.db")
        server.script(error(400, "no plan"))
        await factory.run()
        assert mode(root / ".factory" / "run.lock") == 0o600
        assert_private_store(root / ".factory" / "factory.db")
    finally:
        await factory.close()
    assert mode(root / ".factory") == 0o700
    assert mode(root / ".factory" / "run.lock") == 0o600
    assert mode(root / ".factory" / "factory.db") == 0o600


async def test_a_store_outside_the_factory_folder_is_private_too(
    tmp_path: Path, server: ScriptedServer, open_umask: None
) -> None:
    root = project(tmp_path / "repo", server)
    with (root / ".factory.toml").open("a") as handle:
        handle.write('\n[store]\npath = "state/events.db"\n')
    factory = await Factory.open(root)
    try:
        assert_private_store(root / "state" / "events.db")
    finally:
        await factory.close()


async def test_a_world_readable_store_a_crash_left_is_tightened(
    tmp_path: Path, server: ScriptedServer, open_umask: None
) -> None:
    root = project(tmp_path / "repo", server)
    (root / ".factory").mkdir(mode=0o700)
    target = root / ".factory" / "factory.db"
    # A store snapshotted while open (its -wal and -shm still there), as a crash leaves it,
    # written by an older engine that gave it the default mode.
    first = await Store.open(tmp_path / "elsewhere" / "factory.db")
    try:
        await first.append(ev.Notice(level="info", message="before the crash"))
        for suffix in ("", "-wal", "-shm"):
            data = Path(f"{first.path}{suffix}").read_bytes()
            Path(f"{target}{suffix}").write_bytes(data)
            os.chmod(f"{target}{suffix}", 0o644)
    finally:
        await first.close()
    factory = await Factory.open(root)
    try:
        assert_private_store(target)
        events = [s.event for s in await factory.store.read_events(limit=100)]
        assert any(getattr(e, "message", "") == "before the crash" for e in events)
    finally:
        await factory.close()


@pytest.mark.parametrize("before", [0o755, 0o777, 0o711], ids=oct)
async def test_a_permissive_factory_folder_is_tightened(
    tmp_path: Path, server: ScriptedServer, open_umask: None, before: int
) -> None:
    root = project(tmp_path / "repo", server)
    (root / ".factory").mkdir()
    os.chmod(root / ".factory", before)
    (root / ".factory" / "factory.db").touch(mode=0o666)
    factory = await Factory.open(root)
    try:
        assert mode(root / ".factory") == 0o700
        assert_private_store(root / ".factory" / "factory.db")
    finally:
        await factory.close()


async def test_the_exclude_file_lists_factory_once(tmp_path: Path, server: ScriptedServer) -> None:
    # No .gitignore rule for .factory/: only the exclude file keeps it out of git.
    root = project(tmp_path / "repo", server, files={".gitignore": "__pycache__/\n"})
    exclude = root / ".git" / "info" / "exclude"
    exclude.write_text("# the person's own rules\n*.swp")  # no final newline
    for _ in range(2):
        factory = await Factory.open(root)
        await factory.close()
    lines = exclude.read_text().splitlines()
    assert [line.strip() for line in lines].count(".factory/") == 1, lines
    assert lines[:2] == ["# the person's own rules", "*.swp"]
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(root, "check-ignore", ".factory/factory.db").strip() == ".factory/factory.db"


# -- C. commands run as an unprivileged user ------------------------------------------------


@dataclass
class Box:
    """A repository, its workspace, and the sandboxes a test opened on one backend."""

    backend_name: BackendName
    image: str | None
    repo: Path
    ws: Workspace
    outside: Path
    opened: list[Sandbox] = field(default_factory=list)

    def backend(self, run_as: str = "auto") -> SandboxBackend:
        return make_backend(
            self.backend_name, limits=LIMITS, image=self.image, root=self.repo, run_as=run_as
        )

    async def worktree(self, task: str = "t") -> Worktree:
        return await self.ws.create("s", task)

    async def open(
        self, worktree: Path, run_as: str = "auto", backend: SandboxBackend | None = None
    ) -> ToolContext:
        backend = backend or self.backend(run_as)
        sandbox = await backend.open(
            SandboxContext(
                worktree=worktree,
                agent_id=f"priv-{worktree.name}",
                read_only=[worktree / ".git", worktree / ".factory.toml"],
            )
        )
        self.opened.append(sandbox)
        owner = backend.run_as.owner if backend.run_as is not None else None
        return ToolContext(worktree=worktree, sandbox=sandbox, limits=LIMITS, owner=owner)


@pytest.fixture(params=BACKENDS)
async def box(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Box]:
    assert os.geteuid() == 0, "these tests are about an engine that runs as root"
    # docker's fixture fails (never skips) the test when no daemon answers.
    image = request.getfixturevalue("docker_image") if request.param == "docker" else None
    repo = make_repo(tmp_path / "repo")
    outside = tmp_path / "outside.txt"
    outside.write_text("root's own file\n")
    ws = Workspace(repo, repo / ".factory" / "worktrees")
    b = Box(request.param, image, repo, ws, outside)
    try:
        yield b
    finally:
        for sandbox in b.opened:
            await sandbox.close()
        ws.close()


async def run(ctx: ToolContext, command: str) -> ToolOutcome:
    return await call_tool(ctx, "run", {"command": command})


def stdout(out: ToolOutcome) -> str:
    return out.content.split("--- stdout ---\n", 1)[1].split("\n--- stderr ---", 1)[0]


def owners(root: Path) -> dict[str, tuple[int, int]]:
    """(uid, gid) of everything below root, links themselves, never followed."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = os.lstat(path)
            found[str(path.relative_to(root))] = (info.st_uid, info.st_gid)
    return found


def owner(path: Path) -> tuple[int, int]:
    info = os.lstat(path)
    return (info.st_uid, info.st_gid)


async def test_commands_run_as_the_command_user_without_capabilities(box: Box) -> None:
    wt = await box.worktree()
    ctx = await box.open(wt.path)
    out = await run(ctx, "id -u; id -g; id -G; grep -E '^(Cap|NoNewPrivs)' /proc/self/status")
    assert not out.is_error, out.content
    lines = stdout(out).splitlines()
    assert lines[:3] == ["65533", "65533", "65533"], lines
    status = dict(line.split(":\t", 1) for line in lines[3:])
    for cap in ("CapEff", "CapPrm", "CapAmb"):
        assert int(status[cap], 16) == 0, (cap, status)
    # The inheritable and bounding sets can give nothing back: no_new_privs holds.
    assert status["NoNewPrivs"] == "1", status


async def test_a_command_cannot_become_root_again(box: Box) -> None:
    wt = await box.worktree()
    ctx = await box.open(wt.path)
    out = await run(
        ctx,
        "unshare -U -r id -u && echo GOT-A-NAMESPACE; "
        "chown 0:0 calc/ops.py && echo CHOWNED; "
        "touch /proc/sys/kernel/core_pattern 2>&1; "
        "echo x > .git && echo WROTE-GIT; "
        "kill -KILL 1 2>/dev/null && echo KILLED-INIT; id -u",
    )
    assert "GOT-A-NAMESPACE" not in out.content and "CHOWNED" not in out.content
    assert "WROTE-GIT" not in out.content and "KILLED-INIT" not in out.content
    assert stdout(out).splitlines()[-1] == "65533"
    assert owner(wt.path / "calc" / "ops.py") == COMMAND_USER
    assert (wt.path / ".git").read_text().startswith("gitdir: ")


async def test_files_a_command_creates_belong_to_the_command_user(box: Box) -> None:
    wt = await box.worktree()
    ctx = await box.open(wt.path)
    out = await run(
        ctx,
        "mkdir -p made/deeper && echo hi > made/deeper/file.txt && "
        "ln -s file.txt made/deeper/link && mkfifo made/pipe && "
        "cp calc/ops.py made/copy.py",
    )
    assert not out.is_error, out.content
    for rel in (
        "made",
        "made/deeper",
        "made/deeper/file.txt",
        "made/deeper/link",
        "made/pipe",
        "made/copy.py",
    ):
        assert owner(wt.path / rel) == COMMAND_USER, rel


async def test_files_the_engine_writes_belong_to_the_command_user(box: Box) -> None:
    wt = await box.worktree()
    ctx = await box.open(wt.path)
    assert ctx.owner == COMMAND_USER
    wrote = await call_tool(
        ctx, "write_file", {"path": "new/dir/engine.txt", "content": "from the engine\n"}
    )
    assert not wrote.is_error, wrote.content
    for rel in ("new", "new/dir", "new/dir/engine.txt"):
        assert owner(wt.path / rel) == COMMAND_USER, rel
    # A file the command made, then rewritten by the engine, stays the command user's.
    made = await run(ctx, "umask 077; echo one > mine.txt")
    assert not made.is_error, made.content
    edited = await call_tool(
        ctx, "edit_file", {"path": "mine.txt", "search": "one", "replace": "two"}
    )
    assert not edited.is_error, edited.content
    assert owner(wt.path / "mine.txt") == COMMAND_USER and mode(wt.path / "mine.txt") == 0o600
    # ... and the command can change all of it afterwards.
    out = await run(
        ctx,
        "echo more >> new/dir/engine.txt && touch new/dir/sibling && "
        "chmod 600 new/dir/engine.txt && echo three >> mine.txt && "
        "mv new/dir/sibling new/moved && rm -r new/moved",
    )
    assert not out.is_error, out.content
    assert (wt.path / "new/dir/engine.txt").read_text() == "from the engine\nmore\n"
    assert (wt.path / "mine.txt").read_text() == "two\nthree\n"


async def test_a_fresh_worktree_is_handed_over_when_its_sandbox_opens(box: Box) -> None:
    os.symlink(box.outside, box.repo / "escape")
    git(box.repo, "add", "escape")
    git(box.repo, "commit", "-qm", "a link out")
    wt = await box.worktree()
    before = owners(wt.path)
    assert before and set(before.values()) == {(0, 0)}  # the engine made it
    ctx = await box.open(wt.path)
    after = owners(wt.path)
    assert after.pop(".git") == (0, 0)  # the pointer stays the engine's (bound read-only)
    assert set(after.values()) == {COMMAND_USER}, after
    assert owner(wt.path) == COMMAND_USER
    assert owner(box.outside) == (0, 0)  # the link was changed, never what it points at
    out = await run(
        ctx,
        "echo '# changed' >> calc/ops.py && rm tests/__init__.py && "
        "mkdir calc/sub && mv calc/sub calc/moved && rm escape",
    )
    assert not out.is_error, out.content


async def test_a_hand_over_cut_short_is_completed_when_the_sandbox_opens_again(box: Box) -> None:
    # A crash (or hand_over's walk limits) after the worktree's own folder was given to the
    # command user and before its contents were: the next open must not take it as done.
    wt = await box.worktree()
    os.chown(wt.path, *COMMAND_USER)
    ctx = await box.open(wt.path)
    after = owners(wt.path)
    after.pop(".git")
    assert set(after.values()) == {COMMAND_USER}, sorted(after.items())
    out = await run(ctx, "echo '# changed' >> calc/ops.py")
    assert not out.is_error, out.content


async def test_a_tree_deeper_than_the_walk_is_handed_over_or_refused_every_time(box: Box) -> None:
    # A tracked tree nested past hand_over's walk bound (main may hold one: any landed branch
    # could add it). Each open either hands the whole worktree over or refuses with a clear
    # error; it never opens a sandbox on a worktree whose contents are still root's.
    deep = "/".join(["d"] * 130) + "/leaf.txt"
    (box.repo / deep).parent.mkdir(parents=True)
    (box.repo / deep).write_text("deep\n")
    git(box.repo, "add", "-A")
    git(box.repo, "commit", "-qm", "a deep tree")
    wt = await box.worktree()
    outcomes = []
    for _ in range(2):
        try:
            await box.open(wt.path)
        except Exception as exc:
            clear = isinstance(exc, (FactoryError, SandboxError))
            outcomes.append(("refused" if clear else "crashed", type(exc).__name__, str(exc)))
            continue
        still_roots = [
            rel for rel, who in owners(wt.path).items() if rel != ".git" and who != COMMAND_USER
        ]
        outcomes.append(("opened", f"{len(still_roots)} entries still root's", ""))
    assert all(o[0] == "refused" or o[1].startswith("0 ") for o in outcomes), outcomes


async def test_the_command_user_can_use_what_the_sandbox_mounts_for_it(box: Box) -> None:
    wt = await box.worktree()
    ctx = await box.open(wt.path)
    out = await run(
        ctx,
        f"test -r /etc/passwd && echo passwd-ok; "
        f"echo x | awk '{{print \"awk-ok\"}}'; "
        f"{sys.executable} -c 'print(\"python-ok\")'",
    )
    lines = stdout(out).splitlines()
    assert lines == ["passwd-ok", "awk-ok", "python-ok"], out.content


async def commit_from_sandbox(box: Box) -> tuple[Worktree, str]:
    """A task branch whose file a sandboxed command wrote, committed by the engine."""
    wt = await box.worktree()
    ctx = await box.open(wt.path)
    out = await run(ctx, "echo 'written as' $(id -u) > calc/notes.txt")
    assert not out.is_error, out.content
    info = await box.ws.commit(wt, "add notes")
    assert info is not None and info.files == ["calc/notes.txt"]
    box.ws.remove(wt.path)
    return wt, info.commit


@dataclass
class Landed:
    landed: bool
    run: ev.QueueTestFinished


async def land(box: Box, test_command: str) -> tuple[Landed, list[ev.Event]]:
    """The committed branch through the merge queue's executor, as the engine drives it:
    linked onto main, its point tested in the sandbox, main moved to it when it passed."""
    wt, commit = await commit_from_sandbox(box)
    emitted: list[ev.Event] = []

    async def emit(event: ev.Event) -> None:
        emitted.append(event)

    lander = ChainExecutor(
        box.ws, box.backend(), test_command, LIMITS, box.repo / ".factory" / "landing", emit
    )
    request = LandingRequest("s", "t", wt.branch, commit, "add notes", {})
    main = box.ws.main_head()
    landed: list[LandingRequest] = []
    try:
        await lander.link(chain.LinkEntry("s/t", commit, main, 1), request)
        linked = next(e for e in emitted if isinstance(e, ev.QueueLinked))
        assert linked.ok, linked
        await lander.test(chain.TestPoint(linked.merge_commit, 1, ("s/t",), 1, 1))
        run = next(e for e in emitted if isinstance(e, ev.QueueTestFinished))
        if run.passed:
            link = {"merge_commit": linked.merge_commit, "tree": linked.tree}
            landed, problem = await lander.land_chain(
                chain.LandChain(linked.merge_commit, main, ("s/t",), 1), [request],
                {"s/t": link}, None)
            assert landed, problem
    finally:
        lander.close()
    # Only the queue's one kept link worktree was there, and it is gone with the executor.
    scratch = box.repo / ".factory" / "landing"
    assert not scratch.exists() or not any(scratch.iterdir())
    return Landed(bool(landed), run), emitted


async def test_landing_tests_run_as_the_command_user(box: Box) -> None:
    outcome, _ = await land(
        box,
        'test "$(id -u):$(id -g)" = 65533:65533 && '
        "touch written-by-tests && grep -q 65533 calc/notes.txt",
    )
    assert outcome.landed, outcome.run
    assert git(box.repo, "show", "main:calc/notes.txt") == "written as 65533\n"


async def test_landing_test_output_shows_the_command_user(box: Box) -> None:
    outcome, _ = await land(box, 'echo "tests ran as $(id -u):$(id -g)"; exit 3')
    assert not outcome.landed and not outcome.run.passed
    assert "exit code 3" in outcome.run.reason
    # The run's output, as recorded for the queue, the console and the agent's findings.
    assert "tests ran as 65533:65533" in outcome.run.output


REFUSED = {
    "0:0": "commands never run as root",
    "0:65533": "commands never run as root",
    "65533:0": "commands never run as root",
    "nonsense": 'expected "auto" or "UID:GID"',
    "65533": 'expected "auto" or "UID:GID"',
    "-1:-1": 'expected "auto" or "UID:GID"',
    "root:root": 'expected "auto" or "UID:GID"',
    "": 'expected "auto" or "UID:GID"',
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("setting", list(REFUSED))
async def test_run_as_root_or_nonsense_is_refused(
    tmp_path: Path, server: ScriptedServer, backend: BackendName, setting: str
) -> None:
    image = LOCAL_IMAGE if backend == "docker" else None
    with pytest.raises(FactoryError) as refused:
        make_backend(backend, limits=LIMITS, image=image, root=tmp_path, run_as=setting)
    assert REFUSED[setting] in str(refused.value) and repr(setting) in str(refused.value)
    # The same setting in a repository's configuration stops the factory from opening.
    root = project(
        tmp_path / "repo",
        server,
        sandbox=f'backend = "{backend}"\nimage = "{LOCAL_IMAGE}"\nrun_as = "{setting}"',
    )
    with pytest.raises(FactoryError) as at_open:
        await Factory.open(root)
    assert REFUSED[setting] in str(at_open.value)


async def test_an_explicit_run_as_user_is_used(box: Box) -> None:
    wt = await box.worktree()
    backend = box.backend("4242:4242")
    assert backend.run_as is not None and backend.run_as.owner == (4242, 4242)
    ctx = await box.open(wt.path, backend=backend)
    after = owners(wt.path)
    after.pop(".git")
    assert set(after.values()) == {(4242, 4242)}
    out = await run(ctx, "id -u; id -g; grep CapEff /proc/self/status; echo hi > by-command")
    assert stdout(out).splitlines()[:3] == ["4242", "4242", "CapEff:\t0000000000000000"], (
        out.content
    )
    wrote = await call_tool(ctx, "write_file", {"path": "deep/by-engine", "content": "x"})
    assert not wrote.is_error
    for rel in ("by-command", "deep", "deep/by-engine"):
        assert owner(wt.path / rel) == (4242, 4242), rel


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_whole_run_works_and_lands_as_the_command_user(
    request: pytest.FixtureRequest, tmp_path: Path, server: ScriptedServer, backend: str
) -> None:
    sandbox = f'backend = "{backend}"'
    if backend == "docker":
        sandbox += f'\nimage = "{request.getfixturevalue("docker_image")}"'
    root = project(
        tmp_path / "repo",
        server,
        sandbox=sandbox,
        # Main passes too (the queue tests main before landing on it): no file yet.
        test_command='test "$(id -u)" = 65533 && '
                     '{ test ! -e calc/whoami.txt || grep -qx 65533 calc/whoami.txt; }',
    )
    server.script(
        plan_call(),
        call("run", {"command": "id -u > calc/whoami.txt"}),
        call("write_file", {"path": "calc/notes/engine.txt", "content": "by the engine\n"}),
        call("run", {"command": "echo by the command >> calc/notes/engine.txt"}),
        finish("recorded who ran"),
    )
    summary, events = await run_factory(root)
    assert summary.landed == ["calc/whoami"], (summary.failed, summary.rejected)
    assert git(root, "show", "main:calc/whoami.txt") == "65533\n"
    assert git(root, "show", "main:calc/notes/engine.txt") == "by the engine\nby the command\n"
    runs = [e for e in tool_events(events, "calc.whoami.1") if e.name != "finish"]
    assert runs and not any(e.is_error for e in runs), [e.result for e in runs]


# -- D. factory doctor ----------------------------------------------------------------------


def doctor(folder: Path) -> str:
    done = subprocess.run(
        [str(FACTORY_CLI), "doctor"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "1000", "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def row(output: str, label: str) -> str:
    found = [line for line in output.splitlines() if line.startswith(f"│ {label} ")]
    assert len(found) == 1, (label, output)
    return " ".join(found[0].split())


def check_doctor(output: str, uid: int, quota: str) -> None:
    assert "uid 0, gid 0 (root)" in row(output, "engine runs as")
    assert f"uid {uid}, gid {uid} (bwrap and docker" in row(output, "commands run as")
    for backend in BACKENDS:
        line = row(output, backend)
        assert " yes " in line and f"commands ran as uid:gid {uid}:{uid};" in line, line
    paths = row(output, "worktree paths opened by")
    if openat2_available():
        assert "openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV" in paths
    else:
        assert "component by component with O_NOFOLLOW" in paths
    assert quota in row(output, "quotas")


def test_doctor_reports_the_default_trust_boundary(tmp_path: Path, docker_image: str) -> None:
    check_doctor(
        doctor(tmp_path),
        65533,
        "2048 MB and 100,000 files per worktree (scratch space too), 10 MB per write",
    )


def test_doctor_reports_the_configured_trust_boundary(tmp_path: Path, docker_image: str) -> None:
    # A repository whose models and test command work (doctor checks them too, and its
    # exit code says whether everything does).
    (tmp_path / ".factory.toml").write_text(
        '[models]\nplanner = "replay/doc"\nimplementer = "replay/doc"\nreviewer = "replay/doc"\n'
        '[repo]\ntest_command = "true"\n'
        "[sandbox]\nquota_disk_mb = 321\nquota_files = 4321\nquota_write_mb = 2.5\n"
        'run_as = "4242:4242"\n'
    )
    (tmp_path / ".gitignore").write_text(".factory/\n")
    replay = tmp_path / ".factory" / "replay"
    replay.mkdir(parents=True)
    (replay / "doc.json").write_text('{"format": "factory-replay/1", "agents": {}}')
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "doctor"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       cwd=tmp_path, check=True, capture_output=True)
    check_doctor(
        doctor(tmp_path),
        4242,
        "321 MB and 4,321 files per worktree (scratch space too), 2.5 MB per write",
    )
