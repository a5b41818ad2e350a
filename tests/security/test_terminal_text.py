"""Untrusted text on its way to a terminal: every place where the console and the `factory`
command show what an agent, a model, a test run or a branch produced.

Agents' messages, tool arguments and results, questions, summaries, rejection reasons, file
names, diffs and spec files are written by a model or by code it wrote. Shown raw, such text
sets the terminal's title (OSC 0/2), fills its clipboard (OSC 52), clears the screen or moves
the cursor (CSI, also as the one-character C1 CSI), hides what it says behind a carriage
return or a bidi override; put into Rich or Textual markup, it restyles the screen, adds
links and actions, or crashes the program with a MarkupError. `agents/textsafe.py` makes it
inert; these tests check that it is applied wherever such text meets a terminal:

- the headless progress lines, the console's timeline lines and the live progress table;
- the real `factory status` command (plain and `--json`) over a real store;
- the real console in process, every pane and dialog, checked segment by segment in what
  Textual would write to the terminal;
- end to end in a real terminal (tmux, with `set-clipboard on`, so that an OSC 52 sequence
  that got through would fill a paste buffer): `factory console`, `factory status`, and a
  headless `factory run` whose agent and tests produce hostile text. The pane's title and
  the paste buffers must be unchanged, the header and footer intact, and the hostile text
  visible, as placeholders.

The hostile store holds real events appended to a real store, in a real demo repository with
real branches: one adds files named with escapes (and a newline) full of escapes, two others
add the same hostile file with different text, so that their merge conflicts.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from agents import demo
from agents import events as ev
from agents.config import load_config
from agents.store import Store, StoredEvent
from agents.textsafe import clean_line
from tests.conftest import git
from tests.console.test_tmux_e2e import EXIT_MARK, Terminal, footer

PROJECT = Path(__file__).resolve().parents[2]
ESC, BEL, ST = "\x1b", "\x07", "\x1b\\"
# What must never reach a terminal from untrusted text: C0 but tab and newline, DEL, C1, the
# bidi controls and the line and paragraph separators.
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
TITLE = "factory-terminal-test"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# One kind of attack each.
VARIANTS = {
    "osc0-title": f"{ESC}]0;PWNED{ST}",
    "osc2-title": f"{ESC}]2;PWNED{BEL}",
    "osc52-clipboard": f"{ESC}]52;c;{_b64('EVIL')}{ST}",
    "csi-clear": f"{ESC}[2J{ESC}[H",
    "csi-cursor": f"{ESC}[10;10H{ESC}[5A",
    "c1-csi": "\x9b2J",
    "c1-osc": "\x9d0;PWNED\x9c",
    "bel": f"ding{BEL}",
    "cr-overwrite": "all tests passed\rFAILED",
    "bidi": "report\u202efdp.exe",
    "markup-close": "[/]",
    "markup-close-tag": "x [/red] y",
    "markup-link": "[link=http://x]click[/link]",
    "markup-style": "[bold red]red",
    "markup-action": "[@click=app.quit]quit[/]",
}


def hostile(place: str) -> str:
    """Every attack at once, tagged with where it was put: a title that gets through names
    the place that let it. The title and clipboard sequences come first, so that they are
    whole within the narrowest table cell."""
    return (
        f"{ESC}]0;PWNED-{place}{ST}{ESC}]52;c;{_b64('CLIP ' + place)}{ST}{ESC}[2J{ESC}[H[/] "
        f"<{place}> {ESC}[3;3H{ESC}[2A\x9b2J \x9d0;PWNED C1 {place}\x9c ok\rEVIL "
        f"\u202eevil [/red] [link=http://x]link[/link] [bold red]red [@click=app.quit]quit[/] "
        f"{ESC}]2;PWNED BEL {place}{BEL}"
    )


def shown(place: str) -> str:
    """How the start of `hostile(place)` reads on screen, made inert."""
    return f"␛]0;PWNED-{place}"


def assert_inert(text: str, where: str) -> None:
    found = UNSAFE.search(text)
    assert found is None, (
        f"{where}: {found.group()!r} reaches the terminal at {found.start()}: "
        f"{text[max(0, found.start() - 40) : found.start() + 40]!r}"
    )


# -- a hostile factory: real branches, real events in a real store ----------------------------

SPEC_NAME = f"a{ESC}]0;PWNED-specname{ST}.md"
FILE_NAME = f"x{ESC}]0;PWNED-file{ST}{ESC}]52;c;{_b64('CLIP file')}{ST}{ESC}[2J[bold red].py"
NEWLINE_NAME = f"two\nlines{ESC}[2J.py"
CONFLICT_NAME = f"c{ESC}]0;PWNED-path{ST}.txt"
AGENT = "evil.talk.1"


def _commit(root: Path, branch: str, files: dict[str, str]) -> str:
    git(root, "checkout", "-q", "-b", branch, "main")
    for name, text in files.items():
        (root / name).write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", f"{branch}: hostile")
    sha = git(root, "rev-parse", "HEAD").strip()
    git(root, "checkout", "-q", "main")
    return sha


def _events(main: str, files: str, left: str, right: str) -> list[ev.Event]:
    talk = {"spec_id": "evil", "task_id": "talk", "agent_id": AGENT}
    done = {"spec_id": "evil", "task_id": "files", "agent_id": "evil.files.1"}
    out: list[ev.Event] = [
        ev.RunStarted(run_id="run-evil", specs=["evil"], concurrency=2, sandbox="none"),
        ev.SpecRegistered(
            spec_id="evil", title=hostile("spectitle"), path="specs/evil.md", digest="d"
        ),
        ev.PlanAccepted(
            spec_id="evil",
            digest="d",
            tasks=[
                ev.PlannedTask(id=t, title=hostile("task"), paths=["x"], acceptance=["true"])
                for t in ("talk", "files", "left", "right", "rejected")
            ],
        ),
        # An agent that talks, calls tools and asks, and now waits for an answer.
        ev.TaskStarted(
            **talk, attempt=1, branch="factory/evil/talk", worktree="wt", base_commit=main
        ),
        ev.AgentStarted(**talk, role="implementer", model="replay/demo"),
        ev.AgentTurn(
            **talk,
            step=1,
            model="replay/demo",
            message={
                "role": "assistant",
                "content": hostile("turn") + "\nsecond line " + hostile("turn2"),
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "run", "arguments": hostile("call")},
                    }
                ],
            },
        ),
        ev.ToolExecuted(
            **talk,
            step=1,
            call_id="c1",
            name="run",
            arguments={"command": hostile("args")},
            result=hostile("result") + "\nmore output\r\n" + hostile("result2"),
        ),
        ev.AgentNote(**talk, step=1, message={"role": "user", "content": hostile("note")}),
        ev.ModelRetry(
            **talk, step=2, model="m", attempt=1, status=500, wait=1, error=hostile("retry")
        ),
        ev.SandboxLimited(
            **talk, step=2, command=hostile("sandbox"), stop="denied", detail=hostile("detail")
        ),
        ev.AgentStuck(**talk, reason=hostile("stuck")),
        ev.ToolExecuted(**talk, step=2, call_id="c2", name=hostile("t"), arguments="", result="x"),
        ev.QuestionAsked(
            **talk,
            question_id="q-evil",
            task_key="evil/talk",
            step=3,
            call_id="c3",
            question=hostile("ask"),
            options=[hostile("opt"), "plain"],
        ),
        # A branch with hostile file names and text, waiting for approval.
        ev.TaskStarted(
            **done, attempt=1, branch="factory/evil/files", worktree="wt2", base_commit=main
        ),
        ev.AgentStarted(**done, role="implementer", model="replay/demo"),
        ev.AgentFinished(**done, status="finished", summary=hostile("summary")),
        ev.BranchCommitted(
            **done,
            branch="factory/evil/files",
            commit=files,
            base_commit=main,
            files=[FILE_NAME, NEWLINE_NAME],
            insertions=3,
        ),
        ev.QueueEntered(
            **done,
            branch="factory/evil/files",
            commit=files,
            risk="high",
            risk_reasons=[hostile("risk")],
            needs_approval=True,
        ),
    ]
    # Two open branches whose merge conflicts over a hostile file.
    for task, sha in (("left", left), ("right", right)):
        out.append(
            ev.BranchCommitted(
                spec_id="evil",
                task_id=task,
                branch=f"factory/evil/{task}",
                commit=sha,
                base_commit=main,
                files=[CONFLICT_NAME],
            )
        )
    out.append(
        ev.ConflictChecked(
            a="factory/evil/left",
            b="factory/evil/right",
            a_head=left,
            b_head=right,
            conflicts=True,
            files=[CONFLICT_NAME],
        )
    )
    # A branch the tests gate rejected, for a reason the agent's code wrote.
    rejected = {"spec_id": "evil", "task_id": "rejected"}
    out += [
        ev.BranchCommitted(
            **rejected, branch="factory/evil/rejected", commit=files, base_commit=main, files=["y"]
        ),
        ev.QueueEntered(**rejected, branch="factory/evil/rejected", commit=files, risk="low"),
        ev.LandingStarted(**rejected, branch="factory/evil/rejected", commit=files),
        ev.GateResult(**rejected, gate="tests", passed=False, detail=hostile("gate")),
        ev.BranchRejected(
            **rejected, branch="factory/evil/rejected", gate="tests", reason=hostile("rej")
        ),
        ev.TaskFailed(spec_id="evil", task_id="left", reason=hostile("failed"), will_retry=True),
        ev.RunFinished(run_id="run-evil", status="cancelled", detail=hostile("run")),
    ]
    return out


async def _append(path: Path, events: list[ev.Event]) -> None:
    store = await Store.open(path)
    try:
        for event in events:
            await store.append(event)
    finally:
        await store.close()


def build_hostile(root: Path) -> Path:
    """The demo repository with hostile branches, a hostile spec and a store of hostile
    events (nothing runs: a console opened on it shows the store's rows)."""
    demo.build(root, "none")
    main = git(root, "rev-parse", "HEAD").strip()
    lines = "".join(f"{hostile(f'diff{n}')}\n" for n in range(3))
    files = _commit(root, "factory/evil/files", {FILE_NAME: lines, NEWLINE_NAME: lines})
    left = _commit(root, "factory/evil/left", {CONFLICT_NAME: f"left {hostile('hunk')}\n"})
    right = _commit(root, "factory/evil/right", {CONFLICT_NAME: f"right {hostile('hunk')}\n"})
    spec = (root / "specs" / "cli.md").read_text()
    (root / "specs" / SPEC_NAME).write_text(
        spec.replace("## Goal", f"## {hostile('lint')}\n\n{hostile('spec')}\n\n## Goal")
    )
    config = load_config(root / ".factory.toml")
    asyncio.run(_append(config.store_path, _events(main, files, left, right)))
    return root


@pytest.fixture(scope="session")
def hostile_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_hostile(tmp_path_factory.mktemp("hostile") / "repo")


@pytest.fixture
def hostile_root(hostile_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(hostile_template, root, symlinks=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return root


# -- the lines of the headless progress and of the console's timeline -------------------------


def _stored(event: ev.Event) -> StoredEvent:
    return StoredEvent(1, 1_790_000_000.0, event)


def _line_events(bad: str) -> list[ev.Event]:
    ids = {"spec_id": "s", "task_id": "t", "agent_id": "s.t.1"}
    return [
        ev.BranchRejected(**ids, branch="b", gate="tests", reason=bad),
        ev.AgentFinished(**ids, status="failed", summary=bad),
        ev.TaskFailed(**ids, reason=bad),
        ev.Notice(message=bad),
        ev.PlanRejected(spec_id="s", reason=bad),
        ev.SpecFinished(spec_id="s", status="failed", detail=bad),
        ev.AgentStuck(**ids, reason=bad),
        ev.SandboxLimited(**ids, step=1, command=bad, stop="denied", detail=bad),
        ev.TaskStarted(**ids, attempt=1, branch=bad, worktree="w", base_commit="0"),
        ev.RunStarted(run_id="r", specs=[bad], concurrency=1, sandbox=bad),
        ev.RunFinished(run_id="r", status="failed", detail=bad),
        ev.BranchCommitted(**ids, branch="b", commit=bad, base_commit="0", files=[bad]),
        ev.TaskBlocked(**ids, reason=bad),
    ]


@pytest.mark.parametrize("name", VARIANTS)
def test_progress_lines_are_inert(name: str) -> None:
    from console.progress import describe

    bad = f"before {VARIANTS[name]} after\nsecond line"
    for event in _line_events(bad):
        line = describe(_stored(event))
        if line is None:
            continue
        assert_inert(line, f"progress line for {event.kind}")
        assert "\n" not in line, f"a progress line is one line: {line!r}"
        # Made visible, not dropped; markup is text, not style.
        if event.kind in ("branch_rejected", "agent_finished", "notice", "agent_stuck"):
            assert clean_line(VARIANTS[name]) in line, (event.kind, line)


def _timeline_events(bad: str) -> list[ev.Event]:
    ids = {"spec_id": "s", "task_id": "t", "agent_id": "s.t.1"}
    call = {"id": "c", "type": "function", "function": {"name": bad, "arguments": bad}}
    return [
        ev.AgentStarted(**ids, role=bad, model=bad, resumed_at_step=2),
        ev.AgentTurn(
            **ids,
            step=1,
            model="m",
            message={"role": "assistant", "content": bad, "tool_calls": [call]},
        ),
        ev.ToolExecuted(
            **ids, step=1, call_id="c", name=bad, arguments={bad: bad}, result=bad, is_error=True
        ),
        ev.ToolExecuted(**ids, step=1, call_id="c", name="run", arguments=bad, result=bad),
        ev.AgentNote(**ids, step=1, message={"role": "user", "content": bad}),
        ev.SandboxLimited(**ids, step=1, command=bad, stop="timeout", detail=bad),
        ev.LimitReached(
            **ids, step=1, tool=bad, command=bad, limit="disk", used=2, allowed=1, detail=bad
        ),
        ev.ModelRetry(**ids, step=1, model="m", attempt=1, wait=1, error=bad),
        ev.AgentStuck(**ids, reason=bad),
        ev.QuestionAsked(**ids, question_id="q", task_key="s/t", question=bad, options=[bad]),
        ev.QuestionAnswered(**ids, question_id="q", answer=bad, by="engine", why=bad),
        ev.AgentFinished(**ids, status="failed", summary=bad),
    ]


@pytest.mark.parametrize("name", VARIANTS)
def test_timeline_lines_are_inert(name: str) -> None:
    from console.widgets.timeline import describe

    bad = f"before {VARIANTS[name]} after\nsecond line"
    for event in _timeline_events(bad):
        text = describe(_stored(event))
        assert text is not None, event.kind
        assert_inert(text.plain, f"timeline line for {event.kind}")
        assert clean_line(VARIANTS[name]) in text.plain, (event.kind, text.plain)
    # Written to a terminal, the whole line (styles and all) holds nothing of the attack.
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system=None, width=300)
    for event in _timeline_events(bad):
        console.print(describe(_stored(event)))
    assert_inert(out.getvalue(), "timeline written by Rich")


async def test_progress_table_cells_are_inert(tmp_path: Path) -> None:
    """The live table of `factory run` on a terminal: task keys and agent ids in its cells."""
    from console.progress import Progress

    store = await Store.open(tmp_path / "factory.db")
    try:
        bad = hostile("cell")
        await store.append(
            ev.TaskStarted(
                spec_id="s",
                task_id=bad,
                agent_id=bad,
                attempt=1,
                branch="b",
                worktree="w",
                base_commit="0",
            ),
            ev.AgentStarted(spec_id="s", task_id=bad, agent_id=bad, role="r", model="m"),
        )
        out = io.StringIO()
        console = Console(file=out, force_terminal=False, width=400)
        with Progress(store, console, None, None) as progress:
            console.print(progress.render())  # markup in a cell would raise MarkupError here
        assert_inert(out.getvalue(), "the progress table")
        assert shown("cell") in out.getvalue() and "[link=http://x]link" in out.getvalue()
    finally:
        await store.close()


# -- the real `factory status` -----------------------------------------------------------------


def _env(tmp_path: Path, **more: str) -> dict[str, str]:
    """The environment of a `factory` command run by a test: the code under test is this
    checkout's (PYTHONPATH), whichever folder the command runs in."""
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, (str(PROJECT), os.environ.get("PYTHONPATH")))),
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
        **more,
    )
    return env


