"""The x86 DR7 encoding as a ptrace user writes it (DESIGN sections 2 and 8), every field of it.

Per register n: enable bits L at 2n and G at 2n+1; R/W at 16+4n (00 exec, 01 write, 11 read or
write, 10 I/O: rejected); LEN at 18+4n (00=1, 01=2, 11=4, 10=8 bytes).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from debugregd.core import Access, InvalidRequest
from debugregd.core.dr7 import RawSlot, decode, encode
from debugregd.core.profiles import X86_TASK_SIZE_MAX
from tests.core.build import KERNEL

RW_FIELD = {0b00: Access.EXEC, 0b01: Access.WRITE, 0b11: Access.RW}
LEN_FIELD = {0b00: 1, 0b01: 2, 0b11: 4, 0b10: 8}
L, G = 0b01, 0b10
ENABLES = {"L": L, "G": G, "L+G": L | G}
ADDRESS = 0x7FFD1000  # aligned to every length


def dr7_field(n: int, enable: int, rw: int, len_bits: int) -> int:
    """DR7 with register n's fields set as the Intel SDM lays them out."""
    return enable << (2 * n) | rw << (16 + 4 * n) | len_bits << (18 + 4 * n)


def only(n: int, address: int) -> tuple[int, int, int, int]:
    regs = [0, 0, 0, 0]
    regs[n] = address
    return (regs[0], regs[1], regs[2], regs[3])


VALID = [
    (n, enable, rw, len_bits)
    for n in range(4)
    for enable in ENABLES
    for rw in RW_FIELD
    for len_bits in LEN_FIELD
    if RW_FIELD[rw] is not Access.EXEC or len_bits == 0b00
]
EXEC_WITH_LENGTH = [
    (n, len_bits) for n in range(4) for len_bits in LEN_FIELD if LEN_FIELD[len_bits] != 1
]


@pytest.mark.parametrize(("n", "enable", "rw", "len_bits"), VALID)
def test_each_register_decodes_its_enable_access_and_length(
    n: int, enable: str, rw: int, len_bits: int
) -> None:
    dr7 = dr7_field(n, ENABLES[enable], rw, len_bits)
    assert decode(dr7, only(n, ADDRESS)) == (
        RawSlot(n, ADDRESS, LEN_FIELD[len_bits], RW_FIELD[rw]),
    )


@pytest.mark.parametrize(("n", "len_bits"), EXEC_WITH_LENGTH)
def test_exec_breakpoint_with_len_other_than_00_is_rejected(n: int, len_bits: int) -> None:
    with pytest.raises(InvalidRequest, match=f"DR{n}.*LEN must be 00"):
        decode(dr7_field(n, L, 0b00, len_bits), only(n, ADDRESS))


@pytest.mark.parametrize("len_bits", sorted(LEN_FIELD))
@pytest.mark.parametrize("n", range(4))
def test_io_breakpoint_rw_10_is_rejected(n: int, len_bits: int) -> None:
    with pytest.raises(InvalidRequest, match=f"DR{n} with R/W=10"):
        decode(dr7_field(n, L, 0b10, len_bits), only(n, ADDRESS))


@pytest.mark.parametrize("n", range(4))
def test_a_disabled_register_is_ignored_whatever_its_fields_say(n: int) -> None:
    # R/W=10 and a misaligned kernel address, but neither L nor G is set.
    dr7 = dr7_field(n, 0, 0b10, 0b10)
    assert decode(dr7, only(n, KERNEL + 3)) == ()


@pytest.mark.parametrize("length_bits", [0b01, 0b11, 0b10])
@pytest.mark.parametrize("n", range(4))
def test_misaligned_address_is_rejected(n: int, length_bits: int) -> None:
    length = LEN_FIELD[length_bits]
    for offset in range(1, length):
        with pytest.raises(InvalidRequest, match=f"dr{n}=.*not aligned to its length {length}"):
            decode(dr7_field(n, L, 0b01, length_bits), only(n, ADDRESS + offset))


@pytest.mark.parametrize("n", range(4))
def test_every_address_is_aligned_for_length_one(n: int) -> None:
    assert decode(dr7_field(n, L, 0b01, 0b00), only(n, ADDRESS + 3)) == (
        RawSlot(n, ADDRESS + 3, 1, Access.WRITE),
    )


