"""Keeping file tools inside the agent's worktree.

File tools run in the engine's process, not in the sandbox, so they must refuse on their own
anything that resolves outside the worktree (`..`, absolute paths, symlinks pointing out) and
anything the engine keeps for itself (git metadata, the factory configuration).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

PROTECTED_NAMES = {".git", ".factory.toml", ".factory"}


class PathDenied(Exception):
    pass


@functools.lru_cache(maxsize=4096)
def _real_root(worktree: Path) -> Path:
    return Path(os.path.realpath(worktree))


def resolve_inside(worktree: Path, raw: str, *, for_write: bool = False) -> Path:
    if not raw or "\0" in raw:
        raise PathDenied("a non-empty path is required")
    root = _real_root(worktree)
    candidate = Path(raw)
    if candidate.is_absolute():
        try:
            candidate = candidate.relative_to(root)
        except ValueError:
            raise PathDenied(f"{raw}: absolute paths outside the worktree are not allowed") \
                from None
    target = Path(os.path.realpath(root / candidate))
    if target != root and root not in target.parents:
        raise PathDenied(f"{raw}: resolves outside the worktree")
    rel = target.relative_to(root)
    if rel.parts and rel.parts[0] in PROTECTED_NAMES:
        if for_write or rel.parts[0] != ".factory.toml":
            raise PathDenied(f"{raw}: {rel.parts[0]} is managed by the engine")
    if target.is_file() and target.stat().st_nlink > 1:
        # A hard link may share its inode with a file outside the worktree; checkouts and
        # the file tools never make one, so any we meet was planted.
        raise PathDenied(f"{raw}: refusing to use a hard-linked file")
    return target
