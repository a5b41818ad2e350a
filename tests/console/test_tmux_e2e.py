"""End to end: the real `factory demo` command in a real terminal (tmux), driven by keys.

The test starts `factory demo PATH` in its own tmux server, waits for the run's branches to
queue for approval, edits and saves a spec in the editor, answers an agent's question and
approves an entry in the inbox, watches it land (or be rejected by a gate) in the queue pane
and quits. Every wait polls the
screen (`tmux capture-pane`), and a wait that times out shows the last screen it saw.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

WIDTH, HEIGHT = 160, 48
POLL = 0.2
EXIT_MARK = "[factory exited with status "
ADDED = "- Added from tmux."
SGR = re.compile(r"\x1b\[([0-9;:]*)m")


class Terminal:
    """One tmux server (its own socket) running one session: keys in, plain screens out."""

    def __init__(self, tmux: str, socket: str, session: str) -> None:
        self.tmux = tmux
        self.socket = socket
        self.session = session
        self.last = ""
        self.socket_path: str | None = None

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
        return subprocess.run([self.tmux, "-L", self.socket, *args], capture_output=True,
                              text=True, check=check, timeout=30, env=env)

    def start(self, command: str, width: int = WIDTH, height: int = HEIGHT) -> None:
        self.run("-f", os.devnull, "new-session", "-d", "-s", self.session,
                 "-x", str(width), "-y", str(height), command)
        self.socket_path = self.run("display-message", "-p", "#{socket_path}").stdout.strip()

    def keys(self, *keys: str) -> None:
        """Key names as tmux spells them (C-s, Escape, Home, Down...)."""
        self.run("send-keys", "-t", self.session, *keys)

    def type(self, text: str) -> None:
        """Literal text, each character a key press."""
        self.run("send-keys", "-t", self.session, "-l", "--", text)

    def screen(self, escapes: bool = False) -> str:
        args = ["capture-pane", "-p", "-t", self.session] + (["-e"] if escapes else [])
        done = self.run(*args, check=False)
        if done.returncode != 0:
            raise AssertionError(f"tmux capture-pane failed: {done.stderr.strip()}\n"
                                 f"last screen:\n{self.last}")
        if not escapes:
            self.last = done.stdout
        return done.stdout

    def wait_for(self, what: str | Callable[[str], object], timeout: float,
                 describe: str | None = None) -> str:
        """Poll the screen until it contains `what` (or `what(screen)` is truthy)."""
        test = (lambda s: what in s) if isinstance(what, str) else what
        label = describe or (repr(what) if isinstance(what, str) else "the condition")
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if test(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout:.0f}s for {label}; last screen:\n"
                                     f"{screen}")
            time.sleep(POLL)

    def kill(self) -> None:
        """End this test's tmux server (and the app in it) and remove its socket."""
        self.run("kill-server", check=False)
        if self.socket_path:
            Path(self.socket_path).unlink(missing_ok=True)


# -- reading the screen ------------------------------------------------------------------------


def header(screen: str) -> dict[str, int]:
    """The numbers on the header line, in its full or its short form (`agents 1/5`, `✓2`,
    `appr 3`, `ask 1`); approvals is absent, so 0, when nothing waits."""
    line = screen.splitlines()[0] if screen else ""
    found: dict[str, int] = {}
    for name, pattern in (("active", r"agents (\d+)(?: active)?/"),
                          ("agents", r"agents \d+(?: active)?/(\d+)"),
                          ("done", r"tasks (\d+)/"), ("tasks", r"tasks \d+/(\d+)"),
                          ("landed", r"(?:landed |✓)(\d+)"), ("rejected", r"(?:rejected |✗)(\d+)"),
                          ("approvals", r"(?:approvals|appr) (\d+)"),
                          ("questions", r"(?:questions|ask) (\d+)")):
        match = re.search(pattern, line)
        if match:
            found[name] = int(match.group(1))
    if "tasks" in found:  # the line is drawn; a missing approvals count means none wait
        found.setdefault("approvals", 0)
    return found


def footer(screen: str) -> str:
    lines = screen.rstrip("\n").splitlines()
    return lines[-1] if lines else ""


