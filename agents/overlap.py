"""Changes to the same lines: a conflict for the factory even when git's merge is clean.

A merge driver (`merge=union` in `.gitattributes`, a custom driver) can combine two edits of
the same lines without a conflict, and so can git when the edits happen to agree in form;
the result is code neither agent wrote or tested. Both sides are read from git's own diff
against their merge base (`git diff -U0`); two sides conflict on a file when the line ranges
they replace in the base meet (an insertion counts as touching the line it follows).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from agents.gitcmd import git, git_bytes

_HUNK = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@", re.M)

Ranges = dict[str, list[tuple[int, int]]]


def _unquote(name: bytes) -> bytes:
    """A path as git's diff header prints it: C-quoted ("a\\tb") when it has odd bytes."""
    if not name.startswith(b'"'):
        return name
    body = name[1:-1]
    out = bytearray()
    i = 0
    simple = {b"n": 10, b"t": 9, b'"': 34, b"\\": 92, b"a": 7, b"b": 8, b"f": 12, b"r": 13,
              b"v": 11}
    while i < len(body):
        if body[i:i + 1] == b"\\" and i + 1 < len(body):
            nxt = body[i + 1:i + 2]
            if nxt in simple:
                out.append(simple[nxt])
                i += 2
                continue
            if nxt.isdigit():
                out.append(int(body[i + 1:i + 4], 8))
                i += 4
                continue
        out.append(body[i])
        i += 1
    return bytes(out)


def _side(header: bytes, prefix: bytes) -> str:
    name = _unquote(header)
    if not name.startswith(prefix):
        return ""  # /dev/null: the file is new (or gone) on this side
    return name[len(prefix):].decode("utf-8", "surrogateescape")


def parse_ranges(diff: bytes) -> Ranges:
    """file (the base's name; a new file's own) -> the base's line ranges [start, end) each
    hunk replaces. A pure insertion after line s (count 0) is [s, s+1): it meets an edit of
    line s or s+1."""
    out: Ranges = {}
    path = ""
    header = False  # between "diff --git" and its first hunk: a "--- " line is a name there,
    # and a removed line reading "-- x" in a hunk
    for line in diff.split(b"\n"):
        if line.startswith(b"diff --git "):
            path, header = "", True
        elif header and line.startswith(b"--- "):
            path = _side(line[4:], b"a/")
        elif header and line.startswith(b"+++ "):
            path = path or _side(line[4:], b"b/")
            if path:
                out.setdefault(path, [])
        elif line.startswith(b"@@") and path:
            header = False
            m = _HUNK.match(line)
            if m is None:
                continue
            start = int(m.group(1))
            count = int(m.group(2)) if m.group(2) is not None else 1
            out[path].append((start, start + count) if count else (start, start + 1))
    return out


def meet(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The base's lines both sides change (each [start, end), inclusive of touching)."""
    found = []
    for a0, a1 in a:
        for b0, b1 in b:
            if a0 <= b1 and b0 <= a1:
                found.append((max(a0, b0), max(min(a1, b1), max(a0, b0) + 1)))
    return found


async def ranges(root: Path, base: str, head: str, paths: Iterable[str] = ()) -> Ranges:
    """What `head` changes against `base`, as line ranges of the base (git's diff: no
    external diff driver, no textconv, renames off, so paths are the base's)."""
    wanted = list(paths)
    out = await git_bytes("diff", "--no-ext-diff", "--no-textconv", "--no-color",
                          "--no-renames", "-U0", base, head, "--", *wanted, cwd=root)
    return parse_ranges(out)


async def same_lines(root: Path, a: str, b: str, files: Iterable[str] | None = None,
                     ) -> dict[str, list[tuple[int, int]]]:
    """file -> base lines both commits change against their merge base (empty: none)."""
    base = (await git("merge-base", a, b, cwd=root, check=False)).strip()
    if not base:
        return {}
    return await _same_lines_since(root, base, a, b, files)


async def _same_lines_since(root: Path, base: str, a: str, b: str,
                            files: Iterable[str] | None = None) -> Ranges:
    paths = list(files) if files is not None else []
    ours = await ranges(root, base, a, paths)
    theirs = await ranges(root, base, b, paths or list(ours))
    found = {}
    for path, spans in ours.items():
        both = meet(spans, theirs.get(path, []))
        if both:
            found[path] = both
    return found


# Lines of each side's diff shown for one file of a same-lines pair, at most.
SAME_LINE_HUNK_LINES = 400


async def same_line_hunks(root: Path, a: str, b: str) -> dict[str, str]:
    """file -> what each commit changes in it, for the files where both change the same base
    lines although git merges them cleanly (both made the same edit, or a `merge=union`
    attribute): a's changes and b's between conflict markers, so that a reader sees the two
    edits of those lines side by side as for a conflict. Empty when none."""
    base = (await git("merge-base", a, b, cwd=root, check=False)).strip()
    found = await _same_lines_since(root, base, a, b) if base else {}
    out: dict[str, str] = {}
    for path, spans in sorted(found.items()):
        labels = [f"{start}" if end - start <= 1 else f"{start}-{end - 1}"
                  for start, end in spans]
        where = ("line " if labels == [str(spans[0][0])] else "lines ") + ", ".join(labels)
        sides = []
        for head in (a, b):
            diff = await git_bytes("diff", "--no-ext-diff", "--no-textconv", "--no-color",
                                   "--no-renames", "-U1", base, head, "--", f":(literal){path}",
                                   cwd=root)
            text = diff.decode("utf-8", "replace")
            lines = text[text.find("\n@@") + 1:].splitlines() if "\n@@" in text else []
            if len(lines) > SAME_LINE_HUNK_LINES:
                cut = len(lines) - SAME_LINE_HUNK_LINES
                lines = [*lines[:SAME_LINE_HUNK_LINES], f"... ({cut} more lines)"]
            sides.append("\n".join(lines))
        out[path] = (f"<<<<<<< {a[:12]}: both change {where} of the merge base "
                     "(git merges them without a conflict)\n"
                     f"{sides[0]}\n=======\n{sides[1]}\n>>>>>>> {b[:12]}\n")
    return out