def factory(root: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "console.cli", *args],
        cwd=root,
        env=_env(tmp_path, COLUMNS="400"),
        capture_output=True,
        timeout=60,
    )


def test_status_prints_hostile_text_inert(hostile_root: Path, tmp_path: Path) -> None:
    done = factory(hostile_root, tmp_path, "status", "--root", str(hostile_root))
    text = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0, f"status failed:\n{text}\n{done.stderr.decode()}"
    assert_inert(text, "factory status")
    assert_inert(done.stderr.decode("utf-8", "replace"), "factory status (stderr)")
    # The rejection reason is shown, escapes made visible and markup as text.
    assert shown("rej") in text, text
    assert "[/]" in text, text


def test_status_json_has_no_raw_escapes(hostile_root: Path, tmp_path: Path) -> None:
    done = factory(hostile_root, tmp_path, "status", "--json", "--root", str(hostile_root))
    assert done.returncode == 0, done.stderr.decode()
    assert_inert(done.stdout.decode("utf-8"), "factory status --json")
    # JSON escapes control characters: the record comes back exactly as stored.
    tasks = {t["key"]: t for t in json.loads(done.stdout)["tasks"]}
    assert tasks["evil/rejected"]["reason"] == "tests: " + hostile("rej")


def test_spec_lint_prints_hostile_spec_inert(hostile_root: Path, tmp_path: Path) -> None:
    done = factory(hostile_root, tmp_path, "spec", "lint", f"specs/{SPEC_NAME}")
    text = done.stdout.decode("utf-8", "replace")
    assert done.returncode in (0, 1), f"lint crashed:\n{text}\n{done.stderr.decode()}"
    assert_inert(text, "factory spec lint")
    assert shown("lint") in text and shown("specname") in text, text