@pytest.mark.parametrize(
    "address",
    [KERNEL, X86_TASK_SIZE_MAX, X86_TASK_SIZE_MAX + 8, 0x0000800000000000, (1 << 64) - 8],
)
@pytest.mark.parametrize("n", range(4))
def test_kernel_or_non_user_address_is_rejected(n: int, address: int) -> None:
    with pytest.raises(InvalidRequest, match="not a user-space address"):
        decode(dr7_field(n, G, 0b11, 0b10), only(n, address))


@pytest.mark.parametrize("len_bits", sorted(LEN_FIELD))
def test_the_last_user_space_bytes_are_accepted(len_bits: int) -> None:
    length = LEN_FIELD[len_bits]
    last = X86_TASK_SIZE_MAX - length
    assert decode(dr7_field(0, L, 0b01, len_bits), only(0, last)) == (
        RawSlot(0, last, length, Access.WRITE),
    )


@pytest.mark.parametrize("dr7", [-1, 1 << 32, 1 << 40])
def test_dr7_must_be_a_32_bit_value(dr7: int) -> None:
    with pytest.raises(InvalidRequest, match="32-bit"):
        decode(dr7, (0, 0, 0, 0))


def test_an_address_outside_64_bits_is_rejected() -> None:
    with pytest.raises(InvalidRequest):
        decode(dr7_field(0, L, 0b01, 0b00), only(0, 1 << 64))


def test_registers_decode_independently_in_index_order() -> None:
    dr7 = (
        dr7_field(0, L, 0b00, 0b00)
        | dr7_field(1, G, 0b01, 0b01)
        | dr7_field(2, 0, 0b11, 0b11)
        | dr7_field(3, L | G, 0b11, 0b10)
    )
    addresses = (0x401000, 0x7FFD1002, 0x7FFD1004, 0x7FFD1008)
    assert decode(dr7, addresses) == (
        RawSlot(0, 0x401000, 1, Access.EXEC),
        RawSlot(1, 0x7FFD1002, 2, Access.WRITE),
        RawSlot(3, 0x7FFD1008, 8, Access.RW),
    )


def test_the_first_bad_register_is_named() -> None:
    dr7 = dr7_field(0, L, 0b01, 0b00) | dr7_field(2, L, 0b10, 0b00)
    with pytest.raises(InvalidRequest, match="DR2"):
        decode(dr7, (ADDRESS, 0, ADDRESS, 0))


@pytest.mark.parametrize(("n", "enable", "rw", "len_bits"), [v for v in VALID if v[1] != "L+G"])
def test_encode_sets_exactly_the_fields_of_the_sdm_layout(
    n: int, enable: str, rw: int, len_bits: int
) -> None:
    slot = RawSlot(n, ADDRESS, LEN_FIELD[len_bits], RW_FIELD[rw])
    assert encode([slot], global_enable=enable == "G") == dr7_field(
        n, ENABLES[enable], rw, len_bits
    )


def test_encode_of_nothing_is_zero() -> None:
    assert encode(()) == 0


@st.composite
def raw_slots(draw: st.DrawFn) -> list[RawSlot]:
    """A set of valid, enabled registers with distinct indices, in index order."""
    indices = sorted(draw(st.sets(st.integers(0, 3))))
    out = []
    for n in indices:
        access = draw(st.sampled_from(list(Access)))
        length = 1 if access is Access.EXEC else draw(st.sampled_from([1, 2, 4, 8]))
        address = draw(st.integers(0, (X86_TASK_SIZE_MAX - 8) // length)) * length
        out.append(RawSlot(n, address, length, access))
    return out


def addresses_of(slots: list[RawSlot]) -> tuple[int, int, int, int]:
    regs = [0, 0, 0, 0]
    for slot in slots:
        regs[slot.index] = slot.address
    return (regs[0], regs[1], regs[2], regs[3])


@settings(max_examples=200, deadline=None)
@given(slots=raw_slots(), global_enable=st.booleans())
def test_decode_of_encode_is_the_identity(slots: list[RawSlot], global_enable: bool) -> None:
    dr7 = encode(slots, global_enable=global_enable)
    assert list(decode(dr7, addresses_of(slots))) == slots


@settings(max_examples=200, deadline=None)
@given(slots=raw_slots(), global_enable=st.booleans())
def test_encode_of_decode_gives_back_a_canonical_dr7(
    slots: list[RawSlot], global_enable: bool
) -> None:
    dr7 = encode(slots, global_enable=global_enable)
    assert encode(decode(dr7, addresses_of(slots)), global_enable=global_enable) == dr7
