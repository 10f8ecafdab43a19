"""perf_event_open(2) for hardware breakpoints, through ctypes: no compiled extension.

Only what the perf backend needs: open a PERF_TYPE_BREAKPOINT counter, read its count, close it.
The layout of `perf_event_attr` is the kernel's ABI up to PERF_ATTR_SIZE_VER1 (`bp_len`); the
kernel accepts any known size and zero-fills the fields it expects beyond it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

PERF_TYPE_BREAKPOINT = 5

HW_BREAKPOINT_R = 1
HW_BREAKPOINT_W = 2
HW_BREAKPOINT_RW = HW_BREAKPOINT_R | HW_BREAKPOINT_W
HW_BREAKPOINT_X = 4

# perf_event_attr flag bits (the bitfield word after read_format).
_DISABLED = 1 << 0
_EXCLUDE_KERNEL = 1 << 5
_EXCLUDE_HV = 1 << 6

PERF_FLAG_FD_CLOEXEC = 1 << 3

# The syscall has no libc wrapper, so its number is per architecture.
_SYSCALL_NUMBERS = {"x86_64": 298, "aarch64": 241, "ppc64le": 319, "ppc64": 319}

# An exec breakpoint's bp_len is the kernel's convention, not the instruction's length: x86 wants
# sizeof(long) (arch_build_bp_info rejects anything else).
EXEC_BP_LEN = ctypes.sizeof(ctypes.c_long) if platform.machine() == "x86_64" else 4

_COUNT = struct.Struct("=Q")  # read_format 0: one u64, the count


class PerfEventAttr(ctypes.Structure):
    """`struct perf_event_attr`, PERF_ATTR_SIZE_VER1 (72 bytes)."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("bp_addr", ctypes.c_uint64),
        ("bp_len", ctypes.c_uint64),
    )


class PerfEventError(OSError):
    """perf_event_open failed; `errno` says why."""

    errno: int  # always set: raised only with the errno the syscall returned


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def breakpoint_attr(
    bp_type: int, address: int, length: int, *, exclude_kernel: bool, disabled: bool = False
) -> PerfEventAttr:
    """The attributes of one counting (never sampling) hardware breakpoint."""
    attr = PerfEventAttr()
    attr.type = PERF_TYPE_BREAKPOINT
    attr.size = ctypes.sizeof(PerfEventAttr)
    flags = _EXCLUDE_HV
    if exclude_kernel:
        flags |= _EXCLUDE_KERNEL
    if disabled:
        flags |= _DISABLED
    attr.flags = flags
    attr.bp_type = bp_type
    attr.bp_addr = address
    attr.bp_len = EXEC_BP_LEN if bp_type == HW_BREAKPOINT_X else length
    return attr


def perf_event_open(attr: PerfEventAttr, pid: int, cpu: int, group_fd: int = -1) -> int:
    """Open a perf event (close-on-exec) and return its fd; raises PerfEventError with errno."""
    number = _SYSCALL_NUMBERS.get(platform.machine())
    if number is None:
        raise PerfEventError(errno.ENOSYS, f"perf_event_open: unknown on {platform.machine()}")
    # Every argument as a C long: syscall(2) is variadic and reads each one as a long.
    fd = _syscall(
        ctypes.c_long(number),
        ctypes.byref(attr),
        ctypes.c_long(pid),
        ctypes.c_long(cpu),
        ctypes.c_long(group_fd),
        ctypes.c_long(PERF_FLAG_FD_CLOEXEC),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise PerfEventError(err, os.strerror(err))
    return int(fd)


def read_count(fd: int) -> int:
    """The event's count so far (read_format 0)."""
    count: int = _COUNT.unpack(os.read(fd, _COUNT.size))[0]
    return count


def open_breakpoint(bp_type: int, address: int, length: int, pid: int = 0, cpu: int = -1) -> int:
    """Open an enabled user-space breakpoint counter: the shortest path, for tests and probes."""
    return perf_event_open(breakpoint_attr(bp_type, address, length, exclude_kernel=True), pid, cpu)
