"""How numbers look on screen, in one place so every pane agrees."""

from __future__ import annotations

import time


def tokens(n: int | float | None) -> str:
    n = int(n or 0)
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 10_000:
        return f"{n / 1000:.0f}k"
    return str(n)


def usd(x: float | None) -> str:
    return f"${x or 0.0:.4f}" if (x or 0) < 1 else f"${x:.2f}"


def elapsed(start: float | None, end: float | None = None) -> str:
    if not start:
        return ""
    seconds = int((end or time.time()) - start)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def age(ts: float | None) -> str:
    return elapsed(ts) if ts else ""


STATE_STYLES = {
    "running": "bold", "landed": "green", "finished": "green", "rejected": "red",
    "failed": "red", "stuck": "red", "budget": "red", "blocked": "yellow",
    "awaiting_approval": "yellow", "waiting": "bold magenta", "landing": "cyan",
    "queued": "cyan", "conflict": "red",
    "clean": "green", "closed": "dim", "high": "red", "medium": "yellow", "low": "green",
}


def state_style(value: str | None) -> str:
    return STATE_STYLES.get(value or "", "")
