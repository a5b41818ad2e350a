"""Opening paths inside an agent's worktree without ever leaving it.

The file tools, search, the quota meter and the landing's dependency scan run in the
engine's process, with the engine's privileges, on a tree that a model's code wrote. Checking
a path and then opening it is not enough: a link planted beforehand, or swapped in between
the check and the open, sends the engine's write anywhere on the machine. So every path is
resolved by the kernel beneath a handle on the worktree's directory, refusing every symlink
on the way:

- `openat2(2)` with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV where the
  kernel has it (Linux 5.6+): one system call, and the kernel guarantees the result;
- otherwise a walk, one component at a time from the handle, each opened with O_NOFOLLOW
  and checked to be on the worktree's device.

Only regular files are read or written: a FIFO, socket or device is refused with a clear
error before it can block the engine's loop (files are opened O_NONBLOCK and checked with
fstat before any read). A write goes to a temporary file the engine creates exclusively
(O_CREAT | O_EXCL | O_NOFOLLOW, beneath the same directory handle), then renamed over the
target within that directory: whatever the agent puts at either name, the engine writes only
its own new file.

The file tools run here rather than in the agent's sandbox on purpose: a round trip into
the sandbox costs a process start per call (milliseconds), where these calls cost
microseconds, and the kernel's resolution gives the same confinement for paths.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import os
import posixpath
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# openat2(2): its number is the same in the generic and x86-64 tables.
_SYS_OPENAT2 = 437
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_NO_XDEV | _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_SYMLINKS | _RESOLVE_BENEATH

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_counter = itertools.count()


class PathDenied(Exception):
    """A path the engine will not open for an agent; the message says why."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _openat2(dirfd: int, rel: str, flags: int, mode: int = 0) -> int:
    # The kernel refuses a mode without O_CREAT.
    how = _OpenHow(flags, mode if flags & os.O_CREAT else 0, _RESOLVE)
    fd = _libc().syscall(_SYS_OPENAT2, dirfd, os.fsencode(rel), ctypes.byref(how),
                         ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), rel)
    return int(fd)


@functools.cache
def openat2_available() -> bool:
    """Whether this kernel (and any seccomp filter around us) lets openat2 through."""
    try:
        os.close(_openat2(-100, ".", _DIR_FLAGS))  # AT_FDCWD
    except OSError:
        return False
    return True


def _walk_open(dirfd: int, rel: str, flags: int, mode: int) -> int:
    """openat2's guarantees by hand: every component O_NOFOLLOW, on the handle's device."""
    device = os.fstat(dirfd).st_dev
    parts = rel.split("/")
    current = dirfd
    try:
        for part in parts[:-1]:
            child = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=current)
            if current != dirfd:
                os.close(current)
            current = child
            if os.fstat(current).st_dev != device:
                raise OSError(errno.EXDEV, "crosses a mount point", rel)
        fd = os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=current)
        if os.fstat(fd).st_dev != device:
            os.close(fd)
            raise OSError(errno.EXDEV, "crosses a mount point", rel)
        return fd
    finally:
        if current != dirfd:
            os.close(current)


def open_beneath(dirfd: int, rel: str, flags: int, mode: int = 0o644) -> int:
    """rel (already normalised: no '..', not absolute) opened beneath dirfd, following no
    symlink at any component; "" is the directory itself."""
    if not rel:
        rel = "."
    if openat2_available():
        return _openat2(dirfd, rel, flags, mode)
    if rel == ".":
        return os.open(".", flags, mode, dir_fd=dirfd)
    return _walk_open(dirfd, rel, flags, mode)


def _why(exc: OSError, raw: str) -> PathDenied:
    """What a refused open means, in words an agent can act on."""
    reasons = {
        errno.ELOOP: "a symbolic link is on the way (links are not followed)",
        errno.EXDEV: "it leads outside the worktree",
        errno.ENOENT: "no such file or folder",
        errno.ENOTDIR: "a part of the path is not a folder",
        errno.EISDIR: "it is a folder",
        errno.EACCES: "permission denied",
        errno.ENAMETOOLONG: "the name is too long",
        errno.EAGAIN: "a symbolic link or mount point is on the way",
    }
    return PathDenied(f"{raw}: {reasons.get(exc.errno or 0, exc.strerror or str(exc))}")


def kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def normalise(raw: str, root: Path) -> str:
    """The agent's path as a clean relative path ("" for the worktree itself).

    Resolved lexically, as a person reads it: `a/../b` is `b`; a path that climbs above the
    worktree, or an absolute one elsewhere, is refused before the kernel is asked.
    """
    if not raw or "\0" in raw:
        raise PathDenied("a non-empty path without NUL characters is required")
    path = raw
    if path.startswith("/"):
        prefix = str(root).rstrip("/") + "/"
        if path.rstrip("/") == str(root).rstrip("/"):
            return ""
        if not path.startswith(prefix):
            raise PathDenied(f"{raw}: absolute paths outside the worktree are not allowed")
        path = path[len(prefix):]
    clean = posixpath.normpath(path)
    if clean == ".":
        return ""
    if clean == ".." or clean.startswith("../"):
        raise PathDenied(f"{raw}: resolves outside the worktree")
    return clean


@dataclass(frozen=True)
class Written:
    """What a write does: the file, whether its content changes, its new size, and the
    size and file count deltas."""

    rel: str
    changed: bool
    size: int
    bytes_delta: int
    files_delta: int  # the file and the folders made for it
    folders: tuple[str, ...] = ()  # the folders made for it, shallow first


class Beneath:
    """A handle on one directory (a worktree); every path used through it stays inside.

    Use as a context manager: the handle is one file descriptor, opened for the calls of
    one tool and closed after.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            self.fd = os.open(root, _DIR_FLAGS)
        except OSError as exc:
            raise PathDenied(f"{root}: the worktree cannot be opened ({exc.strerror})") \
                from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Beneath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------

    def lstat(self, rel: str) -> os.stat_result | None:
        """The entry at rel itself (a link is not followed), None when there is none."""
        if not rel:
            return os.fstat(self.fd)
        parent, name = posixpath.split(rel)
        try:
            fd = open_beneath(self.fd, parent, _DIR_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _why(exc, rel) from None
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(fd)

    def open_dir(self, rel: str, raw: str | None = None) -> int:
        try:
            return open_beneath(self.fd, rel, _DIR_FLAGS)
        except OSError as exc:
            raise _why(exc, raw or rel) from None

    def read(self, rel: str, limit: int, raw: str | None = None) -> bytes:
        """A regular file's bytes; refused when it is anything else or larger than limit."""
        raw = raw or rel
        if not rel:
            raise PathDenied(f"{raw}: is the worktree itself, not a file")
        parent_rel, name = posixpath.split(rel)
        parent = self.open_dir(parent_rel, raw)
        try:
            fd = open_regular(parent, name, raw)
        finally:
            os.close(parent)
        try:
            return read_regular(fd, limit, raw)
        finally:
            os.close(fd)

    def walk(self, rel: str, *, skip: Callable[[str], bool], max_entries: int,
             deadline: float) -> Iterator[tuple[str, int, os.DirEntry[str]]]:
        """(relative path, its directory's fd, entry) for everything below rel, folders
        before their contents, never through a link; bounded by entries and time (see
        `WalkCut`)."""
        top = self.open_dir(rel)
        yield from walk_fd(top, rel, skip=skip, max_entries=max_entries, deadline=deadline)

    # -- writing ---------------------------------------------------------------------------

    def _missing(self, parent: str, raw: str) -> list[str]:
        """The folders on the way to parent that do not exist yet, shallow first."""
        parts = parent.split("/")
        for depth in range(1, len(parts) + 1):
            try:
                os.close(open_beneath(self.fd, "/".join(parts[:depth]), _DIR_FLAGS))
            except FileNotFoundError:
                return ["/".join(parts[:n]) for n in range(depth, len(parts) + 1)]
            except OSError as exc:
                raise _why(exc, raw) from None
        return []

    def _make(self, folders: list[str], raw: str, owner: tuple[int, int] | None) -> int:
        """Make the missing folders one by one beneath the handle; the last one, open."""
        parent = posixpath.dirname(folders[0])
        current = open_beneath(self.fd, parent, _DIR_FLAGS) if parent else os.dup(self.fd)
        try:
            for folder in folders:
                part = posixpath.basename(folder)
                try:
                    os.mkdir(part, 0o755, dir_fd=current)
                    made = True
                except FileExistsError:
                    made = False
                try:
                    child = open_beneath(current, part, _DIR_FLAGS)
                except OSError as exc:
                    raise _why(exc, raw) from None
                if made and owner is not None:
                    os.fchown(child, *owner)
                os.close(current)
                current = child
            return os.dup(current)
        finally:
            os.close(current)

    def write(self, rel: str, data: bytes, *, raw: str | None = None,
              owner: tuple[int, int] | None = None,
              check: Callable[[Written], None] | None = None) -> Written:
        """Replace (or create) the regular file at rel with data, through a temporary file.

        `owner` (uid, gid) is given to what the write creates, so that the agent's commands,
        which may run as another user, can change it later. `check` sees the write's effect
        (the folders it will make included) before anything is made or written (the quota)
        and may refuse it by raising.
        """
        raw = raw or rel
        if not rel:
            raise PathDenied(f"{raw}: is the worktree itself, not a file")
        folder, name = posixpath.split(rel)
        missing: list[str] = []
        try:
            parent = open_beneath(self.fd, folder, _DIR_FLAGS)
        except FileNotFoundError:
            missing = self._missing(folder, raw)
            parent = -1
        except OSError as exc:
            raise _why(exc, raw) from None
        try:
            old, changed = self._old(parent, name, data, raw) if parent >= 0 else (None, True)
            mode = stat.S_IMODE(old.st_mode) & 0o777 if old is not None else 0o644
            effect = Written(rel, changed, len(data), len(data) - (old.st_size if old else 0),
                             (0 if old else 1) + len(missing), tuple(missing))
            if check is not None:
                check(effect)
            if missing:
                parent = self._make(missing, raw, owner)
            if old is None and self._create(parent, name, data, mode, owner):
                return effect
            self._replace(parent, name, data, mode, owner, raw)
            return effect
        finally:
            if parent >= 0:
                os.close(parent)

    def _old(self, parent: int, name: str, data: bytes, raw: str) \
            -> tuple[os.stat_result | None, bool]:
        """The file a write replaces (refused unless regular and not hard-linked), and
        whether its content differs from data."""
        try:
            old = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None, True
        if not stat.S_ISREG(old.st_mode):
            raise PathDenied(f"{raw}: is {kind_of(old.st_mode)}; only regular files are "
                             "written")
        if old.st_nlink > 1:
            raise PathDenied(f"{raw}: refusing to use a hard-linked file")
        if old.st_size != len(data):
            return old, True
        try:
            fd = open_regular(parent, name, raw)
        except PathDenied:
            return old, True
        try:
            return old, read_regular(fd, len(data), raw) != data
        except PathDenied:
            return old, True
        finally:
            os.close(fd)

    @staticmethod
    def _create(parent: int, name: str, data: bytes, mode: int,
                owner: tuple[int, int] | None) -> bool:
        """Make a new file at its own name; False if something is there by now.

        O_EXCL makes a fresh file or fails, never following or opening what is there, so a
        new file needs no temporary one, and no rename (which, over a name, costs the
        filesystem a flush of the new data: a tenth of an agent's step).
        """
        try:
            fd = os.open(name, _TMP_FLAGS, mode, dir_fd=parent)
        except FileExistsError:
            return False
        try:
            _fill(fd, data, mode, owner)
        except OSError:
            try:
                os.unlink(name, dir_fd=parent)
            except OSError:
                pass
            raise
        return True

    def _replace(self, parent: int, name: str, data: bytes, mode: int,
                 owner: tuple[int, int] | None, raw: str) -> None:
        while True:
            tmp = f".factory-tmp-{os.getpid()}-{next(_counter)}"
            try:
                fd = os.open(tmp, _TMP_FLAGS, mode, dir_fd=parent)
                break
            except FileExistsError:
                continue  # planted, or left by a crash: never reused, never followed
        try:
            _fill(fd, data, mode, owner)
            os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except OSError as exc:
            try:
                os.unlink(tmp, dir_fd=parent)
            except OSError:
                pass
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise PathDenied(f"{raw}: is a folder; only regular files are written") \
                    from None
            raise


