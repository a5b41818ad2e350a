"""Ringing the person's terminal when the factory wants them (agents/notify.py says when).

Every terminal knows the bell. Some also turn an escape sequence into a desktop
notification, which reaches a person who is in another window: OSC 9 (iTerm2's; WezTerm,
kitty and Ghostty read it too) or OSC 777 (rxvt's `notify`; foot and VTE terminals such as
GNOME Terminal). A terminal that does not know them may print them or misread them, so they
are sent only where the environment names such a terminal, and never inside tmux or screen,
which swallow them (their bell still reaches the outer terminal). Over SSH the variables that
name a terminal are rarely forwarded: a console there rings the bell alone.

A notification's text comes from agents. What goes into an OSC is cleaned (no control
character survives: an ESC or BEL inside would end the sequence and start another), kept to
one short line, and never starts with a digit (`9;4;...` is a progress report to some
terminals).

Several events at once (six entries queued together) ring once: after a ring, the next one
waits until `QUIET_SECONDS` have passed and then says how many came meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

from agents.textsafe import clean_line

QUIET_SECONDS = 3.0
OSC_CHARS = 200
BELL = "\a"
ST = "\x1b\\"  # string terminator: the bell alone is the ring, said once

Osc = Literal["9", "777"]

_OSC9_PROGRAMS = {"iterm.app", "wezterm", "ghostty"}


def desktop_osc(env: Mapping[str, str] | None = None) -> Osc | None:
    """Which desktop-notification sequence this terminal understands, if any is known to."""
    env = os.environ if env is None else env
    term = env.get("TERM", "")
    if env.get("TMUX") or env.get("STY") or term.startswith(("screen", "tmux")):
        return None
    program = env.get("TERM_PROGRAM", "").lower()
    if program in _OSC9_PROGRAMS or env.get("LC_TERMINAL") == "iTerm2" or \
            term in ("xterm-kitty", "xterm-ghostty", "wezterm") or env.get("KITTY_WINDOW_ID"):
        return "9"
    if term.startswith("foot") or env.get("VTE_VERSION"):
        return "777"
    return None


def _field(text: str, limit: int = OSC_CHARS) -> str:
    """Text fit for an OSC's field: one line of printable characters, no `;`."""
    text = " ".join(clean_line(text).replace(";", ",").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def ring_sequence(title: str, message: str, osc: Osc | None) -> str:
    """What to write to the terminal: the bell, and the desktop notification if known."""
    if osc is None:
        return BELL
    title, message = _field(title, 80), _field(message)
    if osc == "9":
        body = _field(f"Factory: {title}" + (f": {message}" if message else ""))
        return f"{BELL}\x1b]9;{body}{ST}"
    return f"{BELL}\x1b]777;notify;{_field(f'Factory: {title}', 80)};{message}{ST}"


class Ringer:
    """Rings an app's terminal for notifications, at most once every QUIET_SECONDS.

    `app` is a Textual App: its driver writes the bytes (as Textual's own bell does) and its
    timer sends a ring held back by the quiet time."""

    def __init__(self, app: Any, env: Mapping[str, str] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        import time

        self.app = app
        self.osc = desktop_osc(env)
        self.clock = clock or time.monotonic
        self.rung = 0
        self._last: float | None = None
        self._held: list[dict[str, Any]] = []

    def __call__(self, note: dict[str, Any]) -> None:
        now = self.clock()
        if self._held:
            self._held.append(note)
            return
        if self._last is not None and now - self._last < QUIET_SECONDS:
            self._held.append(note)
            self.app.set_timer(QUIET_SECONDS - (now - self._last), self._release)
            return
        self._ring([note])

    def _release(self) -> None:
        held, self._held = self._held, []
        if held:
            self._ring(held)

    def _ring(self, notes: list[dict[str, Any]]) -> None:
        self._last = self.clock()
        last = notes[-1]
        title = str(last.get("title", ""))
        if len(notes) > 1:
            title = f"{len(notes)} notifications; latest: {title}"
        data = ring_sequence(title, str(last.get("message", "")), self.osc)
        driver = getattr(self.app, "_driver", None)
        if driver is None or getattr(self.app, "is_headless", False):
            return
        driver.write(data)
        self.rung += 1
