"""The watchpoint layer (DESIGN section 7): any range becomes the chunks one register each watches.

x86 follows gdb's `x86_handle_nonaligned_watchpoint`; arm64 cuts at doubleword boundaries (one
byte-address-select register per doubleword); POWER's DAWR covers 8-byte granules, at most 512
bytes, and before POWER10 never across a 512-byte boundary.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from debugregd.core import Access, InvalidRequest, Refused, make_profile
from debugregd.core.watch import Chunk, split_dawr, split_power_of_two, split_within_blocks
from tests.core.build import host, request, task

# gdb/nat/x86-dregs.c, x86_handle_nonaligned_watchpoint: row = bytes still to watch (capped at the
# largest register) - 1, column = address % largest register; the entry is the chunk size.
GDB_SIZE_TRY = (
    (1, 1, 1, 1, 1, 1, 1, 1),
    (2, 1, 2, 1, 2, 1, 2, 1),
    (2, 1, 2, 1, 2, 1, 2, 1),
    (4, 1, 2, 1, 4, 1, 2, 1),
    (4, 1, 2, 1, 4, 1, 2, 1),
    (4, 1, 2, 1, 4, 1, 2, 1),
    (4, 1, 2, 1, 4, 1, 2, 1),
    (8, 1, 2, 1, 4, 1, 2, 1),
)


def gdb_chunks(address: int, length: int, max_len: int) -> list[Chunk]:
    """gdb's loop, transcribed."""
    out = []
    while length > 0:
        align = address % max_len
        attempt = max_len - 1 if length > max_len else length - 1
        size = GDB_SIZE_TRY[attempt][align]
        out.append((address, size))
        address += size
        length -= size
    return out


def covers_exactly(chunks: tuple[Chunk, ...], address: int, length: int) -> bool:
    """The chunks are contiguous, in order, and together are exactly the range."""
    at = address
    for start, size in chunks:
        if start != at or size < 1:
            return False
        at += size
    return at == address + length


# ------------------------------------------------------------------ x86: gdb's rule


@settings(max_examples=300, deadline=None)
@given(address=st.integers(0, 1 << 47), length=st.integers(1, 64), max_len=st.sampled_from([4, 8]))
def test_x86_chunks_are_gdbs(address: int, length: int, max_len: int) -> None:
    assert list(split_power_of_two(address, length, max_len)) == gdb_chunks(
        address, length, max_len
    )


@settings(max_examples=300, deadline=None)
@given(address=st.integers(0, 1 << 47), length=st.integers(1, 64))
def test_x86_chunks_are_aligned_powers_of_two_covering_the_range(address: int, length: int) -> None:
    chunks = split_power_of_two(address, length, 8)
    assert covers_exactly(chunks, address, length)
    for start, size in chunks:
        assert size in (1, 2, 4, 8) and start % size == 0


@pytest.mark.parametrize(
    ("address", "length", "chunks"),
    [
        (0x1000, 8, [(0x1000, 8)]),
        (0x1000, 16, [(0x1000, 8), (0x1008, 8)]),
        (0x1004, 4, [(0x1004, 4)]),
        (0x1004, 8, [(0x1004, 4), (0x1008, 4)]),
        (0x1001, 3, [(0x1001, 1), (0x1002, 2)]),
        (0x1006, 4, [(0x1006, 2), (0x1008, 2)]),
        (0x1000, 3, [(0x1000, 2), (0x1002, 1)]),
        (0x1003, 9, [(0x1003, 1), (0x1004, 4), (0x1008, 4)]),
        (0x1000, 7, [(0x1000, 4), (0x1004, 2), (0x1006, 1)]),
    ],
)
def test_x86_splits_unaligned_and_long_ranges_as_gdb_does(
    address: int, length: int, chunks: list[Chunk]
) -> None:
    assert list(make_profile("x86_64").chunks(address, length, Access.WRITE)) == chunks


def test_x86_range_needing_more_registers_than_dr0_to_dr3_is_invalid() -> None:
    arb = host()
    with pytest.raises(InvalidRequest, match="needs 7 registers but the dr pool has 4"):
        arb.allocate(None, request(task(1), 0x1001, 32), 0)


def test_x86_range_of_exactly_four_registers_takes_all_four() -> None:
    arb = host()
    alloc, _ = arb.allocate(None, request(task(1), 0x1000, 32), 0)
    assert [r["index"] for r in alloc.registers()] == [0, 1, 2, 3]


# ------------------------------------------------------------------ arm64: doublewords


