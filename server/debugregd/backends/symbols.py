"""Say where a hit came from: the mapping its instruction pointer falls in (file and offset in that
file, from /proc/PID/maps) and, where the file has a symbol table (.symtab, else .dynsym), the
function: `name+0xoffset`. ELF files are read with pyelftools.

A file offset becomes an ELF virtual address through the file's PT_LOAD segments, which is what
makes position-independent executables and shared objects (loaded anywhere) and fixed-address
executables (vaddr != offset) come out alike. [vdso], [stack], [heap] and anonymous memory
("[anon]") are named, with no symbol.

Every cache is bounded (least recently used goes first):
- per process: its mappings, read again when an ip falls outside every cached one (a library
  loaded since), and the locations already found in it;
- per file, keyed by (st_dev, st_ino, st_mtime_ns) of the file opened: its function symbols, so
  every process that maps libc shares one table and a binary rebuilt in place is read anew.

Cost: pyelftools reads about 50,000 symbols a second (libc's 3,000: 70 ms), once per file, and a
process's maps once per new mapping met. A caller on an event loop should resolve in one worker
thread (the caches are not locked) and only for the sites it reports, never per sample.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, ClassVar

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

ANONYMOUS = "[anon]"
_FUNCTION_TYPES = frozenset({"STT_FUNC", "STT_GNU_IFUNC"})
# Several names at one address (weak aliases, __libc_ names): prefer the one a person calls, so
# fewest leading underscores first, then global over weak over local.
_BINDING_RANK = {"STB_GLOBAL": 0, "STB_WEAK": 1}


@dataclass(frozen=True, slots=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int  # of `start` in the file
    dev: tuple[int, int]  # (major, minor)
    inode: int
    path: str  # "" for anonymous memory; "[vdso]", "[stack]"...; " (deleted)" may end it

    @property
    def name(self) -> str:
        """The file's path, or the kernel's name for the memory."""
        return self.path or ANONYMOUS

    @property
    def file_backed(self) -> bool:
        return self.inode != 0 and self.path.startswith("/")

    def file_offset(self, address: int) -> int:
        """Where `address` is in the mapped file (for memory with no file: in the mapping)."""
        return address - self.start + self.offset


@dataclass(frozen=True, slots=True)
class Location:
    """Where an instruction pointer is: a mapping's file (or name), the offset in it, and the
    function, where a symbol table covers it."""

    file: str
    offset: int
    symbol: str | None


def parse_maps(text: str) -> list[Mapping]:
    """The mappings of a /proc/PID/maps text, in address order."""
    mappings = []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 5:
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        major, minor = (int(x, 16) for x in parts[3].split(":"))
        path = parts[5] if len(parts) > 5 else ""
        mappings.append(
            Mapping(start, end, parts[1], int(parts[2], 16), (major, minor), int(parts[4]), path)
        )
    mappings.sort(key=lambda m: m.start)
    return mappings


@dataclass(frozen=True, slots=True)
class _Segment:
    offset: int
    size: int
    vaddr: int


class SymbolTable:
    """The functions of one ELF file by virtual address, and the PT_LOAD segments that turn a
    file offset into one."""

    __slots__ = ("_ends", "_names", "_segments", "_starts")

    def __init__(self, segments: list[_Segment], functions: list[tuple[int, int, str]]) -> None:
        """`functions` as (address, size, name), sorted by address, one per address."""
        self._segments = segments
        self._starts = [f[0] for f in functions]
        self._ends = [f[0] + f[1] if f[1] else None for f in functions]
        self._names = [f[2] for f in functions]

    EMPTY: ClassVar[SymbolTable]  # for files with no symbols (or not ELF)

    @classmethod
    def read(cls, stream: IO[bytes]) -> SymbolTable:
        """Read an ELF file's segments and function symbols (.symtab if present: it is a superset
        of .dynsym); a file that is not ELF has none."""
        try:
            elf = ELFFile(stream)
            segments = [
                _Segment(seg["p_offset"], seg["p_filesz"], seg["p_vaddr"])
                for seg in elf.iter_segments()
                if seg["p_type"] == "PT_LOAD"
            ]
            table = elf.get_section_by_name(".symtab") or elf.get_section_by_name(".dynsym")
            best: dict[int, tuple[tuple[int, int, str], int, str]] = {}
            if isinstance(table, SymbolTableSection):
                for address, size, name, rank in _functions(table):
                    kept = best.get(address)
                    if kept is None or rank < kept[0]:
                        best[address] = (rank, size, name)
        except Exception:
            # Not ELF, truncated, or malformed in a way pyelftools' parser trips over (its errors
            # are not all ELFError): a file that cannot be read has no symbols, and no hit report
            # may fail for it.
            return cls.EMPTY
        return cls(segments, [(a, size, name) for a, (_r, size, name) in sorted(best.items())])

    def __len__(self) -> int:
        return len(self._starts)

    def vaddr(self, file_offset: int) -> int | None:
        """The virtual address the file places `file_offset` at, if a PT_LOAD segment loads it."""
        for seg in self._segments:
            if seg.offset <= file_offset < seg.offset + seg.size:
                return file_offset - seg.offset + seg.vaddr
        return None

    def symbolize(self, file_offset: int) -> str | None:
        """`function+0xoffset` for the code at `file_offset`, or None outside every function."""
        address = self.vaddr(file_offset)
        if address is None:
            return None
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0:
            return None
        end = self._ends[i]
        if end is not None and address >= end:
            return None  # in a gap between functions (padding, or code with no symbol)
        return f"{self._names[i]}+{address - self._starts[i]:#x}"


SymbolTable.EMPTY = SymbolTable([], [])


def _functions(table: SymbolTableSection) -> Iterator[tuple[int, int, str, tuple[int, int, str]]]:
    """(address, size, name, rank) of each defined function symbol; a lower rank is preferred."""
    for sym in table.iter_symbols():
        info = sym["st_info"]
        if info["type"] not in _FUNCTION_TYPES or sym["st_shndx"] == "SHN_UNDEF" or not sym.name:
            continue
        name = sym.name
        rank = (len(name) - len(name.lstrip("_")), _BINDING_RANK.get(info["bind"], 2), name)
        yield sym["st_value"], sym["st_size"], name, rank


@dataclass(slots=True)
class _Task:
    """What is known of one process's address space."""

    mappings: list[Mapping]
    starts: list[int]
    located: OrderedDict[int, Location] = field(default_factory=OrderedDict)
    tables: dict[int, SymbolTable] = field(default_factory=dict)  # by mapping start

    def find(self, address: int) -> Mapping | None:
        i = bisect.bisect_right(self.starts, address) - 1
        if i >= 0 and address < self.mappings[i].end:
            return self.mappings[i]
        return None


