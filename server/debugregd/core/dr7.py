"""The raw x86 debug register ABI: DR0-DR3 and DR7 as a ptrace user writes them (DESIGN section 8).

DR7 per register n: enable bits L at 2n and G at 2n+1; R/W at 16+4n (00 exec, 01 write, 10 I/O,
11 read/write); LEN at 18+4n (00=1, 01=2, 11=4, 10=8).
"""

from __future__ import annotations

from dataclasses import dataclass

from debugreg.limits import ADDRESS_LIMIT
from debugregd.core.errors import InvalidRequest
from debugregd.core.profiles import X86_TASK_SIZE_MAX, Access

RW_BITS: dict[int, Access | None] = {
    0b00: Access.EXEC,
    0b01: Access.WRITE,
    0b10: None,
    0b11: Access.RW,
}
BITS_OF_ACCESS: dict[Access, int] = {Access.EXEC: 0b00, Access.WRITE: 0b01, Access.RW: 0b11}
LEN_BITS: dict[int, int] = {0b00: 1, 0b01: 2, 0b11: 4, 0b10: 8}
BITS_OF_LEN: dict[int, int] = {length: bits for bits, length in LEN_BITS.items()}
DR7_LIMIT = 1 << 32


@dataclass(frozen=True, slots=True)
class RawSlot:
    """One enabled debug register as DR7 describes it."""

    index: int
    address: int
    length: int
    access: Access


def decode(dr7: int, addresses: tuple[int, int, int, int]) -> tuple[RawSlot, ...]:
    """The enabled registers of a DR7 value; raises InvalidRequest naming the first bad field."""
    if not 0 <= dr7 < DR7_LIMIT:
        raise InvalidRequest(f"dr7 must be a 32-bit value, got 0x{dr7:x}")
    slots: list[RawSlot] = []
    for n, address in enumerate(addresses):
        if not (dr7 >> (2 * n)) & 0b11:
            continue  # neither L nor G: the register is off and its fields do not matter
        rw = (dr7 >> (16 + 4 * n)) & 0b11
        length = LEN_BITS[(dr7 >> (18 + 4 * n)) & 0b11]
        access = RW_BITS[rw]
        if access is None:
            raise InvalidRequest(
                f"dr7 enables DR{n} with R/W=10 (I/O breakpoint), which is not supported; "
                "use 00 (exec), 01 (write) or 11 (read/write)"
            )
        if access is Access.EXEC and length != 1:
            raise InvalidRequest(f"DR{n} is an exec breakpoint, so its LEN must be 00 (1 byte)")
        if not 0 <= address < ADDRESS_LIMIT:
            raise InvalidRequest(f"dr{n} must be a 64-bit address")
        if address % length:
            raise InvalidRequest(
                f"dr{n}=0x{address:x} is not aligned to its length {length}; "
                f"align it to {length} bytes or use a shorter LEN"
            )
        if address + length - 1 >= X86_TASK_SIZE_MAX:
            raise InvalidRequest(
                f"dr{n}=0x{address:x} is not a user-space address; ptrace can only watch below "
                f"0x{X86_TASK_SIZE_MAX:x}"
            )
        slots.append(RawSlot(n, address, length, access))
    return tuple(slots)


def encode(slots: tuple[RawSlot, ...] | list[RawSlot], *, global_enable: bool = False) -> int:
    """DR7 enabling `slots` (local enable unless `global_enable`)."""
    dr7 = 0
    for slot in slots:
        dr7 |= 1 << (2 * slot.index + (1 if global_enable else 0))
        dr7 |= BITS_OF_ACCESS[slot.access] << (16 + 4 * slot.index)
        dr7 |= BITS_OF_LEN[slot.length] << (18 + 4 * slot.index)
    return dr7