@settings(max_examples=300, deadline=None)
@given(address=st.integers(0, 1 << 47), length=st.integers(1, 64))
def test_arm64_chunks_stay_inside_one_doubleword_each(address: int, length: int) -> None:
    chunks = split_within_blocks(address, length, 8)
    assert covers_exactly(chunks, address, length)
    for start, size in chunks:
        assert start // 8 == (start + size - 1) // 8
    touched = (address + length - 1) // 8 - address // 8 + 1
    assert len(chunks) == touched


@pytest.mark.parametrize(
    ("address", "length", "chunks"),
    [
        (0x1000, 8, [(0x1000, 8)]),
        (0x1003, 3, [(0x1003, 3)]),  # byte-address-select: any bytes of one doubleword
        (0x1004, 8, [(0x1004, 4), (0x1008, 4)]),
        (0x1007, 2, [(0x1007, 1), (0x1008, 1)]),
        (0x1007, 10, [(0x1007, 1), (0x1008, 8), (0x1010, 1)]),
    ],
)
def test_arm64_splits_data_ranges_at_doubleword_boundaries(
    address: int, length: int, chunks: list[Chunk]
) -> None:
    assert list(make_profile("arm64").chunks(address, length, Access.RW)) == chunks


def test_arm64_data_range_needing_more_watchpoints_than_the_pool_is_invalid() -> None:
    arb = host("arm64", pools={"wrp": 2})
    with pytest.raises(InvalidRequest, match="needs 3 registers but the wrp pool has 2"):
        arb.allocate(None, request(task(1), 0x1007, 10), 0)


# ------------------------------------------------------------------ ppc64: the DAWR


@settings(max_examples=300, deadline=None)
@given(address=st.integers(0, 1 << 40), length=st.integers(1, 2048), power10=st.booleans())
def test_dawr_chunks_are_granules_of_at_most_512_bytes(
    address: int, length: int, power10: bool
) -> None:
    chunks = split_dawr(address, length, 8, 512, cross=power10)
    start = address - address % 8
    end = -(-(address + length) // 8) * 8
    assert covers_exactly(chunks, start, end - start)
    for at, size in chunks:
        assert at % 8 == 0 and size % 8 == 0 and 0 < size <= 512
        if not power10:
            assert at // 512 == (at + size - 1) // 512, "crosses a 512-byte boundary"
    if power10:
        assert len(chunks) == -(-(end - start) // 512)
    else:
        assert len(chunks) == (end - 1) // 512 - start // 512 + 1


@pytest.mark.parametrize(
    ("dawr", "address", "length", "chunks"),
    [
        (1, 0x1004, 2, [(0x1000, 8)]),  # widened to its 8-byte granule
        (1, 0x1000, 512, [(0x1000, 512)]),
        (1, 0x11F8, 8, [(0x11F8, 8)]),
        (2, 0x11F8, 16, [(0x11F8, 16)]),  # POWER10 may cross the 512-byte boundary
        (2, 0x2000, 1024, [(0x2000, 512), (0x2200, 512)]),
        (2, 0x11F8, 600, [(0x11F8, 512), (0x13F8, 88)]),
    ],
)
def test_ppc64_dawr_ranges(dawr: int, address: int, length: int, chunks: list[Chunk]) -> None:
    profile = make_profile("ppc64", {"dawr": dawr})
    assert list(profile.chunks(address, length, Access.WRITE)) == chunks


def test_ppc64_before_power10_a_range_crossing_512_bytes_needs_two_dawrs_and_is_invalid() -> None:
    assert split_dawr(0x11F8, 16, 8, 512, cross=False) == ((0x11F8, 8), (0x1200, 8))
    arb = host("ppc64")
    with pytest.raises(InvalidRequest, match="needs 2 registers but the dawr pool has 1"):
        arb.allocate(None, request(task(1), 0x11F8, 16), 0)


def test_ppc64_range_longer_than_512_bytes_is_invalid_with_one_dawr() -> None:
    arb = host("ppc64")
    with pytest.raises(InvalidRequest):
        arb.allocate(None, request(task(1), 0x1000, 520), 0)


def test_a_split_range_is_allocated_all_or_none() -> None:
    arb = host()
    arb.allocate(None, request(task(1), 0x2000, 8), 0)
    arb.allocate(None, request(task(1), 0x3000, 8), 0)
    arb.allocate(None, request(task(1), 0x4000, 8), 0)
    before = arb.snapshot()
    with pytest.raises(Refused, match="no room"):
        arb.allocate(None, request(task(1), 0x1004, 8), 0)  # two registers, one free
    assert arb.snapshot() == before
