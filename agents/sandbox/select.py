"""Choosing a backend by name. `auto` means bubblewrap where it works; it never falls back
to running unsandboxed: only a configuration that says `none` gets that."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from agents.sandbox.base import Limits, SandboxBackend, SandboxError
from agents.sandbox.identity import resolve

BackendName = Literal["auto", "bwrap", "docker", "none"]


def make_backend(name: BackendName, *, limits: Limits, image: str | None = None,
                 env_allow: Sequence[str] = (), root: Path | None = None,
                 run_as: str = "auto") -> SandboxBackend:
    """The named backend, ready to open sandboxes.

    `root` is the repository the agents work on: docker labels its containers with it so
    that a later run on the same repository can sweep what this one left. `run_as` is the
    `[sandbox] run_as` setting (see identity.py): the confining backends start commands as
    that user; `none` confines nothing and runs them as the engine's.
    """
    user = resolve(run_as)
    if name == "none":
        from agents.sandbox.none import NoneBackend

        return NoneBackend(limits)
    if name == "docker":
        # Imported only here: the docker SDK is not needed (nor cheap) for other backends.
        from agents.sandbox.docker import DockerBackend

        return DockerBackend(limits, env_allow, image=image, root=root, run_as=user)
    if name in ("auto", "bwrap"):
        from agents.sandbox.bwrap import BwrapBackend

        try:
            return BwrapBackend(limits, env_allow, run_as=user)
        except SandboxError as exc:
            if name == "bwrap":
                raise
            raise SandboxError(
                f"no sandbox works here ({exc}); see `factory doctor`, or set "
                "[sandbox] backend = \"docker\" (with an image) or \"none\" to run agents' "
                "commands unsandboxed") from None
    raise SandboxError(f"unknown sandbox backend {name!r}: use auto, bwrap, docker or none")
