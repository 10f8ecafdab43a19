"""Reading a sampling breakpoint's ring buffer, on hand-built bytes: samples come out as the kernel
wrote them, LOST records are summed, other records skipped, records that straddle the end of the
ring are unwrapped, and data_tail moves only past what was consumed."""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from debugregd.backends.ring import (
    PERF_RECORD_LOST,
    SAMPLE_SIZE,
    Sample,
    SampleBatch,
    SampleReader,
    parse_records,
)

PAGE = mmap.PAGESIZE
PERF_RECORD_THROTTLE = 5


def sample(i: int) -> Sample:
    return Sample(ip=0x401000 + i, pid=100, tid=100 + i % 3, time=1_000 + i, cpu=i % 2, addr=0x4040)


def samples(n: int, start: int = 0) -> list[Sample]:
    return [sample(i) for i in range(start, start + n)]


def record(samples_: list[Sample]) -> bytes:
    return SampleBatch.of(samples_).data


def lost_record(lost: int) -> bytes:
    return struct.pack("=IHHQQ", PERF_RECORD_LOST, 0, 24, 7, lost)


def throttle_record() -> bytes:
    return struct.pack("=IHHQQQ", PERF_RECORD_THROTTLE, 0, 32, 1, 2, 3)


def test_samples_come_out_as_they_were_written() -> None:
    batch, lost, consumed = parse_records(record(samples(5)))
    assert list(batch) == samples(5)
    assert (lost, consumed) == (0, 5 * SAMPLE_SIZE)


def test_a_batch_gives_its_columns_in_order() -> None:
    batch = SampleBatch.of(samples(4))
    assert batch.ips() == [s.ip for s in samples(4)]
    assert batch.pids() == [100] * 4
    assert batch.tids() == [s.tid for s in samples(4)]
    assert batch.times() == [s.time for s in samples(4)]
    assert batch.cpus() == [s.cpu for s in samples(4)]
    assert batch.addrs() == [0x4040] * 4
    assert list(batch.head(2)) == samples(2)


def test_a_value_every_sample_shares_is_found_and_a_varied_one_is_not() -> None:
    batch = SampleBatch.of(samples(6))  # one pid, one addr; three tids, two CPUs
    assert (batch.shared("pid"), batch.shared("addr")) == (100, 0x4040)
    assert (batch.shared("tid"), batch.shared("cpu"), batch.shared("ip")) == (None, None, None)
    assert SampleBatch().shared("pid") is None


def test_lost_records_are_summed_and_samples_around_them_kept() -> None:
    region = record(samples(3)) + lost_record(40) + record(samples(2, 3)) + lost_record(2)
    batch, lost, consumed = parse_records(region)
    assert list(batch) == samples(5)
    assert (lost, consumed) == (42, len(region))


def test_records_other_than_samples_and_lost_are_skipped() -> None:
    region = throttle_record() + record(samples(2)) + throttle_record()
    batch, lost, consumed = parse_records(region)
    assert (list(batch), lost, consumed) == (samples(2), 0, len(region))


def test_a_limit_takes_that_many_samples_and_consumes_nothing_after_them() -> None:
    region = record(samples(10))
    batch, _lost, consumed = parse_records(region, limit=4)
    assert list(batch) == samples(4)
    assert consumed == 4 * SAMPLE_SIZE
    batch, _lost, consumed = parse_records(region[consumed:], limit=None)
    assert list(batch) == samples(6, 4)


def test_a_lost_record_at_the_limit_is_still_consumed() -> None:
    region = record(samples(2)) + lost_record(9) + record(samples(1, 2))
    batch, lost, consumed = parse_records(region, limit=2)
    assert (len(batch), lost, consumed) == (2, 9, 2 * SAMPLE_SIZE + 24)


def test_a_record_cut_short_is_left_for_the_next_read() -> None:
    region = record(samples(3))
    batch, _lost, consumed = parse_records(region[: 2 * SAMPLE_SIZE + 16])
    assert (len(batch), consumed) == (2, 2 * SAMPLE_SIZE)


def test_a_sample_of_another_layout_is_refused() -> None:
    wrong = struct.pack("=IHHQ", 9, 0, 16, 0x401000)
    with pytest.raises(ValueError, match="sample_type"):
        parse_records(wrong)


class FakeRing:
    """A file laid out as a perf mapping (metadata page, then data pages), for SampleReader to map
    instead of an event: the test plays the kernel."""

    def __init__(self, path: Path, data_pages: int) -> None:
        self.size = data_pages * PAGE
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self.fd, (1 + data_pages) * PAGE)
        os.pwrite(self.fd, struct.pack("=QQ", PAGE, self.size), 1040)
        self.head = 0

    def write(self, data: bytes) -> None:
        """Append records at data_head, wrapping at the end, then publish the new head."""
        start = self.head % self.size
        first = data[: self.size - start]
        os.pwrite(self.fd, first, PAGE + start)
        os.pwrite(self.fd, data[len(first) :], PAGE)
        self.head += len(data)
        os.pwrite(self.fd, struct.pack("=Q", self.head), 1024)

    def tail(self) -> int:
        tail: int = struct.unpack("=Q", os.pread(self.fd, 8, 1032))[0]
        return tail


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeRing, SampleReader]]:
    ring = FakeRing(tmp_path / "ring", data_pages=1)
    reader = SampleReader(os.dup(ring.fd), data_pages=1)
    yield ring, reader
    reader.close()
    os.close(ring.fd)


def test_reader_unwraps_records_that_straddle_the_end_of_the_ring(
    fake: tuple[FakeRing, SampleReader],
) -> None:
    ring, reader = fake
    per_ring = ring.size // SAMPLE_SIZE  # 85 in a 4 KiB page, leaving 16 bytes at the end
    ring.write(record(samples(per_ring)))
    assert list(reader.drain().samples) == samples(per_ring)
    # The next sample starts 16 bytes before the end: 16 bytes there, 32 at the start.
    ring.write(record(samples(3, per_ring)) + lost_record(5))
    drained = reader.drain()
    assert list(drained.samples) == samples(3, per_ring)
    assert (drained.lost, drained.pending) == (5, False)
    assert ring.tail() == ring.head


def test_reader_stores_the_tail_only_past_what_it_consumed(
    fake: tuple[FakeRing, SampleReader],
) -> None:
    ring, reader = fake
    ring.write(record(samples(10)))
    drained = reader.drain(limit=3)
    assert list(drained.samples) == samples(3)
    assert drained.pending
    assert ring.tail() == 3 * SAMPLE_SIZE
    drained = reader.drain()
    assert (list(drained.samples), drained.pending) == (samples(7, 3), False)
    assert reader.drain().samples.data == b""


def test_reader_wants_a_power_of_two_of_data_pages(tmp_path: Path) -> None:
    ring = FakeRing(tmp_path / "ring", data_pages=3)
    try:
        with pytest.raises(ValueError, match="power of two"):
            SampleReader(ring.fd, data_pages=3)
    finally:
        os.close(ring.fd)