def editor_focused(screen: str) -> bool:
    """The footer drops the keys that are printable (q Quit, ? Help) while a text editor holds
    the focus (it takes them itself) and shows the spec keys only on the specs pane."""
    line = footer(screen)
    return "^s Save" in line and "q Quit" not in line


def keys_are_keys(screen: str) -> bool:
    """No editor or input has the focus: q quits, it is not typed."""
    return "q Quit" in footer(screen)


def table_rows(screen: str, heading: str) -> list[tuple[int, str]]:
    """(screen line index, line) of the table rows under the header line starting `heading`
    (after the gutter of marks, if the table has one)."""
    lines = screen.splitlines()
    for at, line in enumerate(lines):
        if line.lstrip().startswith(heading.strip()):
            rows = []
            for index in range(at + 1, len(lines)):
                if not lines[index].strip() or lines[index].lstrip().startswith("▎"):
                    break
                rows.append((index, lines[index]))
            return rows
    return []


INBOX_HEADING = "risk"
QUEUE_HEADING = "   # entry"


def heading_line(screen: str, heading: str) -> str:
    return next((line for line in screen.splitlines()
                 if line.lstrip().startswith(heading.strip())), "")


def cell(line: str, head: str, name: str) -> str:
    """The text of column `name` on a row: from where its title starts on the header line to
    where the next title starts (the columns the width has room for change)."""
    at = head.index(name)
    after = re.search(r" \S", head[at + len(name):])
    end = at + len(name) + after.start() + 1 if after else len(line)
    return line[at:end].strip()


def inbox_keys(screen: str) -> list[str]:
    head = heading_line(screen, INBOX_HEADING)
    return [cell(line, head, "entry") for _, line in table_rows(screen, INBOX_HEADING)]


def queue_state(screen: str, key: str) -> str | None:
    head = heading_line(screen, QUEUE_HEADING)
    for _, line in table_rows(screen, QUEUE_HEADING):
        if cell(line, head, "entry") == key:
            return cell(line, head, "state")
    return None


def backgrounds_at(ansi: str, column: int) -> list[str | None]:
    """The background colour of each screen line at `column` (tmux carries the attributes
    from one line to the next, so the whole capture is read in order)."""
    found: list[str | None] = []
    bg: str | None = None
    for line in ansi.split("\n"):
        at: str | None = None
        seen = 0  # visible characters so far on this line
        pos = 0
        for match in [*SGR.finditer(line), None]:
            text = line[pos:match.start() if match else len(line)]
            if seen <= column < seen + len(text):
                at = bg
            seen += len(text)
            if match is None:
                break
            pos = match.end()
            params = re.split("[;:]", match.group(1))
            i = 0
            while i < len(params):
                p = params[i]
                if p in ("", "0", "49"):
                    bg = None
                elif p in ("38", "48"):
                    width = 3 if params[i + 1:i + 2] == ["5"] else 5
                    if p == "48":
                        bg = ";".join(params[i:i + width])
                    i += width - 1
                elif p.isdigit() and (40 <= int(p) <= 47 or 100 <= int(p) <= 107):
                    bg = p
                i += 1
        found.append(at)
    return found


def odd_one_out(term: Terminal, rows: list[int], column: int) -> int | None:
    """Which of these screen lines is drawn with a background of its own at `column` (a
    cursor); None unless exactly one is."""
    if len(rows) < 2:
        return 0 if rows else None
    backgrounds = backgrounds_at(term.screen(escapes=True), column)
    if len(backgrounds) <= max(rows):
        return None
    bgs = [backgrounds[index] for index in rows]
    common, _ = Counter(bgs).most_common(1)[0]
    odd = [i for i, bg in enumerate(bgs) if bg != common]
    return odd[0] if len(odd) == 1 else None


def wait_until(term: Terminal, read: Callable[[], object], want: object, what: str,
               timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (got := read()) != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f}s for {what} to be {want!r}, it is "
                                 f"{got!r}; last screen:\n{term.last}")
        time.sleep(POLL)


def inbox_cursor(term: Terminal) -> int | None:
    """Index (in the inbox) of the row drawn with the cursor's background."""
    rows = [index for index, _ in table_rows(term.screen(), INBOX_HEADING)]
    return odd_one_out(term, rows, 0)


