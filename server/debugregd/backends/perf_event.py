"""perf_event_open(2) for hardware breakpoints, through ctypes: no compiled extension.

Only what the perf backend needs: open a PERF_TYPE_BREAKPOINT counter, read its count, close it;
and the sampling variant whose every hit also writes a record (ip, thread, time, CPU, address) to a
ring buffer (`debugregd.backends.ring` maps and reads it). The layout of `perf_event_attr` is the
kernel's ABI up to PERF_ATTR_SIZE_VER1 (`bp_len`) for counters and PERF_ATTR_SIZE_VER3 (`clockid`)
for samplers; the kernel accepts any known size and zero-fills the fields it expects beyond it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import struct
from collections.abc import Sequence
from typing import Any, ClassVar

PERF_TYPE_BREAKPOINT = 5

HW_BREAKPOINT_R = 1
HW_BREAKPOINT_W = 2
HW_BREAKPOINT_RW = HW_BREAKPOINT_R | HW_BREAKPOINT_W
HW_BREAKPOINT_X = 4

# perf_event_attr flag bits (the bitfield word after read_format).
_DISABLED = 1 << 0
_EXCLUDE_KERNEL = 1 << 5
_EXCLUDE_HV = 1 << 6
_WATERMARK = 1 << 14  # wake the reader after wakeup_watermark bytes, not after N records
_USE_CLOCKID = 1 << 25

# sample_type bits; a sample record holds the chosen fields in the order of these bits.
PERF_SAMPLE_IP = 1 << 0
PERF_SAMPLE_TID = 1 << 1
PERF_SAMPLE_TIME = 1 << 2
PERF_SAMPLE_ADDR = 1 << 3
PERF_SAMPLE_CPU = 1 << 7
# What a hit says: where (ip), who (pid, tid), when (time), on which CPU, and the watched address
# (a breakpoint's sample address is its bp_addr, not the byte the instruction touched).
HIT_SAMPLE_TYPE = (
    PERF_SAMPLE_IP | PERF_SAMPLE_TID | PERF_SAMPLE_TIME | PERF_SAMPLE_ADDR | PERF_SAMPLE_CPU
)

# read_format bit: read(2) returns {count, lost}, lost being the samples the kernel dropped for
# want of room in the ring (Linux 6.0 and later).
PERF_FORMAT_LOST = 1 << 4

CLOCK_MONOTONIC = 1  # NMI-safe, so the kernel allows it for every PMU; time.monotonic_ns() reads it

PERF_EVENT_IOC_ENABLE = 0x2400  # _IO('$', 0)

PERF_FLAG_FD_CLOEXEC = 1 << 3

# The syscall has no libc wrapper, so its number is per architecture.
_SYSCALL_NUMBERS = {"x86_64": 298, "aarch64": 241, "ppc64le": 319, "ppc64": 319}

# An exec breakpoint's bp_len is the kernel's convention, not the instruction's length: x86 wants
# sizeof(long) (arch_build_bp_info rejects anything else).
EXEC_BP_LEN = ctypes.sizeof(ctypes.c_long) if platform.machine() == "x86_64" else 4

_COUNT = struct.Struct("=Q")  # read_format 0: one u64, the count
_COUNT_LOST = struct.Struct("=QQ")  # read_format PERF_FORMAT_LOST: the count, then lost samples


class PerfEventAttr(ctypes.Structure):
    """`struct perf_event_attr`, PERF_ATTR_SIZE_VER1 (72 bytes)."""

    # Declared as the general shape, so that SamplingAttr may extend it with fields of its own.
    _fields_: ClassVar[Sequence[tuple[str, type[ctypes._SimpleCData[Any]]]]] = (
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


class SamplingAttr(PerfEventAttr):
    """`struct perf_event_attr` up to PERF_ATTR_SIZE_VER3 (96 bytes): adds `clockid`, so sample
    times are on a clock the daemon can read too."""

    _fields_ = (
        ("branch_sample_type", ctypes.c_uint64),
        ("sample_regs_user", ctypes.c_uint64),
        ("sample_stack_user", ctypes.c_uint32),
        ("clockid", ctypes.c_int32),
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
    _fill_breakpoint(attr, bp_type, address, length, exclude_kernel, disabled)
    return attr


def _fill_breakpoint(
    attr: PerfEventAttr,
    bp_type: int,
    address: int,
    length: int,
    exclude_kernel: bool,
    disabled: bool,
) -> None:
    attr.type = PERF_TYPE_BREAKPOINT
    attr.size = ctypes.sizeof(attr)
    flags = _EXCLUDE_HV
    if exclude_kernel:
        flags |= _EXCLUDE_KERNEL
    if disabled:
        flags |= _DISABLED
    attr.flags = flags
    attr.bp_type = bp_type
    attr.bp_addr = address
    attr.bp_len = EXEC_BP_LEN if bp_type == HW_BREAKPOINT_X else length


def sampling_breakpoint_attr(
    bp_type: int,
    address: int,
    length: int,
    *,
    exclude_kernel: bool,
    wakeup_bytes: int,
    count_lost: bool = True,
) -> SamplingAttr:
    """A hardware breakpoint that also samples every hit (period 1, HIT_SAMPLE_TYPE, times on
    CLOCK_MONOTONIC), opened disabled so that no hit is counted before its ring buffer is mapped
    (without a buffer the kernel drops a sample without even counting it as lost). Its reader is
    woken once `wakeup_bytes` of records are waiting. With `count_lost`, read(2) also returns the
    samples lost (read_count_and_lost)."""
    attr = SamplingAttr()
    _fill_breakpoint(attr, bp_type, address, length, exclude_kernel, disabled=True)
    attr.sample_period = 1
    attr.sample_type = HIT_SAMPLE_TYPE
    attr.flags |= _WATERMARK | _USE_CLOCKID
    attr.wakeup_events = wakeup_bytes  # the union's wakeup_watermark, since _WATERMARK is set
    attr.clockid = CLOCK_MONOTONIC
    if count_lost:
        attr.read_format = PERF_FORMAT_LOST
    return attr


def enable(fd: int) -> None:
    """Start counting (and sampling) an event opened disabled."""
    fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)


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


def read_count_and_lost(fd: int) -> tuple[int, int]:
    """The event's count so far and the samples the kernel lost (read_format PERF_FORMAT_LOST)."""
    count, lost = _COUNT_LOST.unpack(os.read(fd, _COUNT_LOST.size))
    return count, lost


def open_breakpoint(bp_type: int, address: int, length: int, pid: int = 0, cpu: int = -1) -> int:
    """Open an enabled user-space breakpoint counter: the shortest path, for tests and probes."""
    return perf_event_open(breakpoint_attr(bp_type, address, length, exclude_kernel=True), pid, cpu)
