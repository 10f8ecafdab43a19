"""Hardware profiles: which pools a host has, how large, what each can watch (DESIGN section 2)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from debugreg.limits import ADDRESS_LIMIT, LENGTH_MAX
from debugregd.core import watch
from debugregd.core.errors import InvalidRequest
from debugregd.core.watch import Chunk


class Access(StrEnum):
    EXEC = "exec"
    WRITE = "write"
    RW = "rw"


class Space(StrEnum):
    USER = "user"
    KERNEL = "kernel"


_EXEC, _USER, _KERNEL = Access.EXEC, Space.USER, Space.KERNEL  # cheap to load on the hot path


@dataclass(frozen=True)
class AddressMap:
    """Where user space ends and kernel space starts; the hole between them is invalid."""

    user_top: int  # first address that is not user space (x86: TASK_SIZE_MAX)
    hole_start: int  # first non-canonical address
    kernel_start: int  # first canonical kernel address

    def space_of(self, address: int, length: int) -> Space:
        """The space of [address, address+length); raises for a non-canonical or crossing range."""
        last = address + length - 1
        if address < 0 or last >= ADDRESS_LIMIT:
            raise InvalidRequest(
                f"range 0x{address:x}+{length} is outside the 64-bit address space"
            )
        if last < self.user_top:
            return _USER
        if address < self.user_top:
            raise InvalidRequest(
                f"range 0x{address:x}+{length} crosses from user space into kernel space at "
                f"0x{self.user_top:x}; watch each side with its own request"
            )
        if address < self.kernel_start and last >= self.hole_start:
            raise InvalidRequest(
                f"range 0x{address:x}+{length} touches non-canonical addresses "
                f"0x{self.hole_start:x}-0x{self.kernel_start - 1:x}"
            )
        return _KERNEL


Splitter = Callable[[int, int], tuple[Chunk, ...]]


@dataclass(frozen=True)
class Profile:
    """One architecture's debug register facts. `pools` maps pool name to slots per CPU."""

    name: str
    pools: Mapping[str, int]
    exec_pool: str | None  # None: the architecture has no instruction breakpoints here
    data_pool: str
    exec_length: int
    addresses: AddressMap
    split_data: Splitter = field(repr=False)
    max_data_length: int = LENGTH_MAX
    single_lengths: frozenset[int] = frozenset()  # aligned data lengths that take one register

    def pool_for(self, access: Access) -> str:
        if access is _EXEC:
            if self.exec_pool is None:
                raise InvalidRequest(
                    f"the {self.name} profile has no instruction breakpoints; use 'write' or 'rw'"
                )
            return self.exec_pool
        return self.data_pool

    def chunks(self, address: int, length: int, access: Access) -> tuple[Chunk, ...]:
        """The registers a request needs, one chunk each; raises InvalidRequest with the fix."""
        if length < 1:
            raise InvalidRequest(f"length must be at least 1, got {length}")
        if access is _EXEC:
            if length != self.exec_length:
                raise InvalidRequest(
                    f"an exec breakpoint on {self.name} has length {self.exec_length}, got {length}"
                )
            if address % self.exec_length:
                raise InvalidRequest(
                    f"an exec breakpoint on {self.name} must be {self.exec_length}-aligned; "
                    f"0x{address:x} is not"
                )
            return ((address, length),)
        if length in self.single_lengths and not address % length:
            return ((address, length),)  # the common case: one naturally aligned register
        if length > self.max_data_length:
            raise InvalidRequest(f"length {length} is larger than any watch could cover")
        return self.split_data(address, length)


X86_TASK_SIZE_MAX = 0x7FFFFFFFF000
X86_64_ADDRESSES = AddressMap(X86_TASK_SIZE_MAX, 0x0000800000000000, 0xFFFF800000000000)
ARM64_ADDRESSES = AddressMap(1 << 48, 1 << 48, 0xFFFF000000000000)
PPC64_ADDRESSES = AddressMap(0x0010000000000000, 0x0010000000000000, 0xC000000000000000)


def _slots(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}, got {value}")
    return value


def x86_64(dr: int = 4) -> Profile:
    """DR0-DR3: one shared pool for exec and data; data lengths 1, 2, 4, 8, naturally aligned."""
    return Profile(
        name="x86_64",
        pools={"dr": _slots("x86_64 dr", dr, 1, 4)},
        exec_pool="dr",
        data_pool="dr",
        exec_length=1,
        addresses=X86_64_ADDRESSES,
        split_data=lambda a, n: watch.split_power_of_two(a, n, 8),
        single_lengths=frozenset({1, 2, 4, 8}),
    )


def arm64(brp: int = 6, wrp: int = 4) -> Profile:
    """Separate instruction (BRP) and data (WRP) pools; data chunks stay in one doubleword."""
    return Profile(
        name="arm64",
        pools={"brp": _slots("arm64 brp", brp, 2, 16), "wrp": _slots("arm64 wrp", wrp, 2, 16)},
        exec_pool="brp",
        data_pool="wrp",
        exec_length=4,
        addresses=ARM64_ADDRESSES,
        split_data=lambda a, n: watch.split_within_blocks(a, n, 8),
    )


def ppc64(dawr: int = 1) -> Profile:
    """Data only: one DAWR, or two on POWER10 (which may also cross a 512-byte boundary)."""
    count = _slots("ppc64 dawr", dawr, 1, 2)
    power10 = count == 2
    return Profile(
        name="ppc64",
        pools={"dawr": count},
        exec_pool=None,
        data_pool="dawr",
        exec_length=4,
        addresses=PPC64_ADDRESSES,
        split_data=lambda a, n: watch.split_dawr(a, n, 8, 512, cross=power10),
    )


PROFILES: dict[str, Callable[..., Profile]] = {"x86_64": x86_64, "arm64": arm64, "ppc64": ppc64}


def make_profile(name: str, pools: Mapping[str, int] | None = None) -> Profile:
    """A profile by name with optional pool sizes, e.g. `make_profile("arm64", {"wrp": 2})`."""
    try:
        factory = PROFILES[name]
    except KeyError:
        raise InvalidRequest(
            f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}"
        ) from None
    try:
        return factory(**dict(pools or {}))
    except TypeError:
        default = factory()
        raise InvalidRequest(
            f"profile {name} has pools {', '.join(default.pools)}; got {', '.join(pools or {})}"
        ) from None
