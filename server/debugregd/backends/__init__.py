"""Hardware backends: `sim` records what would be armed, `perf` arms it through perf_event_open."""

from __future__ import annotations

from debugregd.backends.base import Backend, Hit, Targets
from debugregd.backends.hits import DEFAULT_BUDGET, DEFAULT_SITES
from debugregd.backends.perf import PerfBackend, ProbeError
from debugregd.backends.sim import SimBackend
from debugregd.core.profiles import Profile

BACKENDS = ("sim", "perf")


def make_backend(
    name: str,
    profile: Profile,
    ncpus: int,
    *,
    mode_switching: bool = False,
    hit_budget: int = DEFAULT_BUDGET,
    hit_sites: int = DEFAULT_SITES,
) -> Backend:
    """The backend called `name` for a host of `ncpus` CPUs with `profile`; ProbeError when the
    hardware contradicts them."""
    if name == "sim":
        return SimBackend(profile, ncpus, mode_switching=mode_switching)
    if name == "perf":
        if mode_switching:
            raise ProbeError(
                "--mode-switching is not something Linux does: with --backend perf the kernel "
                "counts user and kernel breakpoints in one budget; drop --mode-switching"
            )
        return PerfBackend(profile, ncpus, hit_budget=hit_budget, hit_sites=hit_sites)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "Backend",
    "Hit",
    "PerfBackend",
    "ProbeError",
    "SimBackend",
    "Targets",
    "make_backend",
]
