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
import time
from dataclasses import dataclass
from pathlib import Path

from agents.beneath import walk_fd
from agents.errors import FactoryError

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
    """Give a tree the engine made (a fresh checkout) to the command user, when its sandbox
    opens.

    A tree already owned by the command user was handed over before (a resumed agent); then
    nothing is done. The walk goes beneath the tree's handle and changes links themselves,
    never what they point at; the worktree's `.git` pointer stays the engine's (sandboxes
    bind it read-only).
    """
    if run_as is None:
        return
    uid, gid = run_as.owner
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        info = os.fstat(top)
        if (info.st_uid, info.st_gid) == (uid, gid):
            return
        os.fchown(top, uid, gid)
        walk = walk_fd(os.dup(top), "", skip=lambda _: False, max_entries=10_000_000,
                       deadline=time.monotonic() + 600)
        for path, fd, entry in walk:
            if path != ".git":
                os.chown(entry.name, uid, gid, dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(top)
