"""Commit messages whose trailers say only what the engine wrote.

Every commit the engine makes carries provenance trailers (`Factory-Agent`, `Factory-Task`,
...), and people and tools read them with git's own parser (`git interpret-trailers
--parse`, `git log --format=%(trailers)`). The rest of a message is text an agent or a
planner wrote (a finish summary, a task title), so it must not be able to add, hide or
change a trailer:

- the title becomes one line (newlines and control characters shown as placeholders), not
  starting with `-` or `#` (git's patch divider and scissors line);
- every line of the body is indented by four spaces: git reads trailers only from lines
  that start at the margin, and its patch divider (`---`) and comment lines only there too;
- the engine's trailers are the last paragraph, one `Key: value` line each, values on one
  line.

`trailers_of` reads a message back with git's parser, so the landing can check what it is
about to put on main.
"""

from __future__ import annotations

from pathlib import Path

from agents.gitcmd import git
from agents.textsafe import clean, clean_line

TITLE_LIMIT = 200
INDENT = "    "


def trailer_value(value: str) -> str:
    """A trailer's value as written: one line, no control characters."""
    return clean_line(value).strip()


def trailer_block(trailers: dict[str, str]) -> str:
    return "\n".join(f"{key}: {trailer_value(value)}" for key, value in trailers.items())


def one_line(text: str, limit: int = TITLE_LIMIT) -> str:
    line = " ".join(clean_line(text).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def title_line(text: str) -> str:
    """A title git reads as a title: one line, and not starting with `-` or `#` (git takes a
    line of `---` for the start of a patch and `# --- >8 ---` for the end of the message,
    and would then find no trailer after it)."""
    return one_line(text).lstrip("-# ").strip() or "(untitled)"


def compose(title: str, body: str, trailers: dict[str, str]) -> str:
    """A commit message: the title, the body quoted, the engine's trailers last."""
    lines = [INDENT + line if line.strip() else "" for line in clean(body).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    parts = [title_line(title)]
    if lines:
        parts.append("\n".join(lines))
    parts.append(trailer_block(trailers))
    return "\n\n".join(parts) + "\n"


async def trailers_of(message: str, cwd: Path) -> list[tuple[str, str]]:
    """The trailers git's own parser finds in a message, in order."""
    out = await git("interpret-trailers", "--parse", cwd=cwd,
                    stdin=message.encode())
    found = []
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            found.append((key.strip(), value.strip()))
    return found
