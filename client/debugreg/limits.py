"""Bounds API v1 sets on what a request may ask for and on what an answer lists.

Plain Python with no dependency beyond the standard library, like `debugreg.priorities`: the wire
schema (`debugreg.schema`) enforces them on every request, and the daemon's pure core can check
the same values for requests that do not come through the wire.
"""

from __future__ import annotations

ADDRESS_LIMIT = 1 << 64
"""Addresses are 0 to ADDRESS_LIMIT - 1: 64 bits."""

LENGTH_MAX = 1 << 20
"""The most bytes one request may watch: a sanity bound, since registers run out long before."""

CPU_MAX = 65535
"""The highest CPU number a request may name."""

TID_LIMIT = 1 << 31
"""Thread ids are 1 to TID_LIMIT - 1 (a positive pid_t)."""

TTL_MAX_S = 86_400
"""The longest lease a session may ask for: a day."""

MAX_BLOCKERS = 16
"""A refusal (409) and a `waiting` event name at most this many blockers."""
