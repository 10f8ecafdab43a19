"""The file gdb sources: `gdb -iex 'source .../extension.py'` (what `debugreg gdb` runs), or
`source` at gdb's prompt. It reserves with debugregd the debug registers of gdb's hardware
watchpoints and `hbreak`s (see `debugreg.gdb`).

gdb runs it in the system's Python, which may lack the client library's dependencies (httpx,
pydantic): so it imports `debugreg.gdb` and `debugreg.tls` as modules of a bare `debugreg`
package, from the directory this file is in, without running `debugreg/__init__.py`.
"""

from __future__ import annotations

import os
import sys
import types


def _load() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    if "debugreg" not in sys.modules:
        package = types.ModuleType("debugreg")
        package.__path__ = [os.path.dirname(here)]
        sys.modules["debugreg"] = package
    from debugreg.gdb import hooks

    hooks.install()


_load()
