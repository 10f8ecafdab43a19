"""Tests of the pure arbitration core (`debugregd.core`): no network, no clock, no I/O."""
