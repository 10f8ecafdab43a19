"""`debugreg gdb` as a launcher, with a stand-in for gdb: gdb's arguments pass unchanged, the
connection settings reach it through the environment, and its exit code is the command's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from debugreg.client import DEFAULT_URL
from debugreg.gdb import EXTENSION, settings
from debugreg.gdb.launch import NOT_FOUND

# Prints its arguments and the settings it was given, one per line, and exits 7.
STAND_IN = """#!/bin/sh
for word in "$@"; do echo "arg $word"; done
echo "url $DEBUGREG_URL"
echo "admin $DEBUGREGD_ADMIN_KEY"
echo "added $DEBUGREG_GDB_ADDED"
exit 7
"""


def debugreg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DEBUGREG")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "debugreg", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_gdb_gets_its_arguments_unchanged_and_the_settings_in_its_environment(
    tmp_path: Path,
) -> None:
    gdb = tmp_path / "gdb"
    gdb.write_text(STAND_IN)
    gdb.chmod(0o755)
    done = debugreg(
        "--url",
        "http://127.0.0.1:9",
        "gdb",
        "--admin-key",
        "secret",
        "--gdb",
        str(gdb),
        "-batch",
        "--args",
        "./prog",
        "--url",
        "kept",
        env={"DEBUGREG_URL": "http://127.0.0.1:9"},
    )
    assert done.returncode == 7, done.stderr
    assert done.stdout.splitlines() == [
        "arg -iex",
        f"arg source {EXTENSION}",
        "arg -batch",
        "arg --args",
        "arg ./prog",
        "arg --url",
        "arg kept",
        "url http://127.0.0.1:9",
        "admin secret",
        "added DEBUGREGD_ADMIN_KEY",  # the URL was in the environment already
    ]


def test_double_dash_ends_debugregs_options(tmp_path: Path) -> None:
    gdb = tmp_path / "gdb"
    gdb.write_text(STAND_IN)
    gdb.chmod(0o755)
    done = debugreg("gdb", "--gdb", str(gdb), "--", "--help")
    assert done.returncode == 7
    assert done.stdout.splitlines()[2] == "arg --help"


def test_path_names_the_file_to_source() -> None:
    done = debugreg("gdb", "--path")
    assert done.returncode == 0
    assert done.stdout.strip() == EXTENSION
    assert Path(EXTENSION).is_file()


def test_a_missing_gdb_is_said_in_one_line() -> None:
    done = debugreg("gdb", "--gdb", "/nonexistent/gdb", "-p", "1")
    assert done.returncode == NOT_FOUND
    assert done.stderr.startswith("debugreg: /nonexistent/gdb not found: ")


def test_the_extension_defaults_to_the_clis_url() -> None:
    assert settings.DEFAULT_URL == DEFAULT_URL
