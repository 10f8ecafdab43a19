"""Instructions per allocate+release pair in the core, counted by Callgrind: a deterministic
figure for comparing two versions of the core on a machine too noisy to time small changes.

    .venv/bin/python bench/instructions.py --json

Runs this script under `valgrind --tool=callgrind` twice, doing 0 and then `--pairs` pairs
(after the same set-up, `--live` installed task allocations), and reports the difference divided
by the pairs: Python start-up and set-up cancel out. Building each `Request` is included, as in
bench/core.py. Needs Debian's valgrind.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys

from debugregd.core import Access, Arbiter, OnEvict, Request, Scope, make_profile


def request(tid: int) -> Request:
    return Request(Scope.task(tid), 0x7FFD1000, 8, Access.WRITE, 300, True, OnEvict.RELEASE, False)


def pairs(live: int, n: int) -> None:
    """The measured workload: `live` held allocations, then `n` allocate+release pairs."""
    arb = Arbiter(make_profile("x86_64", None), 2)
    session, _ = arb.open_session("bench", 86400.0, 0.0)
    for i in range(live):
        arb.allocate(session.id, request(10_000 + i), 1.0)
    for i in range(n):
        alloc, _ = arb.allocate(session.id, request(1_000_000 + i), 1.0)
        arb.release(alloc.id, 1.0, session_id=session.id)


def callgrind(command: list[str]) -> int:
    """Instructions of a whole run of `command`, under Callgrind."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("needs valgrind: apt-get install valgrind")
    tool = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    out = subprocess.run([*tool, *command], capture_output=True, text=True, check=True).stderr
    match = re.search(r"Collected : (\d+)", out)
    if match is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{out}")
    return int(match.group(1))


def counted(live: int, n: int) -> int:
    """Instructions of a whole run of this script doing `n` pairs, under Callgrind."""
    return callgrind([sys.executable, __file__, "--run", str(live), str(n)])


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--live", type=int, default=1000, help="allocations held throughout")
    parser.add_argument("--pairs", type=int, default=3000, help="allocate+release pairs counted")
    parser.add_argument("--run", nargs=2, type=int, help=argparse.SUPPRESS)  # the measured child
    args = parser.parse_args()
    if args.run:
        pairs(*args.run)
        return 0
    base, full = counted(args.live, 0), counted(args.live, args.pairs)
    per_pair = (full - base) / args.pairs
    result = {"instructions_per_pair": round(per_pair), "live": args.live, "pairs": args.pairs}
    print(json.dumps(result) if args.json else f"{per_pair:,.0f} instructions per pair")
    return 0


if __name__ == "__main__":
    sys.exit(main())