def test_errors_print_inert(tmp_path: Path) -> None:
    """Errors quote paths, keys and what a daemon or the engine said: printed inert (here
    the error names a path given on the command line)."""
    bad = tmp_path / f"no{ESC}]0;PWNED{ST}[/]"
    done = factory(tmp_path, tmp_path, "status", "--root", str(bad))
    assert done.returncode == 2, done
    assert_inert(done.stderr.decode("utf-8", "replace"), "an error message")
    assert "␛]0;PWNED" in done.stderr.decode()


# -- the real console, in process: what Textual would write, segment by segment ---------------


def painted(app: Any) -> str:
    """The text of every segment Textual would write for the whole screen now (its own
    cursor moves are control segments, between the lines)."""
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    return "\n".join(
        "".join(s.text for strip in line for s in strip if not s.control) for line in update.strips
    )


async def settle(pilot: Any, until: Callable[[], object], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f}s for {what}; screen:\n{painted(pilot.app)}")
        await pilot.pause(0.05)


def assert_screen(app: Any, where: str, *places: str) -> str:
    screen = painted(app)
    assert_inert(screen, where)
    missing = [p for p in places if shown(p) not in screen]
    assert not missing, f"{where}: {missing} not on screen:\n{screen}"
    return screen


async def test_console_shows_hostile_text_inert(hostile_root: Path) -> None:
    from agents.engine import Factory
    from console.app import FactoryApp
    from console.client import InProcessClient
    from console.screens import DiffScreen, ReasonScreen
    from console.widgets.agents import AgentsPane
    from console.widgets.conflicts import ConflictsPane
    from console.widgets.specs import SpecsPane

    client = InProcessClient(await Factory.open(hostile_root))
    app = FactoryApp(client)
    try:
        async with app.run_test(size=(200, 50), notifications=True) as pilot:
            specs = app.query_one(SpecsPane)
            await settle(pilot, lambda: specs.current is not None and app.model, "the specs")
            await pilot.pause(0.2)
            assert_screen(app, "specs pane", "specname", "spec", "lint")

            await pilot.press("2")
            timeline = app.query_one(AgentsPane).timeline
            await settle(pilot, lambda: timeline.agent_id == AGENT and timeline.lines, "timeline")
            await pilot.pause(0.2)
            assert_screen(app, "agents pane", "t", "ask", "opt")
            # The timeline's lines, scrolled off or not, are the strips it paints.
            lines = "\n".join("".join(s.text for s in line) for line in timeline.lines)
            assert_inert(lines, "the timeline")
            for place in (
                "turn",
                "turn2",
                "call",
                "result",
                "result2",
                "note",
                "retry",
                "sandbox",
                "detail",
                "stuck",
                "t",
                "ask",
                "opt",
            ):
                assert shown(place) in lines, f"{place} is not in the timeline:\n{lines}"

            await pilot.press("3")
            pairs = app.query_one("#pairs-table")
            hunks = app.query_one(ConflictsPane).query_one("#hunks")
            pairs.select_key("factory/evil/left factory/evil/right")  # type: ignore[attr-defined]
            await settle(pilot, lambda: "<<<<<<<" in hunks.text, "the hunks")  # type: ignore[attr-defined]
            await pilot.pause(0.2)
            assert_screen(app, "conflicts pane", "file", "path", "hunk")

            await pilot.press("4")
            await pilot.pause(0.2)
            assert_screen(app, "queue pane", "rej", "risk")
            await pilot.press("home", "v")
            await settle(pilot, lambda: isinstance(app.screen, DiffScreen), "the diff")
            await pilot.pause(0.2)
            assert_screen(app, "diff view", "diff0", "diff2")
            await pilot.press("escape")

            await pilot.press("5")
            await pilot.pause(0.2)
            assert_screen(app, "inbox", "ask", "task", "risk")
            await pilot.press("home", "a")
            await settle(pilot, lambda: isinstance(app.screen, ReasonScreen), "the answer dialog")
            await pilot.pause(0.2)
            assert_screen(app, "answer dialog", "ask", "opt")
            await pilot.press("escape")

            # A daemon that goes away says why, in the header and in a notification.
            app._lost(hostile("lost"))
            app.notify(hostile("notify"), title=hostile("ntitle"), timeout=30)
            await pilot.pause(0.5)
            assert_screen(app, "notification and header", "lost", "notify", "ntitle")
            assert app.is_running
    finally:
        await client.close()


