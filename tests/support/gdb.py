"""gdb against a small C program compiled at test time: the program, gdb (plain or through
`debugreg gdb`) as a child whose output is read line by line with timeouts, and why either cannot
run here. Used by tests/gdb, tests/e2e/test_gdb.py and bench/gdb.py."""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

# A program with one 8-byte word, `counter`, driven through its stdin: it prints its pid and the
# word's address, then per line: `w` writes the word and answers "wrote"; `t` starts a thread that
# says "thread TID" and then blocks; end of input exits.
TARGET_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

volatile long counter;
static int parked[2];

static void *second(void *unused) {
    char c;
    (void)unused;
    printf("thread %ld\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    (void)read(parked[0], &c, 1);
    return NULL;
}

int main(void) {
    char line[64];
    pthread_t thread;
    if (pipe(parked) != 0)
        return 1;
    printf("ready %d %p\n", (int)getpid(), (void *)&counter);
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        if (line[0] == 'w') {
            counter++;
            puts("wrote");
            fflush(stdout);
        } else if (line[0] == 't') {
            pthread_create(&thread, NULL, second, NULL);
        }
    }
    return 0;
}
"""

READY = re.compile(r"ready (\d+) (0x[0-9a-f]+)")
WAIT_S = 30.0  # the longest any one line is waited for; reaching it fails the test


def compile_target(directory: Path) -> Path:
    """Build the program (with debug information, as a PIE, like any Debian build)."""
    source = directory / "target.c"
    source.write_text(TARGET_C)
    binary = directory / "target"
    subprocess.run(
        ["gcc", "-g", "-O0", "-pthread", "-o", str(binary), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return binary


def unavailable() -> str | None:
    """Why gdb cannot be tested here (None: it can)."""
    for tool in ("gdb", "gcc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {tool})"
    return None


def ptrace_refused(binary: Path) -> str | None:
    """Why gdb may not attach to a child of this process (None: it may)."""
    with Lines([str(binary)]) as target:
        pid = target.ready()[0]
        done = subprocess.run(
            ["gdb", "-nx", "-batch", "-p", str(pid), "-ex", "detach"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    said = done.stdout + done.stderr
    if f"process {pid}) detached" in said:
        return None
    why = [line for line in said.splitlines() if "ptrace" in line] or [said.strip()[:200]]
    return f"gdb may not attach to a process here: {why[0]}"


class Lines:
    """A child process whose output (stdout and stderr merged) is read line by line as it comes,
    and whose stdin takes lines."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
        self.seen: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, pattern: str, timeout: float = WAIT_S) -> re.Match[str]:
        """The first line from now on that matches `pattern` (a regex searched in the line)."""
        wanted = re.compile(pattern)
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout} s from {self.argv[0]}; "
                    f"it said:\n" + "\n".join(self.seen)
                ) from None
            if line is None:
                raise AssertionError(
                    f"{self.argv[0]} ended without a line matching {pattern!r}; it said:\n"
                    + "\n".join(self.seen)
                )
            self.seen.append(line)
            match = wanted.search(line)
            if match:
                return match

    def ready(self) -> tuple[int, int]:
        """The target's pid and the address of its `counter`, once it says them."""
        match = self.expect(READY.pattern)
        return int(match[1]), int(match[2], 16)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = WAIT_S) -> str:
        """Wait for the process to end; everything it said."""
        self.proc.wait(timeout=timeout)
        while True:
            line = self._lines.get(timeout=timeout)
            if line is None:
                return "\n".join(self.seen)
            self.seen.append(line)

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()


def debugreg_gdb(*gdb_args: str, options: Iterable[str] = ()) -> list[str]:
    """`debugreg gdb [options] -nx GDB_ARGS` (no gdbinit of this machine's user interferes):
    the command installed beside this Python, as a user runs it."""
    installed = Path(sys.executable).with_name("debugreg")
    debugreg = [str(installed)] if installed.exists() else [sys.executable, "-m", "debugreg"]
    return [*debugreg, "gdb", *options, "-nx", *gdb_args]


def plain_gdb(*gdb_args: str) -> list[str]:
    return ["gdb", "-nx", *gdb_args]


def environment(**settings: str) -> dict[str, str]:
    """This process's environment without debugreg's settings, then `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEBUGREG_", "DEBUGREGD_"))}
    env.update(settings)
    return env


class Target(Lines):
    """The compiled program, started and ready: its `pid` (its only thread's id too) and the
    `address` of its `counter`."""

    def __init__(self, binary: Path) -> None:
        super().__init__([str(binary)])
        self.pid, self.address = self.ready()


@pytest.fixture(scope="session")
def target_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The program, compiled once per run; skips (saying why) where gdb cannot debug it."""
    why = unavailable()
    if why is not None:
        pytest.skip(why)
    binary = compile_target(tmp_path_factory.mktemp("gdb-target"))
    why = ptrace_refused(binary)
    if why is not None:
        pytest.skip(why)
    return binary


@pytest.fixture
def target(target_binary: Path) -> Iterator[Target]:
    """A running target, killed after the test."""
    with Target(target_binary) as running:
        yield running
