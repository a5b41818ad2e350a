"""The environment a sandboxed command sees: a short allow-list, never the engine's secrets."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

# Enough for toolchains to behave; nothing that carries a credential.
BASE_ALLOW = ("PATH", "LANG", "LC_ALL", "TERM", "TZ")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def scrubbed_env(
    allow: Iterable[str] = (), extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = {k: os.environ[k] for k in (*BASE_ALLOW, *allow) if k in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env["HOME"] = "/tmp"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    return env
