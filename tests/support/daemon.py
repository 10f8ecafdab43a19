"""A real debugregd process on a loopback port, for API, client, browser and end-to-end tests."""

from __future__ import annotations

import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from tests.support.certs import Pki

START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """`debugregd serve` as a child process. The state directory outlives restarts.

    With `tls` it serves HTTPS with that PKI's server certificate (and, `mutual`, asks clients
    for one signed by its CA); its own httpx clients trust that CA and show the client pair.
    """

    def __init__(
        self,
        state_dir: Path,
        *args: str,
        admin_key: str = "test-admin-key",
        tls: Pki | None = None,
        mutual: bool = False,
        open_files: int | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.tls = tls
        self.args = [*(tls.server_args(mutual=mutual) if tls else ()), *args]
        self.admin_key = admin_key
        self.open_files = open_files  # RLIMIT_NOFILE (soft and hard) for the daemon, if given
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir / "daemon.log"

    def start(self) -> Daemon:
        env = dict(os.environ, DEBUGREGD_ADMIN_KEY=self.admin_key)
        cmd = [
            sys.executable,
            "-m",
            "debugregd",
            "serve",
            "--port",
            str(self.port),
            "--state-dir",
            str(self.state_dir),
            *self.args,
        ]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=self._limit
        )
        self.wait_ready()
        return self

    def _limit(self) -> None:
        if self.open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def wait_ready(self) -> None:
        """Poll /healthz until the daemon answers (or fail with its log)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"debugregd exited early:\n{self.log()}")
            try:
                answer = httpx.get(f"{self.url}/healthz", timeout=1.0, verify=self.verify())
                if answer.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # polling a readiness condition, bounded by the deadline
        raise RuntimeError(f"debugregd did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        """SIGTERM and wait: a graceful shutdown."""
        return self._signal(signal.SIGTERM)

    def kill(self) -> int:
        """SIGKILL: the daemon gets no chance to clean up."""
        return self._signal(signal.SIGKILL)

    def restart(self, *, kill: bool = True) -> Daemon:
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    def _signal(self, sig: signal.Signals) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        return code

    def verify(self) -> ssl.SSLContext | bool:
        """httpx's `verify` for this daemon: its CA and the client pair when it serves TLS."""
        return self.tls.client_context() if self.tls else True

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.admin_key}"},
            timeout=10,
            verify=self.verify(),
        )

    def anon(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, verify=self.verify())