def editor_cursor_line(term: Terminal) -> int | None:
    """The line number the spec editor's cursor is on: its gutter is drawn apart."""
    lines = term.screen().splitlines()
    first = next((line for line in lines if " 1  +++" in line), None)
    if first is None:
        return None
    gutter = first.rindex("▊", 0, first.index(" 1  +++"))  # the editor's left border
    numbered = [(index, int(m.group(1))) for index, line in enumerate(lines)
                if line[gutter:gutter + 1] == "▊"
                and (m := re.match(r" +(\d+)  ", line[gutter + 1:gutter + 8]))]
    at = odd_one_out(term, [index for index, _ in numbered], gutter + 2)
    return numbered[at][1] if at is not None and numbered else None


def approve_in_inbox(term: Terminal, row: int, waiting: int) -> str:
    """With the inbox open on `waiting` entries, approve the one on `row` with keys; check
    that the header and the inbox lose it. Returns its key."""
    term.wait_for(lambda s: len(inbox_keys(s)) == waiting, 10,
                  f"{waiting} entries in the inbox")
    term.keys("Home")
    wait_until(term, lambda: inbox_cursor(term), 0, "the inbox cursor row")
    for _ in range(row):
        term.keys("Down")
    wait_until(term, lambda: inbox_cursor(term), row, "the inbox cursor row")
    key = inbox_keys(term.screen())[row]
    assert key, f"no entry key on the selected row; screen:\n{term.last}"
    term.keys("a")
    term.wait_for("approved 1 entry", 10)
    after = term.wait_for(lambda s: header(s).get("approvals") == waiting - 1, 10,
                          f"approvals to drop from {waiting} to {waiting - 1}")
    assert key not in inbox_keys(after), f"{key} is still in the inbox:\n{after}"
    return key


def wait_settled(term: Terminal, timeout: float) -> dict[str, int]:
    """Wait until no agent runs and every planned, unfinished task waits for approval, the
    same for a second: nothing will change on its own any more."""
    deadline = time.monotonic() + timeout
    since: float | None = None
    seen: dict[str, int] = {}
    while True:
        now = header(term.screen())
        quiet = (now.get("active") == 0 and now.get("tasks", 0) > 0
                 and now.get("approvals") == now["tasks"] - now.get("done", 0))
        if quiet and now == seen and since is not None:
            if time.monotonic() - since >= 1.0:
                return now
        elif quiet:
            since, seen = time.monotonic(), now
        else:
            since, seen = None, {}
        if time.monotonic() > deadline:
            raise AssertionError(f"the run did not settle with every task awaiting approval in "
                                 f"{timeout:.0f}s; last screen:\n{term.last}")
        time.sleep(POLL)


# -- the test ------------------------------------------------------------------------------------


def _factory_command() -> str:
    exe = Path(sys.executable).parent / "factory"
    if exe.exists():
        return str(exe)
    found = shutil.which("factory")
    if found is None:
        pytest.fail("the `factory` command is not installed next to the test's Python nor on "
                    "PATH (pip install -e .)")
    return found


