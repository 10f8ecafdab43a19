"""API test fixtures: one daemon shared by the modules whose tests do not interfere.

Modules whose tests fill register files start their own daemon by overriding
`api` with a module-scoped fixture built on `start_daemon`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.helpers import Api, start_daemon
from tests.support.daemon import Daemon


@pytest.fixture(scope="package")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = start_daemon(tmp_path_factory, "shared")
    yield daemon
    daemon.kill()


@pytest.fixture(scope="package")
def api(shared_daemon: Daemon) -> Iterator[Api]:
    handle = Api(shared_daemon)
    yield handle
    handle.close()