async def test_spec_with_control_characters_is_shown_read_only(hostile_root: Path) -> None:
    """TextArea writes a line's characters as they are: a spec with escapes in it (a branch
    that landed can change specs/) opens read-only with them made visible, and ctrl+s does
    not save the placeholders over it."""
    from agents.engine import Factory
    from console.app import FactoryApp
    from console.client import InProcessClient
    from console.widgets.specs import SpecsPane

    path = hostile_root / "specs" / SPEC_NAME
    before = path.read_text()
    client = InProcessClient(await Factory.open(hostile_root))
    app = FactoryApp(client)
    try:
        async with app.run_test(size=(160, 40)) as pilot:
            pane = app.query_one(SpecsPane)
            await settle(pilot, lambda: pane.current is not None, "the spec")
            assert pane.current is not None and pane.current.path.name == SPEC_NAME
            assert pane.editor.read_only and not pane.dirty
            assert shown("spec") in pane.editor.text and ESC not in pane.editor.text
            await pilot.press("ctrl+s")
            await pilot.pause(0.2)
            assert path.read_text() == before
            # Another spec opens as usual, editable.
            pane.open(hostile_root / "specs" / "cli.md")
            assert not pane.editor.read_only and not pane.dirty
            pane.editor.insert("x")
            assert pane.dirty
    finally:
        await client.close()


