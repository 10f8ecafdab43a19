"""Hardware backends: `sim` records what would be armed, `perf` arms it through perf_event_open."""

from __future__ import annotations

from debugregd.backends.base import ArmFailure, Backend, Hit
from debugregd.backends.perf import PerfBackend
from debugregd.backends.sim import SimBackend
from debugregd.core.profiles import Profile

BACKENDS = ("sim", "perf")


def make_backend(name: str, profile: Profile | None = None, ncpus: int | None = None) -> Backend:
    """The backend called `name` for a host of `ncpus` CPUs with `profile`."""
    if name == "sim":
        return SimBackend()
    if name == "perf":
        return PerfBackend(profile, ncpus)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "ArmFailure", "Backend", "Hit", "PerfBackend", "SimBackend", "make_backend"]
