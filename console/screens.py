"""Modal screens: help, a reason for a rejection, a diff, and quitting with unsaved work."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, TextArea

from agents.textsafe import clean, clean_line

HELP = """\
# Factory console

| key | what |
|---|---|
| 1–5 | specs · agents · conflicts · queue · inbox |
| ctrl+p | command palette (every action, themes) |
| ctrl+s | save the spec (spec editor) |
| ctrl+r | run or re-plan the open spec |
| p | pause / follow the agent timeline |
| / | filter agents (`state:running spec:stats text`) |
| a | approve the selected (inbox: the marked) entries; answer the selected question |
| x | reject the selected entry, with a reason |
| [ / ] | move the selected queue entry up / down |
| r | retry a rejected entry |
| v | view the entry's diff |
| space | mark an inbox entry for batch approval |
| enter | conflicts: show the pair's hunks |
| ? | this help |
| q | quit (asks if a spec has unsaved changes) |

The mouse works too: click tabs, rows and buttons.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 72; max-width: 100%; height: auto; max-height: 100%;
                            border: thick $primary; background: $surface; padding: 0 1; }
    HelpScreen Markdown { height: auto; max-height: 80vh; overflow-y: auto; }
    """

    def compose(self) -> ComposeResult:
        from textual.widgets import Markdown  # markdown-it and friends: only when asked

        with Vertical():
            yield Markdown(HELP)
            yield Button("Close", id="close")

    def on_button_pressed(self) -> None:
        self.dismiss()


class ReasonScreen(ModalScreen[str | None]):
    """Ask for a line of text that may not be empty: why a rejection, or an agent's answer.

    The title and the choices quote an agent (its question, its options): shown whole,
    wrapped, and scrolled when longer than the screen; plain text, made inert, never markup.
    The input keeps the focus, so the first Enter sends what was typed."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    ReasonScreen { align: center middle; }
    ReasonScreen > Vertical { width: 76; max-width: 100%; height: auto; max-height: 100%;
                              border: thick $error; background: $surface; padding: 0 1; }
    ReasonScreen #question { height: auto; max-height: 60vh; }
    ReasonScreen #question Static { width: 1fr; color: $foreground; }
    ReasonScreen Horizontal { height: auto; }
    """

    def __init__(self, title: str, *, placeholder: str = "reason (required)",
                 ok: str = "Reject", empty: str = "a rejection needs a reason",
                 choices: list[str] | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.placeholder = placeholder
        self.ok = ok
        self.empty = empty
        self.choices = choices or []

    def compose(self) -> ComposeResult:
        with Vertical():
            with VerticalScroll(id="question", can_focus=False):
                yield Static(clean(self.title_text), markup=False, id="question-text")
                for number, choice in enumerate(self.choices, start=1):
                    yield Static(f"  {number}. {clean(choice)}", markup=False)
            yield Input(placeholder=self.placeholder, id="reason")
            with Horizontal():
                yield Button(self.ok, variant="error" if self.ok == "Reject" else "primary",
                             id="ok")
                yield Button("Cancel", id="cancel")

    def on_input_submitted(self) -> None:
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self._submit()
        else:
            self.dismiss(None)

    def _submit(self) -> None:
        reason = self.query_one("#reason", Input).value.strip()
        if not reason:
            self.notify(self.empty, severity="warning")
            return
        if reason.isdigit() and 1 <= int(reason) <= len(self.choices):
            reason = self.choices[int(reason) - 1]  # an option picked by its number
        self.dismiss(reason)

    def action_cancel(self) -> None:
        self.dismiss(None)


class DiffScreen(ModalScreen[None]):
    """A branch's diff: text an agent wrote, made inert (TextArea writes it as it is)."""

    BINDINGS = [Binding("escape,q", "dismiss", "Close")]
    DEFAULT_CSS = """
    DiffScreen { align: center middle; }
    DiffScreen > Vertical { width: 95%; height: 90%; border: thick $primary;
                            background: $surface; }
    DiffScreen.-narrow > Vertical { width: 100%; height: 100%; }
    """

    def __init__(self, title: str, diff: str) -> None:
        super().__init__()
        self.title_text = title
        self.diff = diff

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(clean_line(self.title_text), markup=False)
            yield TextArea(clean(self.diff), read_only=True, id="diff", show_line_numbers=True)


class QuitScreen(ModalScreen[bool]):
    BINDINGS = [Binding("escape", "stay", "Stay")]
    DEFAULT_CSS = """
    QuitScreen { align: center middle; }
    QuitScreen > Vertical { width: 60; max-width: 100%; height: auto; border: thick $warning;
                            background: $surface; padding: 1 2; }
    QuitScreen Horizontal { height: auto; }
    """

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("The spec has unsaved changes. Quit and lose them?")
            with Horizontal():
                yield Button("Quit without saving", variant="error", id="quit")
                yield Button("Stay", variant="primary", id="stay")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "quit")

    def action_stay(self) -> None:
        self.dismiss(False)