# -- end to end, in a real terminal ------------------------------------------------------------


class Pane(Terminal):
    """A tmux pane that would let escapes through: OSC 52 fills a paste buffer
    (`set-clipboard on`), OSC 0/2 set the pane's title, which starts as TITLE."""

    def start(self, command: str) -> None:
        self.run(
            "-f", os.devnull, "new-session", "-d", "-s", self.session, "-x", "200", "-y", "50",
            "sleep 600", ";", "set", "-s", "set-clipboard", "on", ";",
            "select-pane", "-t", self.session, "-T", TITLE,
        )  # fmt: skip
        self.socket_path = self.run("display-message", "-p", "#{socket_path}").stdout.strip()
        self.run("respawn-pane", "-k", "-t", self.session, command)

    def title(self) -> str:
        return self.run("display-message", "-p", "-t", self.session, "#{pane_title}").stdout.strip()

    def buffers(self) -> str:
        return self.run("list-buffers", check=False).stdout.strip()

    def touched(self) -> bool:
        return self.title() != TITLE or bool(self.buffers())

    def assert_untouched(self, where: str) -> None:
        title, buffers = self.title(), self.buffers()
        assert title == TITLE, f"{where}: the pane's title became {title!r}; screen:\n{self.last}"
        assert not buffers, f"{where}: a paste buffer was filled: {buffers}; screen:\n{self.last}"


