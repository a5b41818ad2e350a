"""Only the daemon's owner can attach (issue 16): its socket commands the factory, so another
user on the same machine, created here for the test, is refused by the kernel, though it can
reach the socket's path.

Real parts: a real user (useradd), the daemon serving a real factory on its unix socket, and
that user's own process (the system's python3, run under setpriv) trying to connect.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.daemon import Daemon
from agents.engine import Factory
from tests.conftest import make_repo

CONNECT = """
import os, socket, sys
path = sys.argv[1]
os.stat(path)  # the path is reachable: only the socket's own mode may refuse
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(path)
except PermissionError:
    print("refused")
else:
    print("connected")
"""


@pytest.fixture
def other_user() -> Iterator[tuple[int, int]]:
    if os.geteuid() != 0:
        pytest.fail("creating a user needs root (CI runs as root)")
    name = f"fx{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        ids = subprocess.run(["id", "-u", name], check=True, capture_output=True, text=True)
        gids = subprocess.run(["id", "-g", name], check=True, capture_output=True, text=True)
        yield int(ids.stdout), int(gids.stdout)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


async def test_another_user_cannot_attach(other_user: tuple[int, int]) -> None:
    uid, gid = other_user
    # Folders anyone may pass through, so that nothing but the socket itself refuses.
    base = Path(tempfile.mkdtemp(prefix="factory-socket-", dir="/tmp"))
    base.chmod(0o755)
    root = make_repo(base / "repo")
    (root / ".factory.toml").write_text('[sandbox]\nbackend = "none"\n')
    replay = root / ".factory" / "replay"
    replay.mkdir(parents=True)
    (replay / "demo.json").write_text('{"format": "factory-replay/1", "agents": {}}')
    for folder in (root, root / ".factory"):
        folder.mkdir(exist_ok=True)
        folder.chmod(0o755)
    factory = await Factory.open(root)
    sock = root / ".factory" / "daemon.sock"
    daemon = Daemon(factory, sock)
    await daemon.start()
    try:
        (root / ".factory").chmod(0o755)  # as if the owner had opened the folder up

        def attempt(*user: str) -> str:
            done = subprocess.run([*user, "/usr/bin/python3", "-c", CONNECT, str(sock)],
                                  capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        other = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        assert attempt(*other) == "refused"
        assert attempt() == "connected"  # the owner still can: the refusal is the mode's
    finally:
        await daemon.close()
        await factory.close()