def test_demo_in_a_real_terminal(tmp_path: Path) -> None:
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.fail("tmux is not installed: this end-to-end test needs it "
                    "(apt-get install tmux, or `make sysdeps`)")
    name = f"factory-e2e-{uuid.uuid4().hex[:10]}"
    demo = tmp_path / "demo"
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    # The app's stderr stays on the terminal (Textual draws through it); after the app the
    # shell prints its exit status and keeps the pane open for the test to read.
    command = (f"cd {shlex.quote(str(tmp_path))} && env {assignments} "
               f"{shlex.quote(_factory_command())} demo {shlex.quote(str(demo))} "
               f"--sandbox none; echo \"{EXIT_MARK}$?]\"; sleep 600")
    term = Terminal(tmux, name, name)
    try:
        term.start(command)

        # The run's agents finish and their branches queue for a person.
        term.wait_for(lambda s: header(s).get("approvals", 0) > 0, 120,
                      "the header to show pending approvals")

        # Specs pane: cli.md is open and highlighted in the list; 1 focuses the list, and
        # Enter there puts the focus in the editor.
        spec = demo / "specs" / "cli.md"
        original = spec.read_text()
        term.wait_for("cli.md", 10)
        term.keys("1")
        term.keys("Enter")
        term.wait_for(editor_focused, 10, "the spec editor to have the focus")
        term.wait_for(lambda s: " 1  +++" in s, 10, "cli.md in the editor")
        # The editor has no ctrl+end: page down past the end of this short spec, then End.
        # Textual runs a navigation key's binding only once the key has bubbled up to the
        # app, while the editor inserts a printable key at once: typing straight after
        # PageDown can land before it (seen under a live run), so wait for the cursor.
        last = original.count("\n") + 1  # the editor's last line (empty after a final \n)
        term.keys("PageDown", "PageDown", "PageDown", "End")
        wait_until(term, lambda: editor_cursor_line(term), last, "the editor's cursor line")
        if not original.endswith("\n"):
            term.keys("Enter")
            last += 1
            wait_until(term, lambda: editor_cursor_line(term), last, "the editor's cursor line")
        term.type(ADDED)
        term.wait_for(lambda s: re.search(rf"▊ +{last}  {re.escape(ADDED)}", s), 10,
                      f"{ADDED!r} typed on line {last}")
        term.keys("Enter")
        wait_until(term, lambda: editor_cursor_line(term), last + 1, "the editor's cursor line")
        assert spec.read_text() == original, "the spec changed on disk before it was saved"
        term.keys("C-s")
        term.wait_for(lambda s: re.search(r"saved cli\.md \(\d+ lint finding", s), 10,
                      "the 'saved cli.md' notification")
        expected = original + ("" if original.endswith("\n") else "\n") + ADDED + "\n"
        assert spec.read_text() == expected

        # Leave the editor (escape goes back to the list), or the pane keys would be typed in.
        term.keys("Escape")
        term.wait_for(keys_are_keys, 10,
                      "the focus to leave the editor (q Quit back in the footer)")

        # Inbox: an agent's question comes first (its agent waits); answer it by picking
        # the first option by its number.
        term.keys("5")
        term.wait_for(INBOX_HEADING, 10)
        term.wait_for(lambda s: any("question" in line for _, line in
                                    table_rows(s, INBOX_HEADING)), 90,
                      "the demo agent's question in the inbox")
        term.keys("Home")
        wait_until(term, lambda: inbox_cursor(term), 0, "the inbox cursor row")
        term.keys("a")
        term.wait_for(" asks: ", 10, "the answer dialog")
        term.type("1")
        term.keys("Enter")
        term.wait_for(lambda s: re.search(r"answered [\w.-]+\.\d", s), 10,
                      "the 'answered <agent>' notification")
        term.wait_for(lambda s: "questions" not in header(s) and "landed" in header(s), 10,
                      "the header to show no pending question")

        # Then, once nothing changes on its own, pick the second entry and approve it.
        settled = wait_settled(term, 90)
        waiting = settled["approvals"]
        key = approve_in_inbox(term, 1 if waiting > 1 else 0, waiting)

        # Queue: the entry goes through its gates, then lands or is rejected.
        term.keys("4")
        term.wait_for(QUEUE_HEADING, 10)
        term.wait_for(lambda s: queue_state(s, key) in ("landed", "rejected"), 60,
                      f"{key} to be landed or rejected in the queue pane")
        before = settled["landed"] + settled["rejected"]
        final = term.wait_for(
            lambda s: header(s).get("landed", 0) + header(s).get("rejected", 0) == before + 1,
            10, "the header to count the decided entry as landed or rejected")
        assert header(final).get("approvals") == waiting - 1, f"screen:\n{final}"

        # q quits: nothing is unsaved, so no question; the command exits cleanly.
        term.keys("q")
        done = term.wait_for(EXIT_MARK, 30, "the factory command to exit")
        status = re.search(re.escape(EXIT_MARK) + r"(\d+)\]", done)
        assert status is not None and status.group(1) == "0", \
            f"factory exited badly; screen:\n{done}"
        assert spec.read_text() == expected
    finally:
        term.kill()
