"""`debugreg` (and `python -m debugreg`): `debugreg gdb` starts gdb at once, without loading the
client library; every other command is `debugreg.cli`."""

from __future__ import annotations

import sys


def main() -> int:
    """Run the command line of this process; returns the exit code."""
    from debugreg.gdb import launch

    words = sys.argv[1:]
    at = launch.command_at(words)
    if at is not None and words[at] == "gdb":
        return launch.main([*words[:at], *words[at + 1 :]])
    from debugreg import cli

    return cli.main(words)


if __name__ == "__main__":
    sys.exit(main())
