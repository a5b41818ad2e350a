"""Who agents' commands and landing tests run as.

When the engine runs as root, a command that ran as root too would own everything it wrote
on the host's disk as root, could read any root-owned file a mount exposed, and would be one
kernel bug away from the host. So `[sandbox] run_as` (by default `auto`: uid and gid 65533
when the engine is root, the engine's own user otherwise) names an unprivileged user, and
both confining backends start every command as it:

- bwrap: bubblewrap still sets the sandbox up as root (it must reach worktrees under the
  0700 `.factory/` and toolchains under `/root`), in a user namespace whose map the engine
  writes: root, and the command user, each to itself. The launcher (the sandbox's pid 1)
  keeps only CAP_SETUID, CAP_SETGID and CAP_FOWNER, starts each command as the command user
  (which leaves it no capability at all) and wipes the scratch space after it;
- docker: `docker exec --user`.

Files the engine makes in a worktree (the checkout, the file tools' writes) are given to
the command user, so its commands can change them.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agents.errors import FactoryError
from agents.sandbox.base import SandboxError
from agents.textsafe import clean_line

# Handing a worktree of a million files over takes seconds; anything slower is a problem.
HAND_OVER_SECONDS = 300

DEFAULT_UID = 65533


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int

    @property
    def owner(self) -> tuple[int, int]:
        return (self.uid, self.gid)

    def __str__(self) -> str:
        return f"{self.uid}:{self.gid}"


def resolve(setting: str) -> RunAs | None:
    """The user commands run as, when it is not the engine's own (None: no switch)."""
    engine = os.geteuid()
    if setting == "auto":
        return RunAs(DEFAULT_UID, DEFAULT_UID) if engine == 0 else None
    uid_text, sep, gid_text = setting.partition(":")
    if not sep or not uid_text.isdigit() or not gid_text.isdigit():
        raise FactoryError(f"[sandbox] run_as = {setting!r}: expected \"auto\" or "
                           "\"UID:GID\" (numbers), e.g. \"65533:65533\"")
    wanted = RunAs(int(uid_text), int(gid_text))
    if wanted.uid == 0 or wanted.gid == 0:
        raise FactoryError(f"[sandbox] run_as = {setting!r}: commands never run as root")
    if engine != 0:
        if wanted.owner != (engine, os.getegid()):
            raise FactoryError(f"[sandbox] run_as = {setting!r}: only an engine running as "
                               f"root can start commands as another user (this one is uid "
                               f"{engine}); use \"auto\"")
        return None
    return wanted


def command_user(run_as: RunAs | None) -> RunAs:
    """Whom a command actually runs as (for `factory doctor` and the docker backend)."""
    return run_as if run_as is not None else RunAs(os.geteuid(), os.getegid())


def hand_over(root: Path, run_as: RunAs | None) -> None:
    """Give a worktree to the command user, every time its sandbox opens.

    Every time, not only the first: a hand-over cut short (a crash) is finished by the next
    open, and whatever the engine wrote there since belongs to the command user too. It is
    `chown -R` with links changed themselves, never followed (coreutils' tree walk: any depth,
    no descriptor per level); the worktree's `.git` pointer goes back to the engine
    (sandboxes bind it read-only). Raises SandboxError, with chown's reason, if the tree
    cannot be handed over.
    """
    if run_as is None:
        return
    try:
        done = subprocess.run(["chown", "-R", "-P", "-h", "--", str(run_as), str(root)],
                              capture_output=True, text=True, timeout=HAND_OVER_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"cannot give {root} to the command user {run_as}: {exc}") \
            from None
    if done.returncode != 0:
        said = clean_line(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "")
        raise SandboxError(f"cannot give {root} to the command user {run_as}: "
                           f"{said or f'chown exited with {done.returncode}'}")
    pointer = root / ".git"
    if pointer.is_file() and not pointer.is_symlink():
        os.chown(pointer, os.geteuid(), os.getegid(), follow_symlinks=False)
