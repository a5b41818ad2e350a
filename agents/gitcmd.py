"""Asynchronous `git` invocations with errors that say which command failed and why.

Git's own binary does the heavy lifting (worktrees, merges, merge-tree); gitpython is used
where staying in-process is cheaper (reading and writing objects, see workspace.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

from agents.errors import FactoryError

# Identity and behaviour that must not depend on the user's global git configuration.
# Worktrees belong to the user agents' commands run as (see sandbox/identity.py), which git
# would call "dubious ownership": the engine's own git calls trust them (command-line scope,
# the only one besides the system and global files git honours for this).
GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "Factory",
    "GIT_AUTHOR_EMAIL": "factory@localhost",
    "GIT_COMMITTER_NAME": "Factory",
    "GIT_COMMITTER_EMAIL": "factory@localhost",
    "LC_ALL": "C",
    "GIT_CONFIG_COUNT": "2",
    "GIT_CONFIG_KEY_0": "safe.directory",
    "GIT_CONFIG_VALUE_0": "*",
    # No hook runs for the engine's git calls: a merge's hooks (post-merge, commit-msg...)
    # would run a branch's code, unsandboxed, with the engine's privileges.
    "GIT_CONFIG_KEY_1": "core.hooksPath",
    "GIT_CONFIG_VALUE_1": "/dev/null",
}
# A git command the engine runs on a hostile tree ends within this, whatever is in it.
GIT_TIMEOUT = 600.0


class GitError(FactoryError):
    def __init__(self, args: tuple[str, ...], code: int, stdout: str, stderr: str) -> None:
        self.args_ = args
        self.code = code
        self.stdout = stdout
        self.stderr = stderr
        detail = stderr.strip() or stdout.strip()
        super().__init__(f"git {' '.join(args)} failed ({code}): {detail}")


async def git(
    *args: str,
    cwd: Path,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = GIT_TIMEOUT,
) -> str:
    return (await git_bytes(*args, cwd=cwd, check=check, env=env, stdin=stdin,
                            timeout=timeout)).decode("utf-8", "replace")


async def git_bytes(
    *args: str,
    cwd: Path,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = GIT_TIMEOUT,
) -> bytes:
    """git's raw stdout (paths from `-z` output are bytes: decode with `paths_z`)."""
    full_env = {**os.environ, **GIT_ENV, **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        "git", *args,
        cwd=str(cwd),
        env=full_env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise GitError(args, -9, "", f"killed after {timeout:g} s") from None
    if check and proc.returncode != 0:
        raise GitError(args, proc.returncode or 0, out.decode("utf-8", "replace"),
                       err.decode("utf-8", "replace"))
    return out


def shown(path: str) -> str:
    """A path from `paths_z` as it can be recorded and shown: bytes that are not UTF-8 as
    backslash escapes (`\\xff`); every other name as it is."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return path


def paths_z(out: bytes) -> list[str]:
    """Paths from git's NUL-separated output, exactly as they are (no quoting to undo;
    bytes that are not UTF-8 kept as surrogate escapes, so they round-trip to git)."""
    return [os.fsdecode(p) for p in out.split(b"\0") if p]


async def git_ok(*args: str, cwd: Path) -> bool:
    """True when the git command exits 0 (for questions like --is-ancestor)."""
    proc = await asyncio.create_subprocess_exec(
        "git", *args, cwd=str(cwd), env={**os.environ, **GIT_ENV},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    return await proc.wait() == 0
