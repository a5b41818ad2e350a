"""Who holds work in progress: this engine process, named so that another process can tell
whether it is still alive.

A holder is `host:pid:start`, where start is the process's start time in clock ticks since
boot (from /proc): a pid that was reused by another program has another start time, so a
lease is never mistaken for live because its pid came back.
"""

from __future__ import annotations

import functools
import os
import socket


def _start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count after it.
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None  # field 22: starttime


@functools.cache
def me() -> str:
    """This process, as its leases name it."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid()) or '?'}"


def alive(holder: str | None) -> bool:
    """Whether the process a lease names still runs (on this machine; one elsewhere is
    taken to be alive: nothing here can tell)."""
    if not holder:
        return False
    host, _, rest = holder.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname():
        return True
    if not pid_text.isdigit():
        return False
    return _start_ticks(int(pid_text)) == start
