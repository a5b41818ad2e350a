"""A pane's home widget (its list or table) keeps the focus through a late Hide.

Switching panes hides the old one and shows the new one; Textual tells a hidden widget by a
Hide message, and a focused widget that gets one gives its focus to a sibling. With keys
typed fast ("2" then "1"), the Hide from leaving the specs pane reached its list after the
second key had shown the pane and focused the list again, and the focus went to the spec
editor beside it: the next key was typed into the spec. A Hide that arrives while the
widget is shown again is stale, and is ignored.
"""

from __future__ import annotations

from textual import events
from textual.widget import Widget


def shown(widget: Widget) -> bool:
    """Whether the widget and every container above it is displayed now."""
    node: object = widget
    while isinstance(node, Widget) and not node.is_dom_root:
        if not node.display:
            return False
        node = node.parent
    return True


class KeepsFocusWhenShown:
    """Mixed into a pane's home widget, before its Textual class (a plain mixin: a Widget
    subclass here would come between the widget and its own styles)."""

    def _on_hide(self, event: events.Hide) -> None:
        assert isinstance(self, Widget)
        # Textual calls every class's handler in turn (Widget's blurs); preventing the
        # default stops the ones after this class.
        if self.has_focus and shown(self):
            event.prevent_default()  # a Hide from before the pane was shown again
