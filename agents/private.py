"""The factory's own files are its owner's alone.

The store holds every agent's conversation, tool output and the operator's answers; the
`.factory/` folder holds it, the worktrees, the run lock and the console socket. Other users
of the machine (and the unprivileged user agents' commands run as) get nothing: the folder
is 0700 and the store 0600, whatever the umask. SQLite creates its -wal and -shm files with
the database file's own mode, so those follow.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Make (or tighten) a folder only its owner can enter."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if (path.stat().st_mode & 0o777) != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create (or tighten) a file only its owner can read, before anything is written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        if (os.fstat(fd).st_mode & 0o777) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", FILE_MODE)
    return path


def exclude_factory(common_dir: Path) -> None:
    """List `.factory/` in the repository's own exclude file (`.git/info/exclude`), which no
    branch can change, so that the engine's state is ignored even where `.gitignore` does
    not say so."""
    exclude = common_dir / "info" / "exclude"
    try:
        lines = exclude.read_text().splitlines()
    except FileNotFoundError:
        lines = []
    if ".factory/" in (line.strip() for line in lines):
        return
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with exclude.open("a") as handle:
        if lines and lines[-1].strip():
            handle.write("\n")
        handle.write("# the engine's own state (Factory)\n.factory/\n")
