"""The watchpoint layer: split any range into chunks that one hardware register can watch.

A range that is unaligned or longer than one register covers takes several registers, all or none
(DESIGN section 7). Each profile has its own rule; x86's is gdb's (`x86-dregs.c`): the chunk size is
the largest length the hardware supports that both divides the address and fits what remains.
"""

from __future__ import annotations

Chunk = tuple[int, int]  # (address, length) that one register watches


def split_power_of_two(address: int, length: int, max_len: int) -> tuple[Chunk, ...]:
    """gdb's rule for x86: aligned power-of-two chunks of at most `max_len` bytes."""
    chunks: list[Chunk] = []
    while length > 0:
        size = max_len
        # The largest power of two that divides the address and does not overrun the range.
        while size > 1 and (address % size or size > length):
            size //= 2
        chunks.append((address, size))
        address += size
        length -= size
    return tuple(chunks)


def split_within_blocks(address: int, length: int, block: int) -> tuple[Chunk, ...]:
    """One chunk per `block`-aligned block the range touches (arm64 byte-address-select)."""
    chunks: list[Chunk] = []
    end = address + length
    while address < end:
        stop = min(end, (address // block + 1) * block)
        chunks.append((address, stop - address))
        address = stop
    return tuple(chunks)


def split_dawr(
    address: int, length: int, granule: int, max_len: int, cross: bool
) -> tuple[Chunk, ...]:
    """POWER's DAWR: `granule`-aligned ranges of at most `max_len` bytes; before POWER10 a range
    may not cross a `max_len` boundary, so it is cut there."""
    start = address - address % granule
    end = -(-(address + length) // granule) * granule
    chunks: list[Chunk] = []
    while start < end:
        limit = start + max_len if cross else (start // max_len + 1) * max_len
        stop = min(end, limit)
        chunks.append((start, stop - start))
        start = stop
    return tuple(chunks)
