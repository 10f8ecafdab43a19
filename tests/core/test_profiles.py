"""Hardware profiles (DESIGN section 2): pools, sizes, lengths and alignment, address spaces."""

from __future__ import annotations

import pytest

from debugregd.core import (
    Access,
    InvalidRequest,
    Priority,
    Space,
    make_profile,
    parse_priority,
    priority_class,
)
from debugregd.core.profiles import X86_TASK_SIZE_MAX, arm64, ppc64, x86_64

# ------------------------------------------------------------------ pools


def test_x86_64_has_one_shared_pool_of_four_for_exec_and_data() -> None:
    profile = x86_64()
    assert dict(profile.pools) == {"dr": 4}
    assert profile.pool_for(Access.EXEC) == profile.pool_for(Access.WRITE) == "dr"
    assert profile.pool_for(Access.RW) == "dr"


def test_arm64_has_separate_instruction_and_data_pools() -> None:
    profile = arm64()
    assert dict(profile.pools) == {"brp": 6, "wrp": 4}
    assert profile.pool_for(Access.EXEC) == "brp"
    assert profile.pool_for(Access.WRITE) == profile.pool_for(Access.RW) == "wrp"


@pytest.mark.parametrize(("brp", "wrp"), [(2, 2), (16, 16), (6, 4)])
def test_arm64_pools_may_have_2_to_16_registers(brp: int, wrp: int) -> None:
    assert dict(make_profile("arm64", {"brp": brp, "wrp": wrp}).pools) == {"brp": brp, "wrp": wrp}


@pytest.mark.parametrize("pools", [{"brp": 1}, {"wrp": 17}, {"wrp": 0}])
def test_arm64_pool_sizes_outside_2_to_16_are_invalid(pools: dict[str, int]) -> None:
    with pytest.raises(InvalidRequest, match="between 2 and 16"):
        make_profile("arm64", pools)


def test_ppc64_has_one_dawr_or_two_on_power10_and_no_exec_pool() -> None:
    assert dict(ppc64().pools) == {"dawr": 1}
    assert dict(make_profile("ppc64", {"dawr": 2}).pools) == {"dawr": 2}
    with pytest.raises(InvalidRequest, match="between 1 and 2"):
        make_profile("ppc64", {"dawr": 3})
    with pytest.raises(InvalidRequest, match="no instruction breakpoints"):
        ppc64().pool_for(Access.EXEC)


@pytest.mark.parametrize("dr", [0, 5])
def test_x86_64_cannot_have_more_than_dr0_to_dr3(dr: int) -> None:
    with pytest.raises(InvalidRequest, match="between 1 and 4"):
        make_profile("x86_64", {"dr": dr})


def test_unknown_profile_is_invalid_and_lists_the_known_ones() -> None:
    with pytest.raises(InvalidRequest, match="x86_64, arm64, ppc64"):
        make_profile("riscv")


def test_unknown_pool_name_is_invalid_and_names_the_pools() -> None:
    with pytest.raises(InvalidRequest, match="pools brp, wrp"):
        make_profile("arm64", {"dr": 4})


def test_make_profile_defaults_are_the_factory_defaults() -> None:
    for name, factory in (("x86_64", x86_64), ("arm64", arm64), ("ppc64", ppc64)):
        assert dict(make_profile(name).pools) == dict(factory().pools)


# ------------------------------------------------------------------ lengths and alignment


@pytest.mark.parametrize("length", [1, 2, 4, 8])
def test_x86_aligned_data_of_1_2_4_8_bytes_is_one_register(length: int) -> None:
    assert x86_64().chunks(0x1000 + length, length, Access.WRITE) == ((0x1000 + length, length),)


def test_x86_exec_breakpoint_has_length_one() -> None:
    assert x86_64().chunks(0x401003, 1, Access.EXEC) == ((0x401003, 1),)


@pytest.mark.parametrize("length", [2, 4, 8])
def test_x86_exec_breakpoint_of_other_length_is_invalid(length: int) -> None:
    with pytest.raises(InvalidRequest, match="length 1"):
        x86_64().chunks(0x401000, length, Access.EXEC)


def test_arm64_exec_breakpoint_is_four_bytes_four_aligned() -> None:
    assert arm64().chunks(0x401004, 4, Access.EXEC) == ((0x401004, 4),)
    with pytest.raises(InvalidRequest, match="length 4"):
        arm64().chunks(0x401004, 1, Access.EXEC)
    with pytest.raises(InvalidRequest, match="4-aligned"):
        arm64().chunks(0x401002, 4, Access.EXEC)


