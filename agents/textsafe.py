"""The one sanitizer for untrusted text on its way to a terminal or a log.

Agents' messages and summaries, tool and test output, file names and rejection reasons are
written by a model or by code it wrote. Raw, they reach the person's terminal: an ESC starts
a sequence that sets the window title (OSC 0/2), fills the clipboard (OSC 52) or moves the
cursor and clears the screen (CSI); a carriage return or a bidi override makes a line read
differently from what it holds. The store keeps every text exactly as it was produced (it is
the record); whatever shows it passes it through here first.

Every control character becomes a visible placeholder rather than vanishing, so a person
sees that something was there: C0 controls as their Unicode control pictures (ESC as `␛`,
BEL as `␇`), the rest as `<U+XXXX>`. With no ESC and no C1 character left, what followed an
escape is inert text. A scan that finds nothing returns the text itself, so the common case
costs one regular-expression search.
"""

from __future__ import annotations

import re

# C0 but tab and newline; DEL; C1 (U+009B is a one-character CSI to some terminals); the
# bidi embeddings, overrides, isolates and marks; the line and paragraph separators.
_UNSAFE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
_MULTI = re.compile(f"[{_UNSAFE}]")
_LINE = re.compile(f"[{_UNSAFE}\t\n]")
_CRLF = re.compile("\r\n")


def _picture(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == 0x09:
        return " "
    if code < 0x20:
        return chr(0x2400 + code)  # the control pictures block: ␀ … ␟
    if code == 0x7F:
        return "\u2421"  # ␡
    return f"<U+{code:04X}>"


def clean(text: str) -> str:
    """Text safe to show over several lines: newlines and tabs stay, Windows line ends
    become plain newlines, every other control character a visible placeholder."""
    if _MULTI.search(text) is None:
        return text
    return _MULTI.sub(_picture, _CRLF.sub("\n", text))


def clean_line(text: str) -> str:
    """Text safe to show on one line (a table cell, a file name, a log line): newlines
    become `␊` as well, and tabs spaces."""
    if _LINE.search(text) is None:
        return text
    return _LINE.sub(_picture, text)


def clean_any(value: object) -> object:
    """A JSON-like value with every string in it cleaned (tool arguments, say)."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean_line(str(k)): clean_any(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_any(v) for v in value]
    return value
