"""A seccomp filter that keeps sandboxed commands from making user namespaces of their own.

A nested user namespace makes a command root of it, with the whole of the kernel's
namespace code to attack from there. bubblewrap's --disable-userns prevents it, but cannot
be combined with the user namespace map the engine writes itself (identity.py); this filter
does the same job: unshare(2) and clone(2) with CLONE_NEWUSER fail with EPERM, and clone3(2)
(whose flags sit in memory a filter cannot read) with ENOSYS, so that libc falls back to
clone. Classic BPF, as `bwrap --seccomp FD` reads it.
"""

from __future__ import annotations

import platform
import struct

CLONE_NEWUSER = 0x10000000
_EPERM, _ENOSYS = 1, 38
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_X32 = 0x40000000
# seccomp_data: nr at 0, arch at 4, args[0] (low half, little endian) at 16.
_NR, _ARCH, _ARG0 = 0, 4, 16
# (audit arch, unshare, clone, clone3) per machine.
_TABLES = {
    "x86_64": (0xC000003E, 272, 56, 435),
    "aarch64": (0xC00000B7, 97, 220, 435),
}


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def no_user_namespaces(machine: str | None = None) -> bytes:
    """The filter for this machine; an empty one (allow all) where its numbers are unknown."""
    table = _TABLES.get(machine or platform.machine())
    if table is None:
        return _op(_RET, _RET_ALLOW)
    arch, unshare, clone, clone3 = table
    return b"".join([
        _op(_LD_ABS, _ARCH),                      # 0
        _op(_JEQ, arch, 1, 0),                    # 1: another ABI (i386, say): refused
        _op(_RET, _RET_ERRNO | _ENOSYS),          # 2
        _op(_LD_ABS, _NR),                        # 3
        _op(_JGE, _X32, 0, 1),                    # 4: x32 calls (same arch, high bit)
        _op(_RET, _RET_ERRNO | _ENOSYS),          # 5
        _op(_JEQ, clone3, 0, 1),                  # 6
        _op(_RET, _RET_ERRNO | _ENOSYS),          # 7
        _op(_JEQ, unshare, 1, 0),                 # 8 -> 10
        _op(_JEQ, clone, 0, 3),                   # 9 -> 10, else 13
        _op(_LD_ABS, _ARG0),                      # 10
        _op(_JSET, CLONE_NEWUSER, 0, 1),          # 11 -> 12, else 13
        _op(_RET, _RET_ERRNO | _EPERM),           # 12
        _op(_RET, _RET_ALLOW),                    # 13
    ])