@pytest.mark.parametrize("length", [0, -1])
def test_a_length_below_one_is_invalid(length: int) -> None:
    with pytest.raises(InvalidRequest, match="at least 1"):
        x86_64().chunks(0x1000, length, Access.WRITE)


def test_there_is_no_read_only_access() -> None:
    assert {a.value for a in Access} == {"exec", "write", "rw"}


# ------------------------------------------------------------------ address spaces (x86-64)

X86 = x86_64().addresses


@pytest.mark.parametrize(
    ("address", "length"),
    [(0, 1), (0x7FFD1000, 8), (X86_TASK_SIZE_MAX - 8, 8), (X86_TASK_SIZE_MAX - 1, 1)],
)
def test_x86_user_space_is_below_task_size_max(address: int, length: int) -> None:
    assert X86.space_of(address, length) is Space.USER


@pytest.mark.parametrize(
    ("address", "length"),
    [
        (X86_TASK_SIZE_MAX, 1),  # the guard page: arch_check_bp_in_kernelspace says kernel
        (0x7FFFFFFFFFF8, 8),
        (0xFFFF800000000000, 8),
        (0xFFFFFFFFFFFFFFF8, 8),
    ],
)
def test_x86_a_range_at_or_beyond_task_size_max_is_kernel_space(address: int, length: int) -> None:
    assert X86.space_of(address, length) is Space.KERNEL


@pytest.mark.parametrize(
    ("address", "length"),
    [
        (0x0000800000000000, 1),
        (0x7FFFFFFFFFF8, 16),  # from the guard page into the hole
        (0x1234567812345678, 8),
        (0xFFFF7FFFFFFFFFF8, 16),  # from the hole into kernel space
    ],
)
def test_x86_non_canonical_addresses_are_invalid(address: int, length: int) -> None:
    with pytest.raises(InvalidRequest, match="non-canonical"):
        X86.space_of(address, length)


def test_x86_a_range_crossing_from_user_into_kernel_space_is_invalid() -> None:
    with pytest.raises(InvalidRequest, match="crosses from user space into kernel space"):
        X86.space_of(X86_TASK_SIZE_MAX - 4, 8)


@pytest.mark.parametrize(("address", "length"), [(-8, 8), ((1 << 64) - 4, 8), (1 << 64, 1)])
def test_a_range_outside_64_bits_is_invalid(address: int, length: int) -> None:
    with pytest.raises(InvalidRequest, match="64-bit address space"):
        X86.space_of(address, length)


@pytest.mark.parametrize(
    ("profile", "user", "kernel"),
    [("arm64", 0x0000FFFF00001000, 0xFFFF000000001000), ("ppc64", 0x1000, 0xC000000000001000)],
)
def test_other_profiles_tell_user_from_kernel_space(profile: str, user: int, kernel: int) -> None:
    addresses = make_profile(profile).addresses
    assert addresses.space_of(user, 8) is Space.USER
    assert addresses.space_of(kernel, 8) is Space.KERNEL


# ------------------------------------------------------------------ priorities


def test_priority_classes_are_background_normal_ptrace_critical() -> None:
    assert {p.name.lower(): int(p) for p in Priority} == {
        "background": 100,
        "normal": 300,
        "ptrace": 700,
        "critical": 900,
    }


@pytest.mark.parametrize(
    ("value", "priority"),
    [
        ("background", 100),
        ("NORMAL", 300),
        ("ptrace", 700),
        ("critical", 900),
        (0, 0),
        (1000, 1000),
    ],
)
def test_priority_is_a_class_name_or_an_integer_0_to_1000(value: int | str, priority: int) -> None:
    assert parse_priority(value) == priority


@pytest.mark.parametrize("value", [-1, 1001, "urgent", True])
def test_other_priorities_are_invalid(value: int | str) -> None:
    with pytest.raises(InvalidRequest):
        parse_priority(value)


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (0, "below-background"),
        (100, "background"),
        (699, "normal"),
        (700, "ptrace"),
        (1000, "critical"),
    ],
)
def test_priority_class_is_the_highest_class_at_or_below(value: int, name: str) -> None:
    assert priority_class(value) == name
