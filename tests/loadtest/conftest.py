"""One daemon for the whole module: starting one per test would dominate the run, and each load
test audits from its own initial snapshot, so what earlier tests left behind is accounted for."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.daemon import Daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """x86_64 profile, 2 CPUs, sim backend, admin key 'test-admin-key' (as tests/conftest.py)."""
    started = Daemon(tmp_path_factory.mktemp("loadtest-state"), "--cpus", "2").start()
    yield started
    started.kill()
