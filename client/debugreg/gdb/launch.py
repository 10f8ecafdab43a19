"""`debugreg gdb [options] [gdb arguments...]`: run the system's gdb with the extension loaded.

debugreg's own options come first; the first word that is not one of them (or `--`) starts
gdb's arguments, which gdb receives unchanged: `debugreg gdb -p 4242`, `debugreg gdb --args
./prog`. The connection settings reach the extension through the environment (the variables the
CLI reads), and gdb replaces this process, so its exit code and its Ctrl-C are gdb's own.

Only the standard library is imported here, and the options are read without argparse (kept for
`--help`): `debugreg gdb` starts gdb in the time Python starts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from debugreg.gdb import EXTENSION
from debugreg.gdb.settings import (
    ADDED_ENV,
    ADMIN_KEY_ENV,
    DEFAULT_TTL_S,
    SESSION_ENV,
    TOKEN_ENV,
    TTL_ENV,
    URL_ENV,
)

TYPE_CHECKING = False  # not typing's: importing typing would cost 5 ms (mypy knows the name)
if TYPE_CHECKING:
    import argparse

USAGE = 2
NOT_FOUND = 127  # as a shell says a command was not found

# The connection options of every debugreg command (`debugreg --help`): True takes a value.
CONNECTION = {
    "--url": True,
    "--token": True,
    "--admin-key": True,
    "--ca": True,
    "--cert": True,
    "--key": True,
    "--json": False,
}
OWN = {**CONNECTION, "--session": True, "--ttl": True, "--gdb": True, "--path": False}
OWN.update({"-h": False, "--help": False})

# Where each option goes in gdb's environment (the CLI's variables).
ENVIRONMENT = {
    "--url": URL_ENV,
    "--token": TOKEN_ENV,
    "--session": SESSION_ENV,
    "--admin-key": ADMIN_KEY_ENV,
    "--ca": "DEBUGREG_CA",
    "--cert": "DEBUGREG_CERT",
    "--key": "DEBUGREG_KEY",
    "--ttl": TTL_ENV,
}


class UsageError(Exception):
    """A `debugreg gdb` command line that cannot be run as given."""


def command_at(words: Sequence[str]) -> int | None:
    """Where the command is in a debugreg command line (after the connection options)."""
    at = 0
    while at < len(words):
        word = words[at]
        if not word.startswith("-"):
            return at
        at += 2 if CONNECTION.get(word) else 1
    return None


def split(words: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """debugreg's options (by name: `{"--url": "http://..."}`) and gdb's arguments, from the
    words after `gdb`."""
    given: dict[str, str] = {}
    at = 0
    while at < len(words):
        word = words[at]
        if word == "--":
            return given, list(words[at + 1 :])
        name, equals, value = word.partition("=")
        if name not in OWN:
            break
        at += 1
        if OWN[name] and not equals:
            if at == len(words):
                raise UsageError(f"{name} needs a value")
            value, at = words[at], at + 1
        given[name] = value
    return given, list(words[at:])


def parser() -> argparse.ArgumentParser:
    """The options, for `--help` (what `split` reads)."""
    import argparse

    p = argparse.ArgumentParser(
        prog="debugreg gdb",
        usage="debugreg gdb [options] [gdb arguments...]",
        description=(
            "Run gdb with the debugreg extension: its hardware watchpoints and hbreaks reserve "
            "their debug registers with debugregd (at ptrace priority) before gdb inserts them. "
            "Arguments after debugreg's options go to gdb unchanged, e.g. `debugreg gdb -p 4242` "
            "or `debugreg gdb --args ./prog`."
        ),
        epilog=(
            "The extension needs a session token with the ptrace grant (--token) or the admin "
            "key (--admin-key), with which it opens a session of its own. Without debugreg gdb: "
            'gdb -iex "source $(debugreg gdb --path)" ..., or gdb\'s `source` command with the '
            "path --path prints."
        ),
    )
    p.add_argument("--url", help=f"daemon URL (env {URL_ENV})")
    p.add_argument("--token", help=f"session token with the ptrace grant (env {TOKEN_ENV})")
    p.add_argument(
        "--session", help=f"that token's session id, to keep it alive (env {SESSION_ENV})"
    )
    p.add_argument("--admin-key", help=f"admin key (env {ADMIN_KEY_ENV})")
    p.add_argument("--ca", help="CA bundle of an https:// daemon (env DEBUGREG_CA)")
    p.add_argument("--cert", help="client certificate, mutual TLS (env DEBUGREG_CERT)")
    p.add_argument("--key", help="client certificate's key (env DEBUGREG_KEY)")
    p.add_argument(
        "--ttl",
        type=float,
        help=f"TTL of the extension's session, seconds (env {TTL_ENV}, default {DEFAULT_TTL_S:g})",
    )
    p.add_argument("--gdb", default="gdb", help="the gdb to run (default: gdb on PATH)")
    p.add_argument("--path", action="store_true", help="print the extension's path and exit")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    return p


def environment(given: Mapping[str, str], inherited: Mapping[str, str]) -> dict[str, str]:
    """gdb's environment: the inherited one with the settings given as options, and the names
    of those it added (the extension keeps them from the programs gdb runs)."""
    env = dict(inherited)
    added = []
    for option, name in ENVIRONMENT.items():
        value = given.get(option)
        if value is not None and env.get(name) != value:
            env[name] = value
            added.append(name)
    env[ADDED_ENV] = " ".join(added)
    return env


def main(words: Sequence[str]) -> int:
    """Run `debugreg gdb` given the words after `gdb` (and any connection options before it);
    returns only when gdb is not started, else gdb takes over the process."""
    try:
        given, gdb_args = split(words)
        ttl = given.get("--ttl")
        if ttl is not None and not _positive(ttl):
            raise UsageError(f"--ttl is a number of seconds above 0, not {ttl!r}")
    except UsageError as exc:
        print(f"debugreg gdb: {exc} (debugreg gdb --help)", file=sys.stderr)
        return USAGE
    if "-h" in given or "--help" in given:
        parser().print_help()
        return 0
    if "--path" in given:
        print(EXTENSION)
        return 0
    wanted = given.get("--gdb", "gdb")
    gdb = _which(wanted)
    if gdb is None:
        print(
            f"debugreg: {wanted} not found: install gdb (apt-get install gdb) or give --gdb PATH",
            file=sys.stderr,
        )
        return NOT_FOUND
    argv = [gdb, "-iex", f"source {EXTENSION}", *gdb_args]
    sys.stdout.flush()
    os.execve(gdb, argv, environment(given, os.environ))


def _which(program: str) -> str | None:
    """`program`'s path, as the shell finds it (shutil.which, without the 6 ms of importing
    shutil and re)."""
    if "/" in program:
        return program if os.access(program, os.X_OK) and os.path.isfile(program) else None
    for directory in (os.environ.get("PATH") or os.defpath).split(os.pathsep):
        path = os.path.join(directory or ".", program)
        if os.access(path, os.X_OK) and os.path.isfile(path):
            return path
    return None


def _positive(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False
