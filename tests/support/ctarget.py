"""C programs compiled at test time, for tests that need real machine code: ELF symbols to resolve,
and a known number of writes for the hardware to sample. The sources are in c/ beside this file."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCES = Path(__file__).parent / "c"
EXIT_TIMEOUT_S = 30.0  # after its stdin closes; readline waits are bounded by pytest-timeout


def compile_c(source: str, out: Path, *flags: str) -> Path:
    """Compile c/`source` into `out` (gcc -O1 -pthread `flags`); skip if gcc is missing."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed (`make packages` installs it)")
    subprocess.run(
        [gcc, "-O1", "-pthread", "-Wall", *flags, "-o", str(out), str(SOURCES / source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


@dataclass(frozen=True)
class Writers:
    """A running c/writers.c: its pid, its second thread, and the addresses it printed."""

    proc: subprocess.Popen[str]
    pid: int
    second_tid: int
    watched: int
    writer_a: int
    writer_b: int
    writer_c: int

    def go(self) -> None:
        """Start the writes and wait until they are all done (the program says so)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"


@contextmanager
def run_writers(binary: Path, a: int = 0, b: int = 0, c: int = 0) -> Iterator[Writers]:
    """Run the writers program until the block ends (it waits for go, then for end of input)."""
    proc = subprocess.Popen(
        [str(binary), str(a), str(b), str(c)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        fields = proc.stdout.readline().split()
        assert len(fields) == 6, f"writers did not start: {fields}"
        pid, second_tid = int(fields[0]), int(fields[1])
        watched, writer_a, writer_b, writer_c = (int(x, 16) for x in fields[2:])
        yield Writers(proc, pid, second_tid, watched, writer_a, writer_b, writer_c)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
