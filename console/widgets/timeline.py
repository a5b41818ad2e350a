"""One agent's story: model turns, tool calls, results (folded), limits and stops.

The widget keeps a capped number of lines; the whole history stays in the store and is read
back when an agent is selected. Pausing stops the view from following without dropping what
arrives meanwhile: held events are written when it resumes.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.geometry import Size
from textual.reactive import Reactive
from textual.widgets import RichLog

from agents.statuses import AgentStatus
from agents.textsafe import clean, clean_line

if TYPE_CHECKING:
    from agents.store.store import StoredEvent

FOLD_LINES = 4
MAX_LINES = 3000
WRITE_SECONDS = 1.0


def _args(arguments: dict[str, Any] | str) -> str:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments,
                                                                   ensure_ascii=False)
    return clean_line(text if len(text) <= 160 else text[:159] + "…")


def _fold(text: str) -> str:
    lines = text.splitlines()
    if len(lines) <= FOLD_LINES:
        return text
    return "\n".join(lines[:FOLD_LINES]) + f"\n… {len(lines) - FOLD_LINES} more lines"


def describe(stored: StoredEvent) -> Text | None:
    """One entry of the timeline. Everything in it but the engine's own words was written by
    a model or a command (messages, tool names, arguments and results, questions, reasons):
    each such piece is made inert as the line is made, that is as it is written, at most
    once a second, not as events arrive."""
    e: Any = stored.event
    clock = time.strftime("%H:%M:%S", time.localtime(stored.ts))
    out = Text(f"{clock} ", style="dim")
    kind = e.kind
    if kind == "agent_started":
        out.append(f"started {clean_line(e.role)} on {clean_line(e.model)}", style="bold")
        if e.resumed_at_step:
            out.append(f" (resumed at step {e.resumed_at_step})")
    elif kind == "agent_turn":
        out.append(f"step {e.step} model ", style="bold cyan")
        out.append(f"{e.tokens_in}+{e.tokens_out} tok ${e.cost_usd:.4f}", style="dim")
        content = (e.message.get("content") or "").strip()
        if content:
            out.append("\n  " + clean(content[:400]))
        for call in e.message.get("tool_calls") or []:
            fn = call.get("function", {})
            out.append(f"\n  → {clean_line(str(fn.get('name')))}"
                       f"({_args(fn.get('arguments', ''))})", style="magenta")
    elif kind == "tool_executed":
        style = "red" if e.is_error else ("green" if e.changed else "")
        out.append(f"step {e.step} {clean_line(e.name)}", style="bold " + style)
        out.append(f" {e.duration * 1000:.0f} ms", style="dim")
        if e.result:  # cleaned first: splitlines would break lines at other controls too
            out.append("\n  " + _fold(clean(e.result)).replace("\n", "\n  "),
                       style="red" if e.is_error else "")
    elif kind == "agent_note":
        out.append(f"note: {clean((e.message.get('content') or '')[:300])}", style="yellow")
    elif kind == "sandbox_limited":
        out.append(f"SANDBOX {e.stop}: {clean_line(e.command[:120])}", style="bold red")
        if e.detail:
            out.append(f" ({clean_line(e.detail)})", style="red")
    elif kind == "limit":
        out.append(f"OVER QUOTA ({e.limit}) in {clean_line(e.tool)}", style="bold red")
        if e.command:
            out.append(f": {clean_line(e.command[:120])}", style="red")
        if e.detail:
            out.append(f"\n  {clean_line(e.detail)}", style="red")
    elif kind == "model_retry":
        out.append(f"model retry {e.attempt} ({e.status or 'error'}) in {e.wait:.1f}s: "
                   f"{clean(e.error[:200])}", style="yellow")
    elif kind == "budget_stop":
        out.append(f"BUDGET STOP: {e.scope} {e.measure} {e.used:g} of {e.limit:g}",
                   style="bold red")
    elif kind == "agent_stuck":
        out.append(f"STUCK: {clean(e.reason)}", style="bold red")
    elif kind == "question_asked":
        out.append(f"step {e.step} ASKS: {clean(e.question[:300])}", style="bold magenta")
        if e.options:
            out.append("\n  options: " + " | ".join(map(clean_line, e.options)),
                       style="magenta")
    elif kind == "question_answered":
        who = "a person" if e.by == "person" else f"the engine ({clean_line(e.why)})"
        out.append(f"answered by {who}: ", style="magenta")
        out.append(clean(e.answer[:300]))
    elif kind == "agent_finished":
        out.append(f"finished: {e.status}", style="bold green" if e.status == AgentStatus.FINISHED
                   else "bold red")
        if e.summary:
            out.append(f" — {clean(e.summary[:300])}")
    else:
        return None
    return out


class Timeline(RichLog):
    DEFAULT_CSS = """
    Timeline { height: 1fr; border-top: solid $panel; overflow-y: scroll; }
    """

    # Each line written grows the virtual size. Widget's own reactive for it asks for a
    # layout, which reflows the whole screen (15 ms with thousands of agents listed), several
    # times a second while the selected agent works; only this widget's scrollbars depend on
    # it, so they are updated here and a layout is asked for only when one appears or goes
    # (the vertical one always shows, so that a new agent's history needs none either).
    virtual_size: Reactive[Size] = Reactive(Size(0, 0), layout=False)

    def watch_virtual_size(self, old: Size, new: Size) -> None:
        width = self.scrollable_content_region.width
        if (old.width > width) != (new.width > width):
            self.refresh(layout=True)
        else:
            self._scroll_update(new)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, max_lines=MAX_LINES, wrap=True, markup=False,
                         auto_scroll=True)
        self.agent_id: str | None = None
        self.paused = False
        self.held: list[StoredEvent] = []
        self.queued: list[StoredEvent] = []
        self.last_id = 0
        self._written_at = 0.0

    def on_mount(self) -> None:
        if self.agent_id is None:  # an empty pane says what would appear here, and how
            self.write(Text("The selected agent's story shows here: its model turns, tool "
                            "calls and results, as they happen (p pauses it).",
                            style="dim italic"))

    def show_history(self, agent_id: str, history: list[StoredEvent]) -> None:
        self.clear()
        self.agent_id = agent_id
        self.held = []
        self.queued = []
        self.last_id = history[-1].id if history else 0
        self.write(Text(f"agent {clean_line(agent_id)}", style="bold underline"))
        self._write(history)

    def add(self, events: list[StoredEvent]) -> None:
        """Follow the agent. Its new events are queued and written by `write_due`, which
        the console calls as it repaints: a write scrolls and so repaints the whole log,
        and doing it in the console's own repaint frame costs no frame of its own."""
        fresh = [e for e in events if e.id > self.last_id and e.event.agent_id == self.agent_id]
        if not fresh:
            return
        self.last_id = fresh[-1].id
        if self.paused:
            self.held.extend(fresh)
        else:
            self.queued.extend(fresh)

    def write_due(self) -> None:
        """Write what is queued, at most every WRITE_SECONDS."""
        if not self.queued or time.monotonic() - self._written_at < WRITE_SECONDS:
            return
        self._written_at = time.monotonic()
        queued, self.queued = self.queued, []
        self._write(queued)

    def _write(self, events: list[StoredEvent]) -> None:
        wrote = False
        for stored in events:
            line = describe(stored)
            if line is not None:
                self.write(line, scroll_end=False)
                wrote = True
        if wrote and self.auto_scroll:  # one scroll, now: not a frame of its own after this one
            self.scroll_end(animate=False, immediate=True, x_axis=False)

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        self.auto_scroll = not paused
        if paused and self.queued:  # not written yet: they come before what is held
            self.held[:0], self.queued = self.queued, []
        if not paused and self.held:
            held, self.held = self.held, []
            self._write(held)  # and scrolls to the end, following again
