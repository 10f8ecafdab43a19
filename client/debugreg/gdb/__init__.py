"""The gdb extension: before gdb inserts a hardware watchpoint or `hbreak`, reserve its debug
registers with debugregd at `ptrace` priority, so that programs squatting on them through the
daemon make room instead of gdb failing with ENOSPC (DESIGN section 15).

`extension.py` is the file gdb sources (`debugreg gdb` does it for you: `launch`). Inside gdb
only the standard library and this package's own modules are imported (gdb runs the system's
Python, which has neither httpx nor pydantic): `settings` reads the connection settings, `daemon`
speaks to debugregd over `http.client`, `reservations` keeps what is held for which breakpoint
and thread, `hooks` listens to gdb.
"""

from __future__ import annotations

import os

EXTENSION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "extension.py")
"""The file to `source` in gdb."""