@pytest.fixture
def pane(tmp_path: Path) -> Iterator[Pane]:
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.fail("tmux is not installed: this end-to-end test needs it (apt-get install tmux)")
    name = f"factory-text-{uuid.uuid4().hex[:10]}"
    term = Pane(tmux, name, name)
    try:
        yield term
    finally:
        term.kill()


def _command(root: Path, tmp_path: Path, *args: str) -> str:
    env = _env(tmp_path)
    assignments = " ".join(
        f"{k}={shlex.quote(env[k])}"
        for k in ("PYTHONPATH", "LITELLM_LOCAL_MODEL_COST_MAP", "XDG_CONFIG_HOME")
    )
    factory = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "console.cli", *args))
    return (
        f"cd {shlex.quote(str(root))} && env {assignments} {factory}; "
        f'echo "{EXIT_MARK}$?]"; sleep 600'
    )


def _exit_status(screen: str) -> str | None:
    found = re.search(re.escape(EXIT_MARK) + r"(\d+)\]", screen)
    return found.group(1) if found else None


def _frame_intact(screen: str, where: str) -> None:
    """The console's own lines are where they belong: the header on top, the footer below."""
    lines = screen.rstrip("\n").splitlines()
    assert lines and " CANCELLED " in lines[0] and "agents 1 active/2" in lines[0], (
        f"{where}: the header line is not intact:\n{screen}"
    )
    assert "Help" in footer(screen) and "Quit" in footer(screen), (
        f"{where}: the footer line is not intact:\n{screen}"
    )


