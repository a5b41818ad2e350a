"""Where the process serving a repository's factory listens, and whether one does.

One daemon (or run, or console's own engine) serves a repository on one unix socket; the
CLI, `factory up`/`down` and `factory gc` all ask the same question the same cheap way, before
anything heavier is imported (the console's first frame waits on it)."""

from __future__ import annotations

import socket
from pathlib import Path

SOCKET_NAME = "daemon.sock"


def socket_path(root: Path) -> Path:
    """Where a daemon serving the factory of `root` listens (one daemon per repository)."""
    return root / ".factory" / SOCKET_NAME


def served(root: Path) -> bool:
    """Whether a process answers on the factory's socket."""
    path = socket_path(root)
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
