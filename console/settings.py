"""What the console remembers between runs, in one small JSON file of the user's:
`$XDG_CONFIG_HOME/factory/console.json` (`~/.config/factory/console.json` by default).

Keys: `theme` (the last theme chosen, by --theme or in the palette) and `screenshots` (the
folder screenshots go to; the folder the console was started in when absent). A file that
cannot be read or written never stops the console: the choice is just not kept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def settings_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "factory" / "console.json"


def _read() -> dict[str, Any]:
    try:
        data = json.loads(settings_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remembered_theme() -> str | None:
    theme = _read().get("theme")
    return theme if isinstance(theme, str) else None


def remember_theme(name: str) -> None:
    path = settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        settings = _read()
        settings["theme"] = name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(settings, indent=2))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home must not break the console


def screenshot_dir() -> Path:
    """Where a screenshot goes: the configured folder (made if missing), else the folder the
    console runs in. Never ~/Downloads, which many machines (servers, containers) lack."""
    configured = _read().get("screenshots")
    if isinstance(configured, str) and configured:
        folder = Path(configured).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        except OSError:
            pass
    return Path.cwd()
