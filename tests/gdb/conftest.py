"""gdb with the debugreg extension against the sim backend: a fake kernel, so these run wherever
gdb may attach to a process (no hardware breakpoint is needed from perf_event_open)."""

from __future__ import annotations

from tests.support.gdb import target, target_binary

__all__ = ["target", "target_binary"]