class Resolver:
    """Resolves (pid, ip) to a Location, caching per process and per file (see the module)."""

    def __init__(
        self,
        *,
        proc: str = "/proc",
        max_tasks: int = 64,
        max_files: int = 32,
        max_locations: int = 1024,
    ) -> None:
        self._proc = proc
        self._max_tasks = max_tasks
        self._max_files = max_files
        self._max_locations = max_locations
        self._tasks: OrderedDict[int, _Task] = OrderedDict()
        self._files: OrderedDict[tuple[int, int, int], SymbolTable] = OrderedDict()
        self.maps_read = 0  # how often a /proc/PID/maps was read: the caches' effect, for tests
        self.files_read = 0  # how often an ELF file's symbols were read

    def resolve(self, pid: int, ip: int) -> Location | None:
        """Where `ip` is in process `pid`; None if no mapping holds it (or the process is gone
        and was never seen)."""
        task = self._tasks.get(pid)
        mapping = None
        if task is not None:
            self._tasks.move_to_end(pid)
            known = task.located.get(ip)
            if known is not None:
                task.located.move_to_end(ip)
                return known
            mapping = task.find(ip)
        if task is None or mapping is None:
            # Unknown ip: a library loaded (or the process first seen) since the maps were read.
            task = self._read_maps(pid)
            mapping = task.find(ip) if task is not None else None
            if task is None or mapping is None:
                return None
        symbol = None
        if mapping.file_backed:
            symbol = self._table(pid, task, mapping).symbolize(mapping.file_offset(ip))
        location = Location(mapping.name, mapping.file_offset(ip), symbol)
        task.located[ip] = location
        if len(task.located) > self._max_locations:
            task.located.popitem(last=False)
        return location

    def forget(self, pid: int) -> None:
        """Drop what is cached of a process (it exited: its pid may be reused)."""
        self._tasks.pop(pid, None)

    def _read_maps(self, pid: int) -> _Task | None:
        try:
            with open(f"{self._proc}/{pid}/maps", encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            return None  # exited, or not ours to read: what was cached stays
        self.maps_read += 1
        mappings = parse_maps(text)
        task = _Task(mappings, [m.start for m in mappings])
        self._tasks[pid] = task
        self._tasks.move_to_end(pid)
        if len(self._tasks) > self._max_tasks:
            self._tasks.popitem(last=False)
        return task

    def _table(self, pid: int, task: _Task, mapping: Mapping) -> SymbolTable:
        table = task.tables.get(mapping.start)
        if table is not None:
            return table
        table = SymbolTable.EMPTY
        stream = self._open(pid, mapping)
        if stream is not None:
            with stream:
                st = os.fstat(stream.fileno())
                key = (st.st_dev, st.st_ino, st.st_mtime_ns)
                cached = self._files.get(key)
                if cached is None:
                    self.files_read += 1
                    cached = SymbolTable.read(stream)
                    self._files[key] = cached
                    if len(self._files) > self._max_files:
                        self._files.popitem(last=False)
                else:
                    self._files.move_to_end(key)
                table = cached
        task.tables[mapping.start] = table
        return table

    def _open(self, pid: int, mapping: Mapping) -> IO[bytes] | None:
        """The mapped file itself: map_files names it even when deleted or in another mount
        namespace (it needs CAP_SYS_ADMIN); else its path as the process sees it, if that is still
        the same inode."""
        try:
            return open(f"{self._proc}/{pid}/map_files/{mapping.start:x}-{mapping.end:x}", "rb")
        except OSError:
            pass
        path = mapping.path.removesuffix(" (deleted)")
        for candidate in (f"{self._proc}/{pid}/root{path}", path):
            try:
                stream = open(candidate, "rb")  # noqa: SIM115 (returned open, closed by the caller)
            except OSError:
                continue
            if os.fstat(stream.fileno()).st_ino == mapping.inode:
                return stream
            stream.close()
        return None
