"""What a spec id or a task id is: the one definition, checked where ids come in.

Ids are not labels: they become parts of names other programs parse. A task's branch is
``factory/<spec>/<task>``, its worktree folder ``<spec>--<task>`` under .factory/worktrees,
its agent ``<spec>.<task>.<attempt>`` (a planner ``plan:<spec>.<attempt>``), its store key
``<spec>/<task>``, and the agent id (cut to 40 characters) names a cgroup
(``factory-<agent>-<pid>-<n>``) and a docker container. So an id is lowercase ASCII letters
and digits in words joined by single hyphens, at most 48 characters:

- nothing git refuses in a ref component, nothing that is a path separator or ``..``, no
  whitespace or control character (a trailing newline used to slip through ``^...$``), and
  nothing that only looks like an ASCII letter;
- no ``.``, ``/`` or ``--`` inside, so the joined names split back into one spec and one task
  (with ``--`` allowed, spec ``a--b`` + task ``c`` and spec ``a`` + task ``b--c`` would share
  a worktree folder);
- 48 characters keeps ``<spec>--<task>`` at 98 bytes and the ref and an agent id under 120,
  far below the 255-byte limit on a file name (a loose ref is a file) and short enough to
  read in the console's columns; a 49th character is refused at the start, not in ``git``
  halfway through a run.

Check with :func:`id_error` (a message) or :func:`check_id` (raises); models use :data:`Id`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from agents.errors import FactoryError

MAX_LENGTH = 48
EXPECTED = (f"lowercase letters and digits in words joined by single hyphens, at most "
            f"{MAX_LENGTH} characters")

_WORDS = r"[a-z0-9]+(-[a-z0-9]+)*"  # a plain group: the simplest regex any schema reader runs
_ID = re.compile(_WORDS)  # always with fullmatch: `$` would accept a trailing newline
# For a JSON Schema (a model reads it; pydantic-core would run it with Rust regex, where `$`
# is the very end): the same words, anchored. Length is `maxLength` — Rust has no lookahead.
SCHEMA_PATTERN = rf"^{_WORDS}$"

_SHOWN = 60  # characters of a bad value echoed back; the rest is counted, not printed
_LISTED = 3  # distinct bad characters named in a message
_NAMES = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", " ": "a space",
          "\x00": "a NUL byte"}
_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if " " <= ch <= "~" and ch not in "[]":
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 \
        else f"\\U{code:08x}"


def show(value: str) -> str:
    """A quoted form of an untrusted value that is safe to print anywhere.

    Non-ASCII characters are escaped (a Cyrillic small a shows as ``\\u0430``, not as an 'a'),
    control characters too, and square brackets, so the message cannot be taken for Rich
    or Textual markup by the CLI or the console. Long values are cut.
    """
    text = "".join(_escape(ch) for ch in value[:_SHOWN])
    more = f"... ({len(value)} characters)" if len(value) > _SHOWN else ""
    return f"'{text}'{more}"


def _character(ch: str) -> str:
    if ch in _NAMES:
        return _NAMES[ch]
    if "A" <= ch <= "Z":
        return f"an uppercase letter {show(ch)}"
    name = unicodedata.name(ch, "")
    if unicodedata.category(ch).startswith("C"):
        return f"a control character U+{ord(ch):04X}{f' ({name})' if name else ''}"
    if ch.isspace():
        return f"whitespace U+{ord(ch):04X}{f' ({name})' if name else ''}"
    if not ch.isascii():
        return f"a non-ASCII character U+{ord(ch):04X}{f' ({name})' if name else ''}"
    return f"{show(ch)}{f' ({name})' if name else ''}"


def id_problem(value: object) -> str | None:
    """What is wrong with a would-be id, in words ("a newline at position 4"), or None.

    Each kind of problem is named (up to three bad characters, each at its first position),
    not only the first, so that one correction fixes the id.
    """
    if not isinstance(value, str):
        kind = type(value).__name__
        return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}, not a string"
    if value == "":
        return "an empty id"
    if _ID.fullmatch(value) and len(value) <= MAX_LENGTH:
        return None
    found: list[str] = []
    first: dict[str, int] = {}  # each character not allowed, at its first position
    for index, ch in enumerate(value, start=1):
        if not ("a" <= ch <= "z" or "0" <= ch <= "9" or ch == "-"):
            first.setdefault(ch, index)
    for ch, index in list(first.items())[:_LISTED]:
        where = ("" if len(value) == 1 else " (the start)" if index == 1 else
                 " (the end)" if index == len(value) else "")
        found.append(f"{_character(ch)} at position {index}{where}")
    if len(first) > _LISTED:
        found.append(f"{len(first) - _LISTED} more kind(s) of character not allowed")
    if value.startswith("-"):
        found.append("a leading hyphen")
    if value.endswith("-") and len(value) > 1:
        found.append("a trailing hyphen")
    double = value.find("--")
    if double >= 0:
        found.append(f"'--' at position {double + 1} (hyphens join words one at a time)")
    if len(value) > MAX_LENGTH:
        found.append(f"{len(value)} characters")
    if not found:  # unreachable by the checks above; never an empty "found"
        return "a value that is not an id"
    return found[0] if len(found) == 1 else f"{', '.join(found[:-1])} and {found[-1]}"


def id_error(value: object, what: str = "id") -> str | None:
    """The message for a bad id — what it is, what was expected, what was found — or None.

    `what` names the id's role ("spec id", "depends_on entry") so the message says which.
    """
    problem = id_problem(value)
    if problem is None:
        return None
    shown = show(value) if isinstance(value, str) else f"({type(value).__name__})"
    return f"{what} {shown}: expected {EXPECTED}; found {problem}"


def is_id(value: object) -> bool:
    """For code that only needs a yes or no, e.g. to skip a stale record with a bad id."""
    return id_problem(value) is None


class IdError(FactoryError, ValueError):
    """A bad id; the message is the whole explanation (see :func:`id_error`).

    A FactoryError, so that code building names with :func:`check_id` fails as a plain
    message from the CLI (which catches FactoryError), not as a traceback.
    """


def check_id(value: str, what: str = "id") -> str:
    """The id itself if it is one, for code that builds names from it; else IdError."""
    message = id_error(value, what)
    if message is not None:
        raise IdError(message)
    return value


def _validate(value: str) -> str:
    message = id_error(value)
    if message is not None:
        # A custom error keeps pydantic's "Value error, " prefix out of the message; the
        # template is a placeholder so braces in a hostile id are never formatted.
        raise PydanticCustomError("factory_id", "{message}", {"message": message})
    return value


#: An id field for pydantic models. The schema carries the pattern and maxLength (models
#: follow them); validation is `_validate` alone, so the error says what was found.
Id = Annotated[str, AfterValidator(_validate),
               Field(json_schema_extra={"pattern": SCHEMA_PATTERN, "maxLength": MAX_LENGTH})]