@pytest.mark.slow
def test_console_in_a_real_terminal(hostile_root: Path, tmp_path: Path, pane: Pane) -> None:
    pane.start(_command(hostile_root, tmp_path, "console", "--root", str(hostile_root)))

    def step(keys: tuple[str, ...], where: str, *places: str, timeout: float = 15) -> str:
        if keys:
            pane.keys(*keys)
        screen = pane.wait_for(
            lambda s: (
                all(shown(p) in s for p in places) or _exit_status(s) is not None or pane.touched()
            ),
            timeout,
            f"{places} on screen in the {where}",
        )
        assert _exit_status(screen) is None, f"the console exited in the {where}:\n{screen}"
        time.sleep(0.3)  # whatever else this screen writes
        screen = pane.screen()
        pane.assert_untouched(where)
        _frame_intact(screen, where)
        return screen

    step((), "specs pane", "specname", "spec", "lint", timeout=60)
    step(("2",), "agents pane", "t", "ask", "opt")
    step(("3",), "conflicts pane", "file", "path")
    step(("Down",), "conflicts pane with hunks", "hunk")
    step(("4",), "queue pane", "rej", "risk")
    step(("Home", "v"), "diff view", "diff0")
    # Escape closes a dialog; a key right after it would read as alt+key: wait for it to go.
    pane.keys("Escape")
    pane.wait_for(lambda s: "esc closes" not in s, 10, "the diff view to close")
    step(("5",), "inbox", "ask", "task", "risk")
    step(("Home", "a"), "answer dialog", "ask", "opt")
    pane.keys("Escape")
    pane.wait_for(lambda s: " asks: " not in s, 10, "the answer dialog to close")
    pane.keys("q")
    done = pane.wait_for(lambda s: _exit_status(s) is not None, 30, "the console to exit")
    assert _exit_status(done) == "0", f"the console exited badly:\n{done}"
    pane.assert_untouched("after the console")


