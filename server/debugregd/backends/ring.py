"""The ring buffer of a sampling hardware breakpoint: map it, read its records, hand out samples.

Layout (kernel ABI, include/uapi/linux/perf_event.h): one metadata page (`perf_event_mmap_page`,
whose data_head is at byte 1024, data_tail at 1032, data_offset at 1040, data_size at 1048), then
2^n data pages of 8-byte-aligned records, each opening with `perf_event_header` {u32 type; u16 misc;
u16 size}. The kernel appends at data_head; the reader consumes from data_tail and stores it back.
Both count bytes since the start and only grow; a position in the buffer is the count modulo
data_size, so a record can wrap around the end. While the mapping is writable the kernel never
overwrites unread records: a sample that finds no room is dropped and counted, and a LOST record
carrying that count is written once there is room again.

Ordering. The kernel writes records, then (smp_wmb) data_head; a reader must load data_head, then
(smp_rmb) read the records, then (smp_mb) store data_tail. On x86-64 loads are not reordered with
older loads and stores are not reordered with older loads (TSO), so both barriers are compiler
barriers only; perf's own tool emits plain moves there. CPython adds no reordering of its own: each
access is a separate C call (a ctypes getter or setter, an mmap slice's memcpy) made in bytecode
order, and the aligned 8-byte ctypes accesses compile to single moves, which cannot tear. A weakly
ordered CPU (arm64, ppc64) needs real fence instructions that Python cannot emit, so the reader
refuses to map the ring there.

Exact counts never come from the samples: the counter (`SampleReader.totals()`, read(2) of the
same fd) counts every hit, including those whose samples the kernel dropped or the reader has not
consumed yet, and, since Linux 6.0 (PERF_FORMAT_LOST), the samples dropped so far. A LOST record
says the same but only once a later sample finds room, so it is the fallback for older kernels.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import select
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

from debugregd.backends import perf_event

PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9

_HEADER = struct.Struct("=IHH")  # perf_event_header: type, misc, size
_LOST = struct.Struct("=QQ")  # after the header: id, lost
# A HIT_SAMPLE_TYPE record: header, ip, pid, tid, time, addr, cpu, reserved.
_SAMPLE = struct.Struct("=IHHQIIQQII")
SAMPLE_SIZE = _SAMPLE.size  # 48
_MISC_USER = 2  # PERF_RECORD_MISC_USER: the hit was in user space
_SAMPLE_TYPE_FIELD = struct.pack("=I", PERF_RECORD_SAMPLE)
_SAMPLE_SIZE_FIELD = struct.pack("=H", SAMPLE_SIZE)

# Offsets in the metadata page (struct perf_event_mmap_page).
_DATA_HEAD, _DATA_TAIL, _DATA_OFFSET, _DATA_SIZE = 1024, 1032, 1040, 1048

DEFAULT_DATA_PAGES = 32  # 128 KiB with 4 KiB pages: about 2,700 samples between two drains
WAKEUP_FRACTION = 4  # the reader is woken each time a quarter of the ring has been written

_TSO_MACHINES = frozenset({"x86_64", "AMD64", "i386", "i686"})


class Sample(NamedTuple):
    """One sampled hit: where (ip), who (pid = process, tid = thread), when (nanoseconds of
    CLOCK_MONOTONIC), on which CPU, and the watched address (the breakpoint's, not the byte)."""

    ip: int
    pid: int
    tid: int
    time: int
    cpu: int
    addr: int


Column = Literal["ip", "pid", "tid", "time", "addr", "cpu"]
# Each field of a sample record as (memoryview format, index in units of it, stride: 48 bytes).
_COLUMNS: dict[Column, tuple[Literal["Q", "I"], int, int]] = {
    "ip": ("Q", 1, 6),
    "pid": ("I", 4, 12),
    "tid": ("I", 5, 12),
    "time": ("Q", 3, 6),
    "addr": ("Q", 4, 6),
    "cpu": ("I", 10, 12),
}


class SampleBatch:
    """Sample records back to back, as the kernel wrote them (SAMPLE_SIZE bytes each). Columns are
    cut out in C (strided memoryviews), so a batch costs no Python work per sample until it is
    iterated."""

    __slots__ = ("data",)

    def __init__(self, data: bytes = b"") -> None:
        if len(data) % SAMPLE_SIZE:
            raise ValueError(f"{len(data)} bytes is not a whole number of samples")
        self.data = data

    @classmethod
    def of(cls, samples: Iterable[Sample]) -> SampleBatch:
        """Pack samples as the kernel would (for tests and for injected hits)."""
        return cls(
            b"".join(
                _SAMPLE.pack(PERF_RECORD_SAMPLE, _MISC_USER, SAMPLE_SIZE, *_fields(s), 0)
                for s in samples
            )
        )

    def __len__(self) -> int:
        return len(self.data) // SAMPLE_SIZE

    def __iter__(self) -> Iterator[Sample]:
        for _t, _m, _s, ip, pid, tid, time, addr, cpu, _r in _SAMPLE.iter_unpack(self.data):
            yield Sample(ip, pid, tid, time, cpu, addr)

    def __add__(self, other: SampleBatch) -> SampleBatch:
        return SampleBatch(self.data + other.data)

    def __repr__(self) -> str:
        return f"SampleBatch({len(self)} samples)"

    def head(self, n: int) -> SampleBatch:
        """The first `n` samples."""
        return SampleBatch(self.data[: max(n, 0) * SAMPLE_SIZE])

    def ips(self) -> list[int]:
        return self.column("ip").tolist()

    def pids(self) -> list[int]:
        return self.column("pid").tolist()

    def tids(self) -> list[int]:
        return self.column("tid").tolist()

    def times(self) -> list[int]:
        return self.column("time").tolist()

    def addrs(self) -> list[int]:
        return self.column("addr").tolist()

    def cpus(self) -> list[int]:
        return self.column("cpu").tolist()

    def column(self, name: Column) -> memoryview[int]:
        """One field of every sample, as a strided view of the records (no copy)."""
        code, first, stride = _COLUMNS[name]
        return memoryview(self.data).cast(code)[first::stride]

    def shared(self, name: Column) -> int | None:
        """The value every sample has in `name`, or None if they differ (or there are none).
        Compared as bytes, in C: no Python int per sample."""
        column = self.column(name)
        if not len(column):
            return None
        value: int = column[0]
        return value if column.tobytes() == column[:1].tobytes() * len(column) else None


def _fields(s: Sample) -> tuple[int, int, int, int, int, int]:
    return s.ip, s.pid, s.tid, s.time, s.addr, s.cpu  # the record's order


class Totals(NamedTuple):
    """Everything one sampling event has seen: every hit, and the samples of those hits that the
    kernel dropped because the ring was full. The other hits' samples were or will be drained."""

    hits: int
    lost: int


@dataclass(frozen=True, slots=True)
class Drained:
    """What one drain took from the ring."""

    samples: SampleBatch
    # Samples the kernel dropped for want of room, from the LOST records consumed. totals() already
    # counts them (its lost comes from these records only on kernels before 6.0): add one, not both.
    lost: int
    pending: bool  # records were left in the ring (the drain's limit was reached)


def parse_records(region: bytes, limit: int | None = None) -> tuple[SampleBatch, int, int]:
    """Parse whole records from the start of `region` (ring bytes in order, already unwrapped):
    the samples (at most `limit`), the samples LOST records say the kernel dropped, and how many
    bytes were consumed. Records other than SAMPLE and LOST are skipped; a record cut short by the
    end of `region` is left for the next call. Raises ValueError on a sample of another layout."""
    n = len(region) - len(region) % 8
    view = memoryview(region)[:n]
    words, halves = view.cast("I"), view.cast("H")
    runs: list[memoryview] = []
    lost = taken = pos = 0
    while pos < n:
        room = (n - pos) // SAMPLE_SIZE
        if limit is not None:
            room = min(room, limit - taken)
        run = _sample_run(words, halves, pos, room) if room > 0 else 0
        if run:
            runs.append(view[pos : pos + run * SAMPLE_SIZE])
            pos += run * SAMPLE_SIZE
            taken += run
            continue
        if n - pos < _HEADER.size:
            break
        rtype, _misc, size = _HEADER.unpack_from(view, pos)
        if size < _HEADER.size or pos + size > n:
            break
        if rtype == PERF_RECORD_SAMPLE:
            if size != SAMPLE_SIZE:
                raise ValueError(f"a {size}-byte sample: the event's sample_type is not HIT's")
            break  # the limit is reached
        if rtype == PERF_RECORD_LOST:
            lost += _LOST.unpack_from(view, pos + _HEADER.size)[1]
        pos += size
    return SampleBatch(b"".join(runs)), lost, pos


def _sample_run(words: memoryview, halves: memoryview, start: int, slots: int) -> int:
    """How many consecutive sample records begin at byte `start`, up to `slots`. The usual ring
    holds only samples, so the type and size of every 48-byte slot are compared at once, in C;
    only a run broken by another record is walked to find where it breaks."""
    first = start // 4
    types = words[first : first + 12 * slots : 12]
    sizes = halves[2 * first + 3 : 2 * first + 3 + 24 * slots : 24]
    if types.tobytes() == _SAMPLE_TYPE_FIELD * slots and sizes.tobytes() == (
        _SAMPLE_SIZE_FIELD * slots
    ):
        return slots
    for i, (rtype, size) in enumerate(zip(types.tolist(), sizes.tolist(), strict=True)):
        if rtype != PERF_RECORD_SAMPLE or size != SAMPLE_SIZE:
            return i
    return slots


class SampleReader:
    """The mapped ring of one sampling breakpoint event, which it owns (closing it closes the fd).

    Used from an event loop: `loop.add_reader(reader.fd, callback)` with a callback that calls
    `drain()`. The kernel wakes the fd once a quarter of the ring has been written since the last
    wakeup (the watermark given at open) and when the watched task exits, and not again while the
    ring is full; so drain on a timer too: records below the watermark, and a ring a limit left
    full, wait for it. Once `exited` is true the fd stays readable for good: remove the reader
    (records may remain: drain them, then close).
    """

    def __init__(
        self, fd: int, data_pages: int = DEFAULT_DATA_PAGES, *, counts_lost: bool = True
    ) -> None:
        """Map the ring of `fd`, opened with sampling_breakpoint_attr (`counts_lost` as given)."""
        if platform.machine() not in _TSO_MACHINES:
            raise OSError(
                errno.ENOTSUP, f"reading a perf ring needs memory fences on {platform.machine()}"
            )
        if data_pages < 1 or data_pages & (data_pages - 1):
            raise ValueError(f"data_pages must be a power of two, not {data_pages}")
        self.fd = fd
        self.exited = False
        self._counts_lost = counts_lost
        self._lost_records = 0  # the sum of the LOST records drained, where read(2) has no lost
        page = mmap.PAGESIZE
        self._mm = mmap.mmap(fd, (1 + data_pages) * page, mmap.MAP_SHARED)
        self._head = ctypes.c_uint64.from_buffer(self._mm, _DATA_HEAD)
        self._tail = ctypes.c_uint64.from_buffer(self._mm, _DATA_TAIL)
        # Kernels before 4.1 leave these zero: the data then starts at the second page.
        offset, size = struct.unpack_from("=QQ", self._mm, _DATA_OFFSET)
        self._offset = offset or page
        self._size = size or data_pages * page
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    @property
    def size(self) -> int:
        """Bytes of records the ring holds."""
        return self._size

    def totals(self) -> Totals:
        """The exact number of hits so far, sampled or not, and the samples lost so far."""
        if self._counts_lost:
            return Totals(*perf_event.read_count_and_lost(self.fd))
        return Totals(perf_event.read_count(self.fd), self._lost_records)

    def enable(self) -> None:
        """Start counting and sampling (the event is opened disabled)."""
        perf_event.enable(self.fd)

    def drain(self, limit: int | None = None) -> Drained:
        """Consume the waiting records, at most `limit` samples of them; what is left stays in the
        ring (and, once it is full, the kernel counts what it drops in a LOST record)."""
        head = self._head.value
        tail = self._tail.value  # only this reader stores it
        waiting = head - tail
        if waiting > self._size:
            raise RuntimeError(f"perf ring: data_head {head} is past data_tail {tail} + its size")
        drained = Drained(SampleBatch(), 0, waiting > 0)
        if waiting > 0:
            if limit is not None:
                # Enough for `limit` samples and the odd LOST record among them, not the whole ring.
                waiting = min(waiting, limit * SAMPLE_SIZE + 4096)
            samples, lost, consumed = parse_records(self._copy(tail, waiting), limit)
            if consumed:
                self._tail.value = tail + consumed
                self._lost_records += lost
                drained = Drained(samples, lost, tail + consumed != head)
        # Woken with nothing taken: the task may be gone (a hangup, which stays readable for good,
        # even with records left in the ring).
        if drained.samples.data == b"" and not drained.lost and self._hung_up():
            self.exited = True
        return drained

    def close(self) -> None:
        """Unmap the ring and close the event."""
        if self.fd < 0:
            return
        self._poll.unregister(self.fd)
        del self._head, self._tail  # views into the mapping: it cannot close while they live
        self._mm.close()
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> SampleReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _copy(self, tail: int, length: int) -> bytes:
        start = self._offset + tail % self._size
        end = self._offset + self._size
        if start + length <= end:
            return self._mm[start : start + length]
        return self._mm[start:end] + self._mm[self._offset : self._offset + start + length - end]

    def _hung_up(self) -> bool:
        # Asked only when a drain took nothing: polling also consumes the kernel's pending POLLIN,
        # so a wakeup for records left by a limit is lost, and the caller's timer drains them.
        return any(events & select.POLLHUP for _fd, events in self._poll.poll(0))


def open_sampler(
    bp_type: int,
    address: int,
    length: int,
    pid: int,
    cpu: int = -1,
    *,
    exclude_kernel: bool = True,
    data_pages: int = DEFAULT_DATA_PAGES,
) -> SampleReader:
    """Open a sampling hardware breakpoint on (pid, cpu) as perf_event_open takes them, map its
    ring, then enable it: no hit is counted before its sample can be written. Raises
    PerfEventError (ENOSPC: the registers are taken) or OSError from mmap."""
    wakeup = data_pages * mmap.PAGESIZE // WAKEUP_FRACTION
    fd, counts_lost = -1, True
    for counts_lost in (True, False):
        attr = perf_event.sampling_breakpoint_attr(
            bp_type,
            address,
            length,
            exclude_kernel=exclude_kernel,
            wakeup_bytes=wakeup,
            count_lost=counts_lost,
        )
        try:
            fd = perf_event.perf_event_open(attr, pid, cpu)
            break
        except perf_event.PerfEventError as exc:
            # Before Linux 6.0 PERF_FORMAT_LOST is unknown (EINVAL): LOST records count instead.
            if exc.errno != errno.EINVAL or not counts_lost:
                raise
    try:
        reader = SampleReader(fd, data_pages, counts_lost=counts_lost)
    except BaseException:
        os.close(fd)
        raise
    try:
        reader.enable()
    except BaseException:
        reader.close()
        raise
    return reader
