"""The `docker` backend: one long-lived container per agent, each command a `docker exec`.

Starting a container costs hundreds of milliseconds; an exec into a running one costs tens.
So `open` starts one container per agent and every command is exec'd into it. The container
has no network (`network_mode="none"`), a read-only root, no capabilities, no_new_privs,
a private tmpfs /tmp, and pids and memory ceilings that bind every command the agent runs
(the same per-agent scope as bwrap's cgroups). The worktree is bind-mounted read-write at
its host path, so paths in tool output match the host's; its `.git` pointer and
`.factory.toml` are bound read-only on top, and nothing else of the host is writable.

Two kinds of image work:
- a real image (`[sandbox] image = "python:3.12-slim"`, pulled beforehand) brings its own
  toolchain; only the worktree comes from the host;
- the host-toolchain image `build_local_image` makes (an empty rootfs through `docker
  import`, labelled `factory.host-toolchain`) gets the host's /usr, a few /etc files and the
  engine's Python bind-mounted read-only, exactly the set bwrap mounts. Tests use it, as
  does any machine that cannot pull images.

Every command runs under a small `sh` wrapper (`WRAPPER`): it kills whatever the command
left behind once it ends and reports the container's OOM-kill counter before and after, on
the last line of stderr, tagged with a per-command nonce. Commands run as the host's uid
without CAP_KILL, while the container's init runs as another uid, so the wrapper's
`kill -9 -1` (and a hostile one) reaches every process of the agent but never the init
that keeps the container alive.

Containers carry labels (`factory.agent`, `factory.root`) so that `sweep()` can remove what
a crashed engine left behind. The docker SDK is synchronous: short calls go through
`asyncio.to_thread`, and each command's output stream is read on a thread of its own, so
that long-running commands never starve the default executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import secrets
import tarfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.types import Mount

from agents.errors import FactoryError
from agents.sandbox.base import (
    Limits,
    RunResult,
    SandboxContext,
    SandboxError,
    StopReason,
    checked,
)
from agents.sandbox.bwrap import ETC_FILES, strip_setuid, toolchain_paths
from agents.sandbox.env import scrubbed_env
from agents.sandbox.identity import RunAs, command_user, hand_over
from agents.sandbox.quota import POLL_SECONDS, Over
from agents.textsafe import clean_line

LOCAL_IMAGE = "factory-sandbox:local"
HOST_TOOLCHAIN_LABEL = "factory.host-toolchain"
LABEL_AGENT = "factory.agent"
LABEL_ROOT = "factory.root"
LABEL_SANDBOX = "factory.sandbox"
START_DOCKERD = ("start the daemon (as root: `dockerd --bridge=none --iptables=false "
                 "--ip-masq=false > /tmp/dockerd.log 2>&1 &`, or `systemctl start docker`)")


def init_uid(command_uid: int) -> int:
    """The init's uid: commands run as another uid without CAP_KILL, so they cannot signal
    it."""
    return 65534 if command_uid != 65534 else 65532
# Room for the wrapper's status line on top of the command's own output budget.
TRAILER_ROOM = 256
# The links merged-/usr systems keep at the root; /sbin stays a real directory in the local
# image because docker bind-mounts its init at /sbin/docker-init, which cannot be created
# inside the read-only /usr.
ROOT_LINKS = ("bin", "lib", "lib32", "lib64", "libx32")

# $1 is the nonce; the rest is the command. Only builtins run outside the command itself,
# so the wrapper still works when a fork bomb has used up the pids limit.
WRAPPER = r"""
__f_oom() {
  __f_n=-
  for __f_file in /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control; do
    if [ -r "$__f_file" ]; then
      while read -r __f_k __f_v; do
        if [ "$__f_k" = oom_kill ]; then __f_n=$__f_v; fi
      done < "$__f_file"
      return 0
    fi
  done
}
__f_wipe() {
  # Scratch space, emptied after each command as bwrap's launcher does (never across a
  # mount: a worktree may be mounted below /tmp).
  find /tmp /dev/shm -xdev -mindepth 1 -delete 2>/dev/null
}
__f_mark=$1
shift
__f_oom
__f_before=$__f_n
__f_found=
case $1 in
  */*) if [ -f "$1" ] && [ -x "$1" ]; then __f_found=1; fi ;;
  *)
    set -f
    __f_ifs=$IFS
    IFS=:
    for __f_dir in $PATH; do
      if [ -f "${__f_dir:-.}/$1" ] && [ -x "${__f_dir:-.}/$1" ]; then __f_found=1; break; fi
    done
    IFS=$__f_ifs
    set +f
    ;;
esac
if [ -n "$__f_found" ]; then
  (exec "$@")
  __f_rc=$?
  __f_status=ran
else
  printf 'sh: %s: not found\n' "$1" >&2
  __f_rc=127
  __f_status=missing
fi
kill -9 -1 2>/dev/null
kill -9 -1 2>/dev/null
__f_wipe
__f_oom
printf '%s %s %s %s %s\n' "$__f_mark" "$__f_status" "$__f_rc" "$__f_before" "$__f_n" >&2
exit 0
"""

# Run when the wrapper could not finish (timeout, output cap, killed): clean up and report
# the OOM counter so that a memory kill is still told apart from any other SIGKILL.
CLEANUP = WRAPPER.split("__f_mark=$1")[0] + r"""
kill -9 -1 2>/dev/null
kill -9 -1 2>/dev/null
__f_wipe
__f_oom
echo "oom $__f_n"
"""


class DockerUnavailable(SandboxError, FactoryError):
    """Docker cannot serve as the sandbox here; the message says what to do about it."""


def connect(timeout: float = 30.0, max_pool_size: int = 32) -> docker.DockerClient:
    """A client for the daemon DOCKER_HOST names (the local socket by default), checked."""
    try:
        client = docker.from_env(timeout=timeout, max_pool_size=max_pool_size)
        client.ping()
    except docker.errors.DockerException as exc:
        raise DockerUnavailable(
            f"the docker daemon does not answer ({_short(exc)}): {START_DOCKERD}, "
            "or choose another [sandbox] backend") from None
    return client


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def build_local_image(client: docker.DockerClient, tag: str = LOCAL_IMAGE) -> str:
    """Make the host-toolchain image: an empty root that mirrors the host's top-level links.

    Nothing can be pulled on some machines, and the host already has every tool the agents
    may use; the backend bind-mounts it read-only into containers of this image.
    Returns the image id.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("usr", "etc", "tmp", "proc", "dev", "sys", "sbin", "root", "home"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        for name in ROOT_LINKS:
            host = Path("/") / name
            info = tarfile.TarInfo(name)
            if host.is_symlink():
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(host)
            elif host.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            else:
                continue
            tar.addfile(info)
    repository, _, version = tag.rpartition(":") if ":" in tag.split("/")[-1] else (tag, "", "")
    try:
        previous: str | None = str(client.images.get(tag).id)
    except docker.errors.ImageNotFound:
        previous = None
    client.api.import_image_from_data(buffer.getvalue(), repository=repository,
                                      tag=version or "latest",
                                      changes=[f"LABEL {HOST_TOOLCHAIN_LABEL}=1"])
    image = str(client.images.get(tag).id)
    if previous is not None and previous != image:
        # Every import is a new image; the one it replaces would linger untagged. One that
        # a container still uses stays (the daemon refuses) until `docker image prune`.
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(previous)
    return image


def host_toolchain_mounts() -> list[Mount]:
    """The host paths a host-toolchain container sees, read-only: what bwrap mounts."""
    mounts = [Mount("/usr", "/usr", type="bind", read_only=True)]
    for name in ROOT_LINKS:
        path = Path("/") / name
        if path.is_dir() and not path.is_symlink():
            mounts.append(Mount(str(path), str(path), type="bind", read_only=True))
    for name in ETC_FILES:
        path = Path("/etc") / name
        if path.exists():
            mounts.append(Mount(str(path), str(path), type="bind", read_only=True))
    for path in toolchain_paths():
        if path.exists():
            mounts.append(Mount(str(path), str(path), type="bind", read_only=True))
    return mounts


@dataclass(frozen=True)
class Trailer:
    """The wrapper's last line: how the command ended and the OOM counter around it."""

    status: str
    exit_code: int
    oom_before: int | None
    oom_after: int | None


def _count(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def split_trailer(stderr: bytes, nonce: str) -> tuple[bytes, Trailer | None]:
    """Take the wrapper's status line off the end of stderr, if it is there."""
    at = stderr.rfind(nonce.encode())
    if at < 0:
        return stderr, None
    match = re.fullmatch(rb"(ran|missing) (\d+) (\d+|-) (\d+|-)\n",
                         stderr[at + len(nonce) + 1:])
    if match is None or stderr[at + len(nonce):at + len(nonce) + 1] != b" ":
        return stderr, None
    status, code, before, after = (g.decode() for g in match.groups())
    return stderr[:at], Trailer(status, int(code), _count(before), _count(after))


class ExecStream:
    """One exec, run and read on a thread of its own; chunks reach the loop through a queue.

    A command can run for many minutes with no output: holding an executor thread (or a
    socket timeout) for that long would stall or cut other agents' commands.
    """

    def __init__(self, api: docker.APIClient, stream_api: docker.APIClient, container: str,
                 cmd: list[str], env: Mapping[str, str], workdir: str, user: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.api = api
        self.stream_api = stream_api
        self.args: dict[str, Any] = {"container": container, "cmd": cmd,
                                     "environment": dict(env), "workdir": workdir,
                                     "user": user, "stdout": True, "stderr": True}
        self.chunks: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self.exit_code: asyncio.Future[int | None] = self.loop.create_future()
        self.discard = False
        # Set once the daemon has accepted the exec: from then on the command may have run.
        self.started = False
        self._stream: Any = None
        self._thread = threading.Thread(target=self._work, name="factory-docker-exec",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """Close the stream from outside (last resort when killing did not end it)."""
        with contextlib.suppress(Exception):
            if self._stream is not None:
                self._stream.close()

    def _call(self, fn: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed under us
            self.loop.call_soon_threadsafe(fn, *args)

    def _settle(self, value: int | BaseException | None) -> None:
        def settle() -> None:
            if self.exit_code.done():
                return
            if isinstance(value, BaseException):
                self.exit_code.set_exception(value)
            else:
                self.exit_code.set_result(value)
        self._call(settle)

    def _work(self) -> None:
        outcome: int | BaseException | None
        try:
            exec_id = self.api.exec_create(**self.args)["Id"]
            self._stream = self.stream_api.exec_start(exec_id, stream=True, demux=True)
            self.started = True
            for out, err in self._stream:
                if self.discard:
                    continue
                if out:
                    self._call(self.chunks.put_nowait, (1, out))
                if err:
                    self._call(self.chunks.put_nowait, (2, err))
            outcome = self._exit(exec_id)
        except Exception as exc:
            outcome = exc
        self._settle(outcome)
        self._call(self.chunks.put_nowait, None)

    def _exit(self, exec_id: str) -> int | None:
        # The stream can end a moment before the daemon records the exit code.
        for _ in range(200):
            info = self.api.exec_inspect(exec_id)
            if not info.get("Running"):
                code = info.get("ExitCode")
                return int(code) if code is not None else None
            time.sleep(0.01)
        return None


class DockerSandbox:
    name = "docker"

    def __init__(self, backend: DockerBackend, ctx: SandboxContext, container: str) -> None:
        self.backend = backend
        self.ctx = ctx
        self.limits = backend.limits
        self.container = container
        self.user = str(command_user(backend.run_as))
        self.oom_seen: int | None = None
        self.closed = False
        # Commands of one agent run one at a time: each one's cleanup kills every process
        # in the container, which would cut a concurrent one short.
        self._lock = asyncio.Lock()

    async def run(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        limits: Limits | None = None,
    ) -> RunResult:
        limits = limits or self.limits
        full_env = scrubbed_env(self.ctx.env_allow, extra=env)
        if self.backend.image_path and not (env and "PATH" in env):
            full_env["PATH"] = self.backend.image_path
        wall = min(timeout, limits.wall_seconds) if timeout else limits.wall_seconds
        async with self._lock:
            started = time.perf_counter()
            if self.closed:
                return RunResult(None, "", "", 0.0, "denied", "the sandbox is closed")
            if not argv:
                return RunResult(None, "", "", 0.0, "denied", "no command given")
            result, ran = await self._run(list(argv), cwd, full_env, limits, wall, started)
            if result.stop == "denied" and not ran and await self._restarted():
                # Something stopped the container (the daemon restarted, someone killed
                # it) before this command could start: the agent gets its container back,
                # and the command runs there. One that may have run is never run twice.
                result, _ = await self._run(list(argv), cwd, full_env, limits, wall,
                                            time.perf_counter())
        stripped = strip_setuid(self.ctx.worktree)
        result = await checked(result, self.ctx.meter)
        if stripped:
            return RunResult(result.exit_code, result.stdout, result.stderr, result.duration,
                             "denied", "removed the setuid/setgid bit from "
                             + ", ".join(stripped[:5]))
        return result

    async def _run(self, argv: list[str], cwd: Path, env: dict[str, str], limits: Limits,
                   wall: float, started: float) -> tuple[RunResult, bool]:
        """The command's result, and whether the daemon started it at all."""
        stream, result = await self._exec(argv, cwd, env, limits, wall, started)
        return result, stream.started

    async def _exec(self, argv: list[str], cwd: Path, env: dict[str, str], limits: Limits,
                    wall: float, started: float) -> tuple[ExecStream, RunResult]:
        nonce = "factory-" + secrets.token_hex(8)
        # Docker adds HOSTNAME to every exec: drop it unless asked for, so that the command
        # sees the same environment as under bwrap (which sets PWD, as the wrapper's sh does).
        script = WRAPPER if "HOSTNAME" in env else "unset HOSTNAME\n" + WRAPPER
        stream = ExecStream(self.backend.api, self.backend.stream_api, self.container,
                            ["/bin/sh", "-c", script, "sh", nonce, *argv], env,
                            str(cwd.resolve()), self.user)
        stream.start()
        out, err = bytearray(), bytearray()
        budget = limits.output_bytes + TRAILER_ROOM
        total = 0
        stop: StopReason = "exit"
        detail = ""
        ended = False
        meter = self.ctx.meter
        over: Over | None = None
        next_measure = time.perf_counter() + POLL_SECONDS
        try:
            while True:
                left = started + wall - time.perf_counter()
                if meter is not None:
                    if time.perf_counter() >= next_measure:
                        over = await meter.measure_async()
                        next_measure = time.perf_counter() + POLL_SECONDS
                        if over is not None:
                            stop, detail = "quota", over.message
                            break
                    left = min(left, max(next_measure - time.perf_counter(), 0))
                try:
                    item = await asyncio.wait_for(stream.chunks.get(), max(left, 0))
                except TimeoutError:
                    if started + wall - time.perf_counter() > 0:
                        continue  # time to measure the worktree
                    stop, detail = "timeout", f"killed after {wall:g} s"
                    break
                if item is None:
                    ended = True
                    break
                fd, data = item
                room = budget - total
                if room > 0:
                    (out if fd == 1 else err).extend(data[:room])
                total += len(data)
                if total > budget:
                    stop, detail = "output_cap", f"output exceeded {limits.output_bytes} bytes"
                    break
        except asyncio.CancelledError:
            # The caller gave up (an agent cancelled): the command must not run on beside
            # the agent's next one.
            stream.discard = True
            with contextlib.suppress(Exception):
                await asyncio.shield(self._cleanup())
            raise
        oom_after: int | None = None
        if not ended:
            stream.discard = True
            oom_after = await self._cleanup()
            if not await self._wait_end(stream, 10):
                # Killing from inside did not end it (the pids limit can refuse even the
                # cleanup exec): kill the container; the next command starts it again.
                detail += "; the container was killed and will be restarted"
                await self._kill_container()
                if not await self._wait_end(stream, 5):
                    stream.cancel()
        try:
            code = await asyncio.wait_for(asyncio.shield(stream.exit_code), timeout=15)
        except Exception as exc:
            if stop == "exit":
                return stream, RunResult(None, out.decode("utf-8", "replace"),
                                         err.decode("utf-8", "replace"),
                                         time.perf_counter() - started, "denied",
                                         f"docker exec failed: {_short(exc)}")
            code = None
        stderr, trailer = split_trailer(bytes(err), nonce) if code == 0 else (bytes(err), None)
        before = self.oom_seen
        if trailer is not None:
            before = trailer.oom_before if trailer.oom_before is not None else before
            oom_after = trailer.oom_after
        elif ended:
            # The wrapper itself died (a memory kill, `kill -9 -1`) or never started.
            oom_after = await self._cleanup()
        self.oom_seen = oom_after if oom_after is not None else self.oom_seen
        # The budget had room for the status line; what the command wrote keeps to the cap.
        cap = limits.output_bytes
        flooded = len(out) + len(stderr) > cap
        stdout_text = bytes(out[:cap]).decode("utf-8", "replace")
        stderr_text = stderr[:max(cap - len(out), 0)].decode("utf-8", "replace")
        if before is None or oom_after is None:
            # An image without a readable OOM counter: a SIGKILL nobody here sent, in a
            # container the daemon saw run out of memory, is the best evidence left.
            killed = (trailer.exit_code if trailer else code) == 137 and stop == "exit"
            oom = killed and await self._daemon_saw_oom()
        else:
            oom = oom_after > before
        duration = time.perf_counter() - started
        if oom:
            return stream, RunResult(None, stdout_text, stderr_text, duration, "memory",
                                     f"killed at the {self.backend.limits.memory_mb} MB "
                                     "memory limit")
        if stop != "exit":
            return stream, RunResult(None, stdout_text, stderr_text, duration, stop, detail,
                                     over)
        if trailer is None:
            failed = "OCI runtime exec failed" in stdout_text + stderr_text
            if failed or code is None:
                message = (stdout_text + stderr_text).strip() or "the exec did not start"
                return stream, RunResult(code, stdout_text, stderr_text, duration, "denied",
                                         f"docker exec failed: {message[:500]}")
            return stream, RunResult(code, stdout_text, stderr_text, duration)
        if trailer.status == "missing":
            return stream, RunResult(None, stdout_text, stderr_text, duration, "denied",
                                     f"could not start {argv[0]!r}: not found in the sandbox")
        if flooded:
            return stream, RunResult(None, stdout_text, stderr_text, duration, "output_cap",
                                     f"output exceeded {cap} bytes")
        return stream, RunResult(trailer.exit_code, stdout_text, stderr_text, duration)

    async def _daemon_saw_oom(self) -> bool:
        def saw() -> bool:
            state = self.backend.api.inspect_container(self.container)["State"]
            return bool(state.get("OOMKilled"))

        try:
            return await asyncio.to_thread(saw)
        except docker.errors.DockerException:
            return False

    async def _wait_end(self, stream: ExecStream, seconds: float) -> bool:
        """Drop what is still queued until the stream ends; False if it does not in time."""
        deadline = time.perf_counter() + seconds
        while True:
            try:
                item = await asyncio.wait_for(stream.chunks.get(),
                                              max(deadline - time.perf_counter(), 0))
            except TimeoutError:
                return False
            if item is None:
                return True

    async def _cleanup(self) -> int | None:
        """Kill every process the agent has in the container; return the OOM-kill counter."""
        try:
            text = await asyncio.to_thread(self._exec_output, ["/bin/sh", "-c", CLEANUP])
        except docker.errors.DockerException:
            return None
        match = re.search(r"^oom (\d+)$", text, re.M)
        return int(match.group(1)) if match else None

    def _exec_output(self, cmd: list[str]) -> str:
        api = self.backend.api
        exec_id = api.exec_create(self.container, cmd, user=self.user)["Id"]
        return bytes(api.exec_start(exec_id)).decode("utf-8", "replace")

    async def _restarted(self) -> bool:
        """Start the container again if it is not running; False if it was running."""
        def restart() -> bool:
            try:
                state = self.backend.api.inspect_container(self.container)["State"]
            except docker.errors.DockerException:
                return False
            if state.get("Running"):
                return False
            self.backend.api.start(self.container)
            return True

        try:
            if not await asyncio.to_thread(restart):
                return False
        except docker.errors.DockerException:
            return False
        self.oom_seen = await self._cleanup()
        return True

    async def _kill_container(self) -> None:
        def kill() -> None:
            with contextlib.suppress(docker.errors.DockerException):
                self.backend.api.kill(self.container)
            # Started again right away: the OOM counter restarts with the new cgroup.
            with contextlib.suppress(docker.errors.DockerException):
                self.backend.api.start(self.container)

        await asyncio.to_thread(kill)
        self.oom_seen = None

    async def close(self) -> None:
        """Remove the container, and with it whatever still runs there (not waited for)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(docker.errors.DockerException):
            await asyncio.to_thread(self.backend.remove, self.container)


class DockerBackend:
    """Containers from one image, for the agents of one repository (`root`)."""

    name = "docker"
    confines = True

    def __init__(self, limits: Limits | None = None, env_allow: Sequence[str] = (),
                 image: str | None = None, root: Path | None = None,
                 client: docker.DockerClient | None = None,
                 run_as: RunAs | None = None) -> None:
        if not image:
            raise DockerUnavailable(
                "the docker backend needs an image: set [sandbox] image in .factory.toml "
                "(one with /bin/sh and your toolchain, pulled beforehand), or build one "
                f"that mounts this machine's toolchain with `python -m agents.sandbox.docker "
                f"build {LOCAL_IMAGE}` and name that")
        self.limits = limits or Limits()
        self.env_allow = list(env_allow)
        self.run_as = run_as
        self.image = image
        self.root = (root or Path.cwd()).resolve()
        self.client = client or connect()
        self.api = self.client.api
        # Reads of a command's output may wait as long as the command runs: no timeout.
        self.stream_api = docker.from_env(timeout=None, version=self.api.api_version,
                                          max_pool_size=32).api
        try:
            found = self.client.images.get(image)
        except docker.errors.ImageNotFound:
            hint = (f"build it with `python -m agents.sandbox.docker build {image}`"
                    if image == LOCAL_IMAGE else f"pull it first (`docker pull {image}`)")
            raise DockerUnavailable(f"the docker image {image!r} is not on this machine: "
                                    f"{hint}") from None
        except docker.errors.DockerException as exc:
            raise DockerUnavailable(f"cannot inspect the docker image {image!r}: "
                                    f"{_short(exc)}") from None
        self.host_toolchain = HOST_TOOLCHAIN_LABEL in (found.labels or {})
        config = found.attrs.get("Config") or {}
        paths = [e.split("=", 1)[1] for e in config.get("Env") or [] if e.startswith("PATH=")]
        # A real image's PATH says where its toolchain lives; the host's would not.
        self.image_path = paths[0] if paths and not self.host_toolchain else None

    def labels(self, agent_id: str) -> dict[str, str]:
        return {LABEL_SANDBOX: "1", LABEL_AGENT: agent_id, LABEL_ROOT: str(self.root)}

    def mounts(self, ctx: SandboxContext) -> list[Mount]:
        worktree = ctx.worktree.resolve()
        mounts = host_toolchain_mounts() if self.host_toolchain else []
        mounts.append(Mount(str(worktree), str(worktree), type="bind", read_only=False))
        for path in ctx.read_only:
            if path.exists():
                # Where the file shows inside the worktree mount (which is at the resolved
                # path): an unresolved target would be shadowed, leaving the file writable.
                target = str(path.absolute().parent.resolve() / path.name)
                mounts.append(Mount(target, str(path.resolve()), type="bind", read_only=True))
        return mounts

    def _create(self, ctx: SandboxContext) -> str:
        limits = self.limits
        slug = re.sub(r"[^a-zA-Z0-9_.-]", "-", ctx.agent_id)[:40]
        init = init_uid(command_user(self.run_as).uid)
        tmpfs = "rw,exec,nosuid,nodev,mode=1777"
        ulimits = []
        scratch: dict[str, Any] = {}
        if ctx.meter is not None:
            quota = ctx.meter.quota
            tmpfs += f",size={quota.disk_bytes},nr_inodes={quota.files}"
            ulimits = [docker.types.Ulimit(name="fsize", soft=quota.disk_bytes,
                                           hard=quota.disk_bytes)]
            scratch["shm_size"] = quota.disk_bytes
        container = self.client.containers.run(
            self.image,
            command=["sleep", "2147483647"],
            name=f"factory-{slug}-{secrets.token_hex(3)}",
            labels=self.labels(ctx.agent_id),
            detach=True,
            init=True,
            user=f"{init}:{init}",
            network_mode="none",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=limits.max_processes,
            mem_limit=f"{limits.memory_mb}m",
            memswap_limit=f"{limits.memory_mb}m",
            mounts=self.mounts(ctx),
            # Docker's tmpfs default is noexec; bwrap's /tmp runs what a build puts there.
            tmpfs={"/tmp": tmpfs},
            ulimits=ulimits,
            **scratch,
            working_dir=str(ctx.worktree.resolve()),
            hostname="sandbox",
            environment={},
        )
        return str(container.id)

    async def open(self, ctx: SandboxContext) -> DockerSandbox:
        if not ctx.env_allow:
            ctx.env_allow = self.env_allow
        await asyncio.to_thread(hand_over, ctx.worktree, self.run_as)
        try:
            container = await asyncio.to_thread(self._create, ctx)
        except docker.errors.DockerException as exc:
            raise DockerUnavailable(f"cannot start a sandbox container from {self.image!r}: "
                                    f"{_short(exc)}") from None
        sandbox = DockerSandbox(self, ctx, container)
        sandbox.oom_seen = await sandbox._cleanup()
        return sandbox

    def remove(self, container: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(container, force=True, v=True)

    def leftovers(self) -> list[str]:
        """Ids of this repository's sandbox containers, running or not."""
        found = self.api.containers(all=True, quiet=True, filters={
            "label": [f"{LABEL_SANDBOX}=1", f"{LABEL_ROOT}={self.root}"]})
        return [str(c["Id"]) for c in found]

    async def sweep(self) -> int:
        """Remove the containers a previous run on this repository left (a crash, a kill).

        Call it once at start, while holding the run lock: every container with this
        repository's label then belongs to a run that is over. Returns how many went.
        """
        def sweep() -> int:
            ids = self.leftovers()
            for container in ids:
                self.remove(container)
            return len(ids)

        return await asyncio.to_thread(sweep)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m agents.sandbox.docker build [TAG]`: make the host-toolchain image."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m agents.sandbox.docker",
                                     description="docker sandbox helpers")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the host-toolchain image (no pull needed)")
    build.add_argument("tag", nargs="?", default=LOCAL_IMAGE)
    args = parser.parse_args(argv)
    try:
        image = build_local_image(connect(), args.tag)
    except FactoryError as exc:
        print(f"error: {clean_line(str(exc))}")
        return 1
    print(f"built {args.tag} ({image[:19]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
