"""End to end at 80x24 (TERM=xterm-256color): the real `factory demo` in a real terminal the
size of a default one, driven by keys the way a first-time user would.

It opens a spec, edits and saves it, switches panes with the number keys (the spec is not
typed into), filters the agents and leaves the filter with Escape (the next keys are keys),
answers the agent's question with its whole text on screen, approves an entry and quits
(without the unsaved-changes question: no key went into the editor). Helpers come from
test_tmux_e2e; every wait polls the screen and shows the last one when it times out.
"""

from __future__ import annotations

import re
import shlex
import shutil
import time
import uuid
from pathlib import Path

import pytest

from tests.console.test_tmux_e2e import (
    ADDED,
    EXIT_MARK,
    INBOX_HEADING,
    Terminal,
    _factory_command,
    approve_in_inbox,
    editor_focused,
    header,
    keys_are_keys,
    odd_one_out,
    table_rows,
    wait_settled,
    wait_until,
)

pytestmark = pytest.mark.slow

WIDTH, HEIGHT = 80, 24
QUESTION = ("Should max_length count the whole slug, hyphens included, or only its letters "
            "and digits?")
BORDERS = "▊▌▎▐▕▏│┃|▔▁"


def words(screen: str) -> str:
    """The screen's text as one line of words, borders dropped: wrapped text reads whole."""
    return " ".join(screen.translate({ord(c): " " for c in BORDERS}).split())


def cursor_line(term: Terminal) -> int | None:
    """The spec editor's cursor line number (its gutter is drawn apart), from whichever
    numbered lines the stacked editor shows."""
    numbered = [(index, int(m.group(1))) for index, line in enumerate(term.screen().splitlines())
                if (m := re.match(r"▊ +(\d+)  ", line))]
    at = odd_one_out(term, [index for index, _ in numbered], 2)
    return numbered[at][1] if at is not None and numbered else None


def test_first_contact_at_80x24(tmp_path: Path) -> None:
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.fail("tmux is not installed: this end-to-end test needs it")
    name = f"factory-small-{uuid.uuid4().hex[:10]}"
    demo = tmp_path / "demo"
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
           "TERM": "xterm-256color"}
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    command = (f"cd {shlex.quote(str(tmp_path))} && env {assignments} "
               f"{shlex.quote(_factory_command())} demo {shlex.quote(str(demo))} "
               f"--sandbox none; echo \"{EXIT_MARK}$?]\"; sleep 600")
    term = Terminal(tmux, name, name)
    try:
        term.start(command, WIDTH, HEIGHT)
        first = term.wait_for(lambda s: header(s).get("tasks", 0) > 0, 120,
                              "the header's counts")
        # The header keeps its counts and the money at 80 columns.
        assert re.search(r"\$\d+\.\d\d", first.splitlines()[0]), first

        # Open cli.md from the list (it is highlighted), edit it, save.
        spec = demo / "specs" / "cli.md"
        original = spec.read_text()
        assert original.endswith("\n")  # so the editor's last line is empty
        term.wait_for("cli.md", 10)
        term.keys("1")
        term.keys("Enter")
        term.wait_for(editor_focused, 10, "the spec editor to have the focus")
        term.wait_for(lambda s: " 1  +++" in s, 10, "cli.md in the editor")
        last = original.count("\n") + 1
        term.keys("PageDown", "PageDown", "PageDown", "End")
        wait_until(term, lambda: cursor_line(term), last, "the editor's cursor line")
        term.type(ADDED)
        term.wait_for(ADDED, 10, f"{ADDED!r} typed")
        term.keys("C-s")
        term.wait_for("saved cli.md", 10, "the 'saved cli.md' notification")
        expected = original + ADDED
        assert spec.read_text() == expected

        # Escape, then the number keys move between panes; back on the specs pane the text
        # is what was saved (nothing typed into it).
        term.keys("Escape")
        term.wait_for(keys_are_keys, 10, "the focus to leave the editor")
        for key, shows in (("2", "filter:"), ("3", "open branches"), ("4", "entry"),
                           ("5", INBOX_HEADING), ("1", "cli.md")):
            term.keys(key)
            term.wait_for(shows, 10, f"pane {key}")
        term.keys("2", "1")
        screen = term.wait_for(lambda s: keys_are_keys(s) and "cli.md" in s and ADDED in s,
                               10, "the specs pane with keys as keys")
        assert ADDED in screen and not re.search(rf"{re.escape(ADDED)}\S", screen), screen

        # Agents: filter, leave with Escape; ? then opens the help, it is not typed.
        term.keys("2")
        term.wait_for("filter:", 10)
        term.keys("/")
        term.wait_for(lambda s: not keys_are_keys(s), 10, "the filter to take the focus")
        for char in "slug":  # one key at a time, each seen, as a person types
            term.type(char)
            time.sleep(0.1)
        term.wait_for(lambda s: "slug" in s and "cli.main" not in s, 10, "the filtered table")
        term.keys("Escape")
        term.wait_for(keys_are_keys, 10, "the focus back on the agents table")
        term.keys("?")
        term.wait_for("Factory console", 10, "the help")
        term.keys("Escape")
        term.wait_for(lambda s: "Factory console" not in s, 10, "the help to close")
        screen = term.screen()
        assert "slug?" not in screen and "slug" in screen, screen

        # Inbox: the question is shown whole under the table, and again in the dialog.
        term.keys("5")
        term.wait_for(lambda s: any("question" in line for _, line in
                                    table_rows(s, INBOX_HEADING)), 90,
                      "the demo agent's question in the inbox")
        term.keys("Home")
        term.wait_for(lambda s: QUESTION in words(s), 10, "the whole question under the table")
        term.keys("Enter")  # the first Enter answers the highlighted question
        term.wait_for(lambda s: "Answer" in s and "Cancel" in s, 10, "the answer dialog")
        dialog = term.screen()
        assert QUESTION in words(dialog), dialog
        term.type("1")
        term.keys("Enter")
        term.wait_for(lambda s: "questions" not in header(s), 20,
                      "the header to show no pending question")

        # Approve one entry once the run has settled.
        settled = wait_settled(term, 90)
        waiting = settled["approvals"]
        approve_in_inbox(term, 0, waiting)

        # q quits at once: nothing was typed into the spec after it was saved.
        term.keys("q")
        done = term.wait_for(EXIT_MARK, 30, "the factory command to exit")
        status = re.search(re.escape(EXIT_MARK) + r"(\d+)\]", done)
        assert status is not None and status.group(1) == "0", done
        assert spec.read_text() == expected
    finally:
        term.kill()