@pytest.mark.slow
def test_status_in_a_real_terminal(hostile_root: Path, tmp_path: Path, pane: Pane) -> None:
    pane.start(_command(hostile_root, tmp_path, "status", "--root", str(hostile_root)))
    done = pane.wait_for(lambda s: _exit_status(s) is not None, 30, "factory status to end")
    pane.assert_untouched("factory status")
    assert _exit_status(done) == "0", f"factory status failed:\n{done}"
    assert shown("rej") in done, done
    # Nothing cleared the screen or moved the cursor: the first lines are still the first.
    assert done.startswith("daemon: not running (`factory up` starts one)\n"
                           "run run-evil: cancelled"), f"the output is not intact:\n{done}"
    assert "reason" in done, f"the tables are not intact:\n{done}"


def _hostile_run(root: Path) -> None:
    """The demo's cli spec, played by an agent whose summary is hostile and whose tests print
    a hostile 'FAILED' line (the tests gate names it in the rejection reason) and fail."""
    replay = root / ".factory" / "replay" / "demo.json"
    trajectory = json.loads(replay.read_text())
    line = f"FAILED x{ESC}]0;PWNED-reason{ST}{ESC}]52;c;{_b64('CLIP reason')}{ST}{ESC}[2J[/]::t"
    test = (
        "import unittest\n\n"
        f"print({line!r})\n\n\n"
        "class Evil(unittest.TestCase):\n"
        "    def test_evil(self) -> None:\n"
        f"        self.fail({hostile('assert')!r})\n"
    )
    turns = trajectory["agents"]["cli/main"]
    turns[:] = [
        turns[0],
        {"content": hostile("content"), "tool_calls": [
            {"name": "write_file", "arguments": {"path": "tests/test_evil.py", "content": test}}],
         "usage": {"prompt_tokens": 10, "completion_tokens": 10}},
        {"content": None, "tool_calls": [
            {"name": "finish", "arguments": {"summary": hostile("summary")}}],
         "usage": {"prompt_tokens": 10, "completion_tokens": 10}},
    ]  # fmt: skip
    trajectory["latency_ms"] = 0
    replay.write_text(json.dumps(trajectory))
    # Only the tests judge it here (the demo's own gates would refuse tests/test_evil.py,
    # outside the spec's Boundaries, before its tests print anything).
    config = root / ".factory.toml"
    text = config.read_text()
    assert re.search(r"(?m)^gates = \[.*\]$", text), "the demo names its gates"
    config.write_text(re.sub(r"(?m)^gates = \[.*\]$", "gates = []", text))


@pytest.mark.slow
def test_headless_run_in_a_real_terminal(tmp_path: Path, pane: Pane) -> None:
    root = demo.build(tmp_path / "demo", "none")
    _hostile_run(root)
    pane.start(_command(root, tmp_path, "run", "--headless", "--root", str(root), "cli"))
    done = pane.wait_for(lambda s: _exit_status(s) is not None, 90, "factory run to end")
    pane.assert_untouched("factory run --headless")
    # The agent's summary and the hostile rejection reason were printed, made inert, and the
    # run's own summary follows them intact.
    assert shown("summary") in done, done
    assert "␛]0;PWNED-reason" in done, done
    assert done.startswith("WARNING: sandbox backend is 'none'"), f"not intact:\n{done}"
    # Its branch was rejected: the run says failed and exits 1.
    assert re.search(r"Run \S+: failed", done) and "rejected cli/main: tests" in done, done
    assert _exit_status(done) == "1", done
