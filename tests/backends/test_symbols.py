"""Saying where a hit came from: an instruction pointer resolves to the mapping it falls in (file
and offset, from /proc/PID/maps) and, where the file has symbols, to `function+0xoffset`, for
position-independent and fixed-address executables and shared objects, with bounded caches."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import pytest

from debugregd.backends.symbols import ANONYMOUS, Resolver, SymbolTable, parse_maps
from tests.support.ctarget import Writers, compile_c, run_writers


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("symbols")


@pytest.fixture(scope="module")
def pie(build: Path) -> Path:
    return compile_c("writers.c", build / "writers-pie", "-fPIE", "-pie")


@pytest.fixture(scope="module")
def fixed(build: Path) -> Path:
    return compile_c("writers.c", build / "writers-fixed", "-fno-pie", "-no-pie")


def functions(w: Writers) -> dict[str, int]:
    return {"writer_a": w.writer_a, "writer_b": w.writer_b, "writer_c": w.writer_c}


def code_at(pid: int, address: int, path: str, offset: int) -> tuple[bytes, bytes]:
    """16 bytes of the running process at `address`, and 16 bytes of the file at `offset`."""
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(address)
        running = mem.read(16)
    with open(path, "rb") as f:
        f.seek(offset)
        return running, f.read(16)


@pytest.mark.parametrize("kind", ["pie", "fixed"])
def test_function_addresses_resolve_to_name_plus_zero(
    kind: str, request: pytest.FixtureRequest
) -> None:
    binary: Path = request.getfixturevalue(kind)
    resolver = Resolver()
    with run_writers(binary) as w:
        for name, address in functions(w).items():
            where = resolver.resolve(w.pid, address)
            assert where is not None
            assert where.symbol == f"{name}+0x0"
            assert where.file == str(binary)
            # The offset is where the file holds the code the process runs there.
            running, in_file = code_at(w.pid, address, where.file, where.offset)
            assert running == in_file


def test_an_ip_inside_a_function_says_how_far_in(pie: Path) -> None:
    resolver = Resolver()
    with run_writers(pie) as w:
        where = resolver.resolve(w.pid, w.writer_b + 0xA)
        assert where is not None and where.symbol == "writer_b+0xa"


def test_a_stripped_executable_names_its_file_but_no_function(build: Path) -> None:
    stripped = compile_c("writers.c", build / "writers-stripped", "-s")
    resolver = Resolver()
    with run_writers(stripped) as w:
        where = resolver.resolve(w.pid, w.writer_a)
        assert where is not None
        assert (where.file, where.symbol) == (str(stripped), None)


def test_a_library_loaded_since_the_maps_were_read_is_found(build: Path) -> None:
    library = compile_c("shared.c", build / "libshared.so", "-shared", "-fPIC")
    resolver = Resolver()
    here = os.getpid()
    libc_getppid = ctypes.cast(ctypes.CDLL(None).getppid, ctypes.c_void_p).value
    assert libc_getppid is not None
    assert resolver.resolve(here, libc_getppid) is not None
    assert resolver.maps_read == 1
    shared = ctypes.CDLL(str(library))
    address = ctypes.cast(shared.shared_function, ctypes.c_void_p).value
    assert address is not None
    where = resolver.resolve(here, address + 1)
    assert where is not None
    assert (where.file, where.symbol) == (str(library), "shared_function+0x1")
    assert resolver.maps_read == 2  # read again once, for the ip no cached mapping held
    assert resolver.resolve(here, address) is not None
    assert resolver.maps_read == 2


def test_memory_without_a_file_is_named_with_no_symbol() -> None:
    here = os.getpid()
    with open("/proc/self/maps") as f:
        named = {m.path: m for m in parse_maps(f.read()) if m.path in ("[stack]", "[vdso]")}
    anonymous = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    byte = ctypes.c_char.from_buffer(anonymous)
    try:
        resolver = Resolver()
        for name, mapping in named.items():
            where = resolver.resolve(here, mapping.start + 16)
            assert where is not None and (where.file, where.symbol) == (name, None)
        where = resolver.resolve(here, ctypes.addressof(byte) + 16)
        assert where is not None
        assert (where.file, where.offset, where.symbol) == (ANONYMOUS, 16, None)
    finally:
        del byte
        anonymous.close()


def test_an_address_no_mapping_holds_resolves_to_nothing() -> None:
    assert Resolver().resolve(os.getpid(), 0x10) is None


def test_processes_of_one_binary_share_its_symbol_table(pie: Path) -> None:
    resolver = Resolver()
    with run_writers(pie) as first, run_writers(pie) as second:
        for w in (first, second):
            where = resolver.resolve(w.pid, w.writer_c)
            assert where is not None and where.symbol == "writer_c+0x0"
    assert resolver.files_read == 1


def test_a_binary_rebuilt_in_place_is_read_anew(build: Path) -> None:
    binary = build / "rebuilt"
    resolver = Resolver()
    compile_c("writers.c", binary)
    with run_writers(binary) as old:
        assert resolver.resolve(old.pid, old.writer_a) is not None
    # Another build at the same path: new inode and mtime, and writer_a moved by -O0's larger code.
    compile_c("writers.c", binary, "-O0")
    with run_writers(binary) as new:
        where = resolver.resolve(new.pid, new.writer_b)
        assert where is not None and where.symbol == "writer_b+0x0"
    assert resolver.files_read == 2


def test_caches_stay_bounded_and_stay_right(pie: Path) -> None:
    resolver = Resolver(max_tasks=1, max_files=1, max_locations=2)
    with run_writers(pie) as first, run_writers(pie) as second:
        for _ in range(2):
            for w in (first, second):
                for name, address in functions(w).items():
                    where = resolver.resolve(w.pid, address)
                    assert where is not None and where.symbol == f"{name}+0x0"
    assert resolver.maps_read == 4  # one task cached at a time: each switch reads its maps again


def test_a_process_that_exited_resolves_from_what_was_cached(pie: Path) -> None:
    resolver = Resolver()
    with run_writers(pie) as w:
        assert resolver.resolve(w.pid, w.writer_a) is not None
    w.proc.wait()
    where = resolver.resolve(w.pid, w.writer_b)  # same mapping as writer_a: no maps needed
    assert where is not None and where.symbol == "writer_b+0x0"
    resolver.forget(w.pid)
    assert resolver.resolve(w.pid, w.writer_b) is None


def test_a_file_that_is_not_elf_has_no_symbols(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF" + bytes(60))  # an ELF magic with nothing sensible after it
    with open(junk, "rb") as f:
        table = SymbolTable.read(f)
    assert (len(table), table.symbolize(0x10)) == (0, None)
