"""The journal alone: CPU per group commit and per retention prune, in process.

    .venv/bin/python bench/journal.py --json

A commit holds `size` commands and `size` events shaped like an allocation's (its command as
journaled, its `installed` event as streamed); the sizes take turns, round by round, each on its
own journal in a fresh directory. Every 1,000 events the journal prunes to `--retention`, as the
daemon does. Figures are process CPU time (`time.process_time`), which a pause for another
process on this VM does not count; wall time, which includes the WAL checkpoints' fsyncs, is
given beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from debugregd.store.journal import Batch, Journal, StoredEvent

COMMAND = (
    '{"op":"allocate","session":"s1","request":{"scope":{"kind":"task","tid":100000001},'
    '"address":140726632402944,"length":8,"access":"write","priority":300,"evictable":true,'
    '"on_evict":"release","wait":false,"label":"bench"},"now":1764147000.123456}'
)
EVENT = (
    '{"id":12345,"type":"installed","time":1764147000.123456,"session":"s1","allocation":'
    '{"id":"a12345","session":"s1","state":"installed","scope":{"kind":"task","tid":100000001},'
    '"address":"0x7ffd1000","length":8,"access":"write","priority":300,"evictable":true,'
    '"on_evict":"release","generation":5,"registers":[{"cpu":0,"pool":"dr","index":0},'
    '{"cpu":1,"pool":"dr","index":0}],"space":"user","label":"bench",'
    '"created_at":1764147000.123456,"updated_at":1764147000.123456}}'
)
PRUNE_EVERY = 1_000  # events, as the daemon's runtime


class Subject:
    """One journal written in commits of `size`."""

    def __init__(self, directory: Path, size: int, retention: int) -> None:
        self.journal = Journal(directory / "journal.sqlite3")
        self.size = size
        self.retention = retention
        self.event_id = 0
        self.commits = self.prunes = 0
        self.commit_cpu = self.commit_wall = self.prune_cpu = self.prune_wall = 0.0
        self._since_prune = 0

    def commit(self) -> None:
        batch = Batch.empty()
        for _ in range(self.size):
            self.event_id += 1
            batch.commands.append(COMMAND)
            batch.events.append(StoredEvent(self.event_id, "installed", "s1", EVENT))
        cpu, wall = time.process_time(), time.perf_counter()
        self.journal.write(batch)
        self.commit_cpu += time.process_time() - cpu
        self.commit_wall += time.perf_counter() - wall
        self.commits += 1
        self._since_prune += self.size
        if self._since_prune >= PRUNE_EVERY:
            self._since_prune = 0
            cpu, wall = time.process_time(), time.perf_counter()
            self.journal.prune(self.retention, 0.0)
            self.prune_cpu += time.process_time() - cpu
            self.prune_wall += time.perf_counter() - wall
            self.prunes += 1

    def result(self) -> dict[str, Any]:
        per_commit = 1e6 / self.commits
        return {
            "commits": self.commits,
            "commit_cpu_us": round(self.commit_cpu * per_commit, 1),
            "commit_wall_us": round(self.commit_wall * per_commit, 1),
            "commit_cpu_us_per_command": round(self.commit_cpu * per_commit / self.size, 1),
            "prunes": self.prunes,
            "prune_cpu_ms": round(self.prune_cpu / max(self.prunes, 1) * 1e3, 2),
            "prune_wall_ms": round(self.prune_wall / max(self.prunes, 1) * 1e3, 2),
        }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as tmp:
        subjects = {}
        for size in args.sizes:
            directory = Path(tmp, str(size))
            directory.mkdir()
            subjects[size] = Subject(directory, size, args.retention)
        for _ in range(args.rounds):
            for subject in subjects.values():
                for _ in range(max(1, args.events_per_round // subject.size)):
                    subject.commit()
        results = {str(size): s.result() for size, s in subjects.items()}
        for s in subjects.values():
            s.journal.close()
    return {
        "benchmark": "journal commit and prune",
        "python": sys.version.split()[0],
        "retention": args.retention,
        "events_per_round": args.events_per_round,
        "rounds": args.rounds,
        "by_commit_size": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 30])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--events-per-round", type=int, default=10_000)
    parser.add_argument("--retention", type=int, default=20_000, help="events kept")
    args = parser.parse_args(argv)
    result = bench(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{'commit size':>11} {'cpu us':>8} {'wall us':>8} {'us/command':>10} {'prune ms':>9}"
        )
        for size, r in result["by_commit_size"].items():
            print(
                f"{size:>11} {r['commit_cpu_us']:>8.1f} {r['commit_wall_us']:>8.1f} "
                f"{r['commit_cpu_us_per_command']:>10.1f} {r['prune_cpu_ms']:>9.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
