"""Choosing a backend by name. `auto` means bubblewrap where it works; it never falls back
to running unsandboxed: only a configuration that says `none` gets that."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from agents.sandbox.base import Limits, SandboxBackend, SandboxError

BackendName = Literal["auto", "bwrap", "docker", "none"]


def make_backend(name: BackendName, *, limits: Limits, image: str | None = None,
                 env_allow: Sequence[str] = ()) -> SandboxBackend:
    if name == "none":
        from agents.sandbox.none import NoneBackend

        return NoneBackend(limits)
    if name in ("auto", "bwrap"):
        from agents.sandbox.bwrap import BwrapBackend

        try:
            return BwrapBackend(limits, env_allow)
        except SandboxError as exc:
            if name == "bwrap":
                raise
            raise SandboxError(
                f"no sandbox works here ({exc}); see `factory doctor`, or set "
                "[sandbox] backend = \"none\" to run agents' commands unsandboxed") from None
    raise SandboxError(f"the {name!r} sandbox backend is not built yet; use \"bwrap\"")