def _fill(fd: int, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    """Give a file the engine just made its owner, mode and data; closes fd."""
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        if mode & 0o7000 or mode != 0o644:
            os.fchmod(fd, mode & 0o777)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def open_regular(parent: int, name: str, raw: str) -> int:
    """name in the folder parent, opened for reading if it is a regular file with one link.

    Opened without following a link and without blocking (a FIFO opens at once), then
    checked twice: fstat says what was opened, and the name, looked at again, must still be
    that file with that one link. That refuses hard links planted from outside the sandbox;
    it narrows, but cannot close, the window of a process outside that swaps such a link
    away while the file is opened (a rename drops the link count before the old name stops
    resolving). Agents cannot race it: their commands cannot make a hard link to anything
    beyond their worktree's mount (EXDEV), and tests/security checks that.
    """
    try:
        fd = os.open(name, _READ_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ELOOP):  # a socket (or a lone device); a link
            try:
                info = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except OSError:
                raise _why(exc, raw) from None
            raise PathDenied(f"{raw}: is {kind_of(info.st_mode)}; only regular files are "
                             "read") from None
        raise _why(exc, raw) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PathDenied(f"{raw}: is {kind_of(info.st_mode)}; only regular files are read")
        if info.st_nlink > 1:
            raise PathDenied(f"{raw}: refusing to use a hard-linked file")
        try:
            again = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError:
            again = None
        if again is None or (again.st_dev, again.st_ino) != (info.st_dev, info.st_ino) \
                or again.st_nlink > 1:
            raise PathDenied(f"{raw}: changed while it was opened; try again")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(fd: int, limit: int, raw: str) -> bytes:
    """An opened file's bytes, if it is a regular file of at most limit bytes."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise PathDenied(f"{raw}: is {kind_of(info.st_mode)}; only regular files are read")
    if info.st_nlink > 1:
        # A hard link may share its inode with a file outside the worktree; checkouts and
        # the file tools never make one, so any met here was planted.
        raise PathDenied(f"{raw}: refusing to use a hard-linked file")
    if info.st_size > limit:
        raise PathDenied(f"{raw}: file larger than {limit} bytes")
    chunks = []
    left = limit + 1  # a file that grew since fstat is still cut at the limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    data = b"".join(chunks)
    if len(data) > limit:
        raise PathDenied(f"{raw}: file larger than {limit} bytes")
    return data


class WalkCut(Exception):
    """A walk stopped at its bound; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


MAX_DEPTH = 128


def walk_fd(top: int, rel: str, *, skip: Callable[[str], bool], max_entries: int,
            deadline: float) -> Iterator[tuple[str, int, os.DirEntry[str]]]:
    """Walk from an open directory fd (which it closes), depth first, in name order.

    Folders are opened beneath their parent with O_NOFOLLOW, so a link never leads the walk
    out; `skip(name)` prunes folders. One descriptor is open per level. Raises WalkCut past
    max_entries, MAX_DEPTH levels or the deadline (time.monotonic()), so a tree of a million
    files, or one folder nested a million times, costs a bounded time, never the loop.
    """
    def listing(fd: int) -> Iterator[os.DirEntry[str]]:
        """One folder's entries in name order; a folder holding more than the walk may
        visit is not read to its end (nor held in memory whole)."""
        room = max_entries - seen + 1
        entries = []
        with os.scandir(fd) as scan:
            for entry in scan:
                entries.append(entry)
                if len(entries) > room:
                    raise WalkCut(f"more than {max_entries} entries")
        entries.sort(key=lambda e: e.name)
        return iter(entries)

    stack: list[tuple[int, str, Iterator[os.DirEntry[str]]]] = []
    seen = 0
    try:
        stack.append((top, rel, listing(top)))
    except (OSError, WalkCut):
        os.close(top)
        raise
    try:
        while stack:
            fd, prefix, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                os.close(fd)
                stack.pop()
                continue
            seen += 1
            if seen > max_entries:
                raise WalkCut(f"more than {max_entries} entries")
            if seen % 512 == 0 and time.monotonic() > deadline:
                raise WalkCut("the time allowed ran out")
            path = f"{prefix}/{entry.name}" if prefix else entry.name
            yield path, fd, entry
            if entry.is_dir(follow_symlinks=False) and not skip(entry.name):
                if len(stack) >= MAX_DEPTH:
                    raise WalkCut(f"folders nested more than {MAX_DEPTH} deep")
                try:
                    child = os.open(entry.name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except OSError:
                    continue  # gone, or swapped for a link meanwhile
                try:
                    stack.append((child, path, listing(child)))
                except OSError:
                    os.close(child)
                except WalkCut:
                    os.close(child)
                    raise
    finally:
        for fd, _, _ in stack:
            os.close(fd)
