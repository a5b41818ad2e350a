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
GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "Factory",
    "GIT_AUTHOR_EMAIL": "factory@localhost",
    "GIT_COMMITTER_NAME": "Factory",
    "GIT_COMMITTER_EMAIL": "factory@localhost",
    "LC_ALL": "C",
}


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
) -> str:
    full_env = {**os.environ, **GIT_ENV, **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        "git", *args,
        cwd=str(cwd),
        env=full_env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    if check and proc.returncode != 0:
        raise GitError(args, proc.returncode or 0, stdout, stderr)
    return stdout


async def git_ok(*args: str, cwd: Path) -> bool:
    """True when the git command exits 0 (for questions like --is-ancestor)."""
    proc = await asyncio.create_subprocess_exec(
        "git", *args, cwd=str(cwd), env={**os.environ, **GIT_ENV},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    return await proc.wait() == 0
