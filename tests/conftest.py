"""Shared fixtures: a real daemon on loopback, started per test with its own state directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.daemon import Daemon

if TYPE_CHECKING:
    from tests.support.certs import Pki


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start daemons with extra `debugregd serve` flags (`tls`: serve HTTPS with that PKI,
    `mutual`: and ask clients for a certificate); all are stopped after the test."""
    started: list[Daemon] = []

    def make(
        *args: str, state_dir: Path | None = None, tls: Pki | None = None, mutual: bool = False
    ) -> Daemon:
        directory = state_dir or tmp_path / f"state{len(started)}"
        directory.mkdir(parents=True, exist_ok=True)
        daemon = Daemon(directory, "--cpus", "2", *args, tls=tls, mutual=mutual)
        started.append(daemon)
        return daemon.start()

    yield make
    for daemon in started:
        daemon.kill()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    """One daemon: x86_64 profile, 2 CPUs, sim backend, admin key 'test-admin-key'."""
    return make_daemon()
