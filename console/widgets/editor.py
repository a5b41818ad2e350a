"""The spec editor: a TextArea that takes its colours from the console's theme.

`TextArea.code_editor` brings its own dark theme (monokai), so a light console had a dark
editor in it. This one draws its background, gutter, cursor and selection from the app's CSS
variables (the `css` way) and builds its syntax colours from the theme's own colours, again
each time the theme changes (Posting's editor does the same). Tab moves the focus on and
Escape leaves the editor, so a pane's keys are never typed into a spec by accident.
"""

from __future__ import annotations

from rich.style import Style
from textual.theme import Theme
from textual.widgets import TextArea

try:  # the text area's theme type lives in a private module in Textual 8
    from textual._text_area_theme import TextAreaTheme
except ImportError:  # pragma: no cover - a later Textual moved it
    TextAreaTheme = None  # type: ignore[assignment,misc]

THEME = "factory"


def syntax_theme(theme: Theme) -> object | None:
    """Markdown's parts in the theme's colours; the rest (background, cursor) from CSS."""
    if TextAreaTheme is None:
        return None
    primary, secondary = theme.primary, theme.secondary or theme.primary
    accent, muted = theme.accent or theme.primary, theme.foreground or "default"
    return TextAreaTheme(name=THEME, syntax_styles={
        "heading": Style(color=primary, bold=True),
        "heading.marker": Style(color=secondary),
        "bold": Style(bold=True),
        "italic": Style(italic=True),
        "strikethrough": Style(strike=True),
        "link.label": Style(color=secondary),
        "link.uri": Style(color=secondary, underline=True),
        "list.marker": Style(color=accent),
        "inline_code": Style(color=accent),
        "info_string": Style(color=accent, italic=True),
        "punctuation.special": Style(color=muted),
        "punctuation.delimiter": Style(color=muted),
        "punctuation.bracket": Style(color=muted),
    })


class SpecEditor(TextArea):
    DEFAULT_CSS = """
    SpecEditor { background: $surface; color: $foreground; border: tall $border-blurred; }
    SpecEditor:focus { border: tall $primary; }
    /* The cursor's line stands out in any theme, also where a terminal has 256 colours. */
    SpecEditor .text-area--cursor-gutter { background: $primary 45%; color: $foreground;
                                           text-style: bold; }
    SpecEditor .text-area--cursor-line { background: $primary 12%; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", language="markdown", id=id, soft_wrap=True,
                         tab_behavior="focus", show_line_numbers=True, theme="css",
                         placeholder="No spec open. Pick one in the list (enter opens it); "
                                     "a spec is a Markdown file in specs/.")

    def on_mount(self) -> None:
        self._follow(self.app.current_theme)
        self.app.theme_changed_signal.subscribe(self, self._follow)

    def _follow(self, theme: Theme) -> None:
        made = syntax_theme(theme)
        if made is None:
            return
        self.register_theme(made)  # type: ignore[arg-type]
        self.theme = THEME
