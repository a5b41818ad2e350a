"""Spec editor pane: the specs/ files, the text with Markdown highlighting, and the lint's
findings beside it (select one to jump to its line)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import Label, OptionList, TextArea
from textual.widgets.option_list import Option

from agents.textsafe import clean, clean_line
from console.widgets.editor import SpecEditor
from console.widgets.home import KeepsFocusWhenShown

if TYPE_CHECKING:
    from agents.specs import LintFinding
    from console.client import SpecFile


LOCKED = "read-only: this spec holds control characters (shown as ␛ and the like); edit it " \
    "outside the console"


NO_SPECS = "No specs yet: a spec is a Markdown file in specs/ (see specs/README.md)"



class SpecList(KeepsFocusWhenShown, OptionList):
    """The specs pane's list of spec files (its home: where the focus rests)."""

class SpecsPane(Horizontal):
    """Side by side when there is room; at 80 columns or so the list, the editor and the
    findings are stacked, so that the editor keeps the whole width."""

    DEFAULT_CSS = """
    SpecsPane #spec-list { width: 26; }
    SpecsPane #spec-editor { width: 1fr; }
    SpecsPane #spec-side { width: 48; }
    SpecsPane #lint { height: 1fr; }
    SpecsPane Label { color: $text-muted; padding: 0 1; text-wrap: nowrap;
                      text-overflow: ellipsis; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.files: list[SpecFile] = []
        self.current: SpecFile | None = None
        self.saved_text: str = ""
        self.findings: list[LintFinding] = []
        # The open spec holds control characters: shown made visible, and read-only.
        self.locked = False

    def compose(self) -> ComposeResult:
        yield SpecList(id="spec-list")
        yield SpecEditor(id="spec-editor")
        with Vertical(id="spec-side"):
            yield Label("lint", id="lint-title")
            yield OptionList(id="lint")

    @property
    def editor(self) -> TextArea:
        return self.query_one("#spec-editor", TextArea)

    @property
    def dirty(self) -> bool:
        return self.current is not None and not self.locked and \
            self.editor.text != self.saved_text

    def set_files(self, files: list[SpecFile]) -> None:
        self.files = files
        listing = self.query_one("#spec-list", OptionList)
        listing.clear_options()
        # A branch that landed may have named a spec file: plain text, never markup.
        listing.add_options([Option(Content(clean_line(f.path.name)), id=str(f.path))
                             for f in files] or [Option(NO_SPECS, disabled=True)])

    def open(self, path: Path) -> None:
        for spec in self.files:
            if spec.path == path:
                self.current = spec
                # TextArea writes a line's characters to the terminal as they are, and a
                # branch that landed may have changed specs/: a spec with control
                # characters (but tabs and line ends) is shown with them made visible,
                # read-only, so that the placeholders can never be saved over it.
                shown = clean(spec.text)
                self.locked = shown != spec.text.replace("\r\n", "\n")
                self.saved_text = shown if self.locked else spec.text
                self.editor.read_only = self.locked
                self.editor.border_title = LOCKED if self.locked else None
                self.editor.load_text(self.saved_text)
                self.show_findings(spec.findings)
                # The list highlights the open spec: enter there acts on it, not on nothing.
                self.query_one("#spec-list", OptionList).highlighted = self.files.index(spec)
                return

    def saved(self, text: str, findings: list[LintFinding]) -> None:
        assert self.current is not None
        self.current.text = text
        self.current.findings = findings
        self.saved_text = text
        self.show_findings(findings)

    def show_findings(self, findings: list[LintFinding]) -> None:
        self.findings = findings
        lint = self.query_one("#lint", OptionList)
        lint.clear_options()
        # Findings quote the spec's text: plain text, made inert.
        lint.add_options([Option(Content(clean_line(
            f"{f.line:>4} {f.severity[0].upper()} {f.code} {f.message}"))) for f in findings]
            or [Option("no findings", disabled=True)])
        self.query_one("#lint-title", Label).update(
            f"lint: score {_score(findings)} · {len(findings)} finding(s)")

    def jump_to(self, index: int) -> None:
        if 0 <= index < len(self.findings):
            line = max(0, self.findings[index].line - 1)
            self.editor.move_cursor((line, 0), center=True)
            self.editor.focus()


def _score(findings: list[LintFinding]) -> int:
    from agents.specs import lint_score  # pydantic: loaded when a spec is shown, not at start

    return lint_score(findings)
