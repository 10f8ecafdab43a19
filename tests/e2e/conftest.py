"""What the end-to-end hardware tests share: permission to arm breakpoints, a target process with a
word to watch, users outside the daemon holding breakpoints, sessions and event streams."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from debugregd.backends import perf_event
from tests.support.daemon import Daemon

NCPUS = os.cpu_count() or 1

# A process with one 8-byte word: prints its tid and the word's address, then writes the word
# whenever it reads a line, and answers "wrote" (the tests wait on that, not on time).
TARGET = """
import ctypes, sys, threading
word = ctypes.c_uint64(0)
print(threading.get_native_id(), ctypes.addressof(word), flush=True)
for line in sys.stdin:
    word.value += 1
    print("wrote", flush=True)
"""

# A user outside debugregd (perf record, bpftrace, gdb): opens breakpoints through perf_event_open
# on the given (pid, cpu) targets, says "holding", and keeps them until its stdin closes.
OUTSIDE = """
import ctypes, sys
from debugregd.backends import perf_event as pe
word = ctypes.c_uint64(0)
attr = pe.breakpoint_attr(pe.HW_BREAKPOINT_W, ctypes.addressof(word), 8, exclude_kernel=True)
targets = [tuple(int(x) for x in t.split(":")) for t in sys.argv[1:]]
fds = [pe.perf_event_open(attr, pid, cpu) for pid, cpu in targets]
print("holding", len(fds), flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def perf_permitted() -> None:
    word = ctypes.c_uint64(0)
    try:
        fd = perf_event.open_breakpoint(
            perf_event.HW_BREAKPOINT_W, ctypes.addressof(word), 8, threading.get_native_id()
        )
        os.close(fd)
        fd = perf_event.perf_event_open(
            perf_event.breakpoint_attr(
                perf_event.HW_BREAKPOINT_W, ctypes.addressof(word), 8, exclude_kernel=True
            ),
            -1,
            0,
        )
        os.close(fd)
    except perf_event.PerfEventError as exc:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        pytest.skip(f"perf_event_open of a hardware breakpoint is not permitted here: {name}")


class Target:
    """A live process whose word the tests watch."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TARGET], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.tid, self.address = (int(x) for x in self.proc.stdout.readline().split())

    def poke(self) -> None:
        """Write the word once, and wait until it was written."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "wrote"

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def target() -> Iterator[Target]:
    t = Target()
    yield t
    t.end()


class Outside:
    """A user outside debugregd holding breakpoints until `leave`."""

    def __init__(self, targets: list[tuple[int, int]]) -> None:
        args = [f"{pid}:{cpu}" for pid, cpu in targets]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", OUTSIDE, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("holding"), f"the outside user could not take its registers: {line}"

    def leave(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture
def outside() -> Iterator[Callable[..., Outside]]:
    """Start users outside debugregd: `outside(cpu_wide=2)` holds 2 on every CPU,
    `outside(task=tid, n=1)` 1 on that task."""
    started: list[Outside] = []

    def start(*, cpu_wide: int = 0, task: int | None = None, n: int = 0) -> Outside:
        targets = [(-1, c) for c in range(NCPUS) for _ in range(cpu_wide)]
        if task is not None:
            targets += [(task, -1)] * n
        user = Outside(targets)
        started.append(user)
        return user

    yield start
    for user in started:
        user.leave()


def perf_daemon(make_daemon: Callable[..., Daemon], *args: str) -> Daemon:
    return make_daemon("--backend", "perf", "--cpus", str(NCPUS), *args)


def session(daemon: Daemon, *, grant: str | None = None) -> tuple[str, dict[str, str]]:
    """A session (with a priority grant, opened with the admin key): its id and auth header."""
    body: dict[str, Any] = {"name": "e2e", "ttl_s": 120}
    http = daemon.admin() if grant else daemon.anon()
    with http:
        if grant:
            body["max_priority"] = grant
        response = http.post("/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    opened = response.json()
    return opened["id"], {"Authorization": f"Bearer {opened['token']}"}


def watch(
    daemon: Daemon,
    auth: dict[str, str],
    tid: int,
    address: int,
    **fields: Any,
) -> httpx.Response:
    body = {"scope": {"kind": "task", "tid": tid}, "address": address, "length": 8}
    body.update({"access": "write", **fields})
    with daemon.anon() as http:
        return http.post("/v1/allocations", headers=auth, json=body)


def last_event_id(daemon: Daemon) -> int:
    with daemon.admin() as http:
        return int(http.get("/v1/state").json()["event_id"])


def events(daemon: Daemon, since: int, until: int) -> list[dict[str, Any]]:
    """Every event after `since` up to and including `until`, from the admin stream."""
    out: list[dict[str, Any]] = []
    if until <= since:
        return out
    for event in stream(daemon, since):
        out.append(event)
        if event["id"] >= until:
            break
    return out


def stream(daemon: Daemon, since: int, read_timeout: float = 30) -> Iterator[dict[str, Any]]:
    """The admin event stream from `since` (a read that waits longer than `read_timeout` fails
    the test: no sleeping)."""
    headers = {"Authorization": f"Bearer {daemon.admin_key}", "Last-Event-ID": str(since)}
    timeout = httpx.Timeout(10, read=read_timeout)
    with (
        httpx.Client(base_url=daemon.url, timeout=timeout, verify=daemon.verify()) as http,
        connect_sse(http, "GET", "/v1/events", headers=headers) as source,
    ):
        for sse in source.iter_sse():
            if sse.event == "message" or not sse.data:
                continue
            yield json.loads(sse.data)


def first(
    daemon: Daemon, since: int, match: Callable[[dict[str, Any]], bool], within: float = 30
) -> dict[str, Any]:
    """The first event after `since` that `match`es, read within `within` seconds."""
    deadline = time.monotonic() + within
    for event in stream(daemon, since, read_timeout=within):
        if match(event):
            return event
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"no matching event within {within} s")


# A C program for debuggers: prints its pid and the address of `counter`, then for each line on
# stdin: "w" increments `counter` and answers "wrote"; "x" executes itself again (a debugger's
# breakpoint slots on the thread go with the old image). Built without PIE, so `counter` keeps its
# address across the exec.
C_TARGET = r"""
#include <stdio.h>
#include <unistd.h>
volatile long counter;
int main(int argc, char **argv) {
    char line[64];
    printf("%d %p\n", getpid(), (void *)&counter);
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        if (line[0] == 'w') {
            counter++;
            printf("wrote\n");
            fflush(stdout);
        }
        if (line[0] == 'x') {
            execv("/proc/self/exe", argv);
        }
    }
    return 0;
}
"""


@pytest.fixture(scope="session")
def c_program(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The C target, compiled at test time (skips without gcc)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: apt-get install gcc")
    where = tmp_path_factory.mktemp("c-target")
    source = where / "target.c"
    source.write_text(C_TARGET)
    binary = where / "target"
    subprocess.run(
        [gcc, "-g", "-O0", "-no-pie", "-o", str(binary), str(source)], check=True, timeout=60
    )
    return str(binary)


class CTarget(Target):
    """The C target, running: `poke` writes `counter`, `exec` runs it anew in the same task."""

    def __init__(self, program: str) -> None:
        self.proc = subprocess.Popen(
            [program], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        pid, address = self.proc.stdout.readline().split()
        self.tid, self.address = int(pid), int(address, 16)

    def poke(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("w\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "wrote"

    def __enter__(self) -> CTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()

    def exec(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("x\n")
        self.proc.stdin.flush()
        pid, address = self.proc.stdout.readline().split()
        assert (int(pid), int(address, 16)) == (self.tid, self.address)


@pytest.fixture
def c_target(c_program: str) -> Iterator[CTarget]:
    t = CTarget(c_program)
    yield t
    t.end()


@pytest.fixture(scope="session")
def gdb_path() -> str:
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("gdb is not installed: apt-get install gdb")
    return gdb


def debug_until_the_write(
    gdb: list[str], target: CTarget, env: dict[str, str] | None = None
) -> str:
    """Run `gdb` (a command line ending in `-ex continue`) on the target; once gdb has set its
    watchpoint (the target is stopped under it), ask the target to write `counter`, which it does
    when gdb continues; gdb's whole output once it exits."""
    proc = subprocess.Popen(
        gdb, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    out: list[str] = []
    asked = False
    for line in proc.stdout:
        out.append(line)
        if line.startswith("Hardware watchpoint") and not asked:
            asked = True
            assert target.proc.stdin is not None
            target.proc.stdin.write("w\n")
            target.proc.stdin.flush()
    proc.wait(timeout=60)
    assert target.proc.stdout is not None
    if "New value" in "".join(out):
        assert target.proc.stdout.readline().strip() == "wrote"  # it ran on after the detach
    return "".join(out)
