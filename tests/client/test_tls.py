"""HTTPS served by the daemon itself, and the client library and CLI speaking it.

A CA, a server certificate for loopback and a client certificate are made at test time
(tests/support/certs.py); the daemon is a real `debugregd serve` process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from debugreg import AsyncClient, Client, Event, InvalidRequest, Unreachable
from debugreg.cli import OK, UNREACHABLE, USAGE
from tests.client.conftest import WAIT_S, Recorder, wait_until
from tests.support.certs import Pki, make_pki
from tests.support.daemon import Daemon, free_port

CLI_TIMEOUT_S = 60
WHERE = {"scope": {"kind": "cpu", "cpu": 0}, "address": 0x7F00_0000_1000, "length": 8}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def cli(daemon: Daemon, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`debugreg ARGS` against `daemon` with only the settings given here (no inherited
    credentials or TLS settings)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DEBUGREG_", "DEBUGREGD_"))}
    environ.update(DEBUGREG_URL=daemon.url, **env)
    return subprocess.run(
        [sys.executable, "-m", "debugreg.cli", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def watch_cli(daemon: Daemon, *args: str, **env: str) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DEBUGREG_", "DEBUGREGD_"))}
    environ.update(DEBUGREG_URL=daemon.url, **env)
    return subprocess.Popen(
        [sys.executable, "-m", "debugreg.cli", "watch", *args],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# ---------------------------------------------------------------- the round trip


def test_the_client_allocates_hears_its_eviction_and_releases_over_https(
    make_daemon: Callable[..., Daemon], pki: Pki
) -> None:
    daemon = make_daemon(tls=pki)
    assert daemon.url.startswith("https://")
    heard = Recorder()
    with (
        Client(daemon.url, ca=pki.ca) as client,
        Client(daemon.url, ca=pki.ca, admin_key=daemon.admin_key) as admin,
        client.session("tls-victim", on_evicted=heard) as session,
    ):
        victim = session.allocate(**WHERE, access="write", priority="background")
        kept = session.allocate(**WHERE, access="rw")
        admin.evict(victim.id, "an operator needs it")
        wait_until(lambda: heard.of("evicted", victim.id), "the eviction notice arrives")
        (notice,) = heard.of("evicted", victim.id)
        assert notice.reason == "an operator needs it"
        assert victim.state == "evicted"
        assert kept.release().state == "released"
        assert [a.id for a in admin.allocations()] == []


async def test_the_async_client_takes_its_ca_from_debugreg_ca(
    make_daemon: Callable[..., Daemon], pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = make_daemon(tls=pki)
    monkeypatch.setenv("DEBUGREG_CA", str(pki.ca))
    evicted = asyncio.Event()
    heard: list[Event] = []

    def on_evicted(event: Event) -> None:
        heard.append(event)
        evicted.set()

    async with (
        AsyncClient(daemon.url) as client,
        AsyncClient(daemon.url, admin_key=daemon.admin_key) as admin,
        client.session("tls-async", on_evicted=on_evicted) as session,
    ):
        victim = await session.allocate(**WHERE, access="write", priority="background")
        kept = await session.allocate(**WHERE, access="rw")
        await admin.evict(victim.id, "async eviction")
        await asyncio.wait_for(evicted.wait(), WAIT_S)
        assert [e.allocation.id for e in heard if e.allocation] == [victim.id]
        assert (await kept.release()).state == "released"


def test_the_cli_allocates_streams_an_eviction_and_releases_over_https(
    make_daemon: Callable[..., Daemon], pki: Pki
) -> None:
    daemon = make_daemon(tls=pki)
    ca = {"DEBUGREG_CA": str(pki.ca)}
    opened = cli(daemon, "session", "open", "--ttl", "60", "--json", **ca)
    assert opened.returncode == OK, opened.stderr
    session = json.loads(opened.stdout)
    mine = {**ca, "DEBUGREG_TOKEN": session["token"], "DEBUGREG_SESSION": session["id"]}

    made = cli(
        daemon,
        *("allocate", "--cpu", "0", "--address", "0x7f0000001000", "--length", "8"),
        *("--priority", "background", "--json"),
        **mine,
    )
    assert made.returncode == OK, made.stderr
    victim = json.loads(made.stdout)["allocation"]
    made = cli(
        daemon,
        *("allocate", "--cpu", "0", "--address", "0x7f0000002000", "--length", "8"),
        *("--access", "rw", "--json"),
        **mine,
    )
    assert made.returncode == OK, made.stderr
    kept = json.loads(made.stdout)["allocation"]
    with Client(daemon.url, ca=pki.ca, admin_key=daemon.admin_key) as admin:
        since = admin.state().event_id

    # The stream resumes after `since`, so the eviction below reaches it whether or not the
    # stream connected first; it ends after one event.
    watcher = watch_cli(daemon, "--since", str(since), "--count", "1", "--json", **mine)
    try:
        evicted = cli(
            daemon,
            *("--ca", str(pki.ca), "evict", victim["id"], "--reason", "cli eviction"),
            DEBUGREGD_ADMIN_KEY=daemon.admin_key,
        )
        assert evicted.returncode == OK, evicted.stderr
        out, err = watcher.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        watcher.kill()
    assert watcher.returncode == OK, err
    event = json.loads(out)
    assert event["type"] == "evicted"
    assert event["allocation"]["id"] == victim["id"]
    assert event["reason"] == "cli eviction"

    released = cli(daemon, "release", kept["id"], "--json", **mine)
    assert released.returncode == OK, released.stderr
    assert json.loads(released.stdout)["state"] == "released"


# ---------------------------------------------------------------- trust


def test_a_daemon_signed_by_another_ca_is_not_trusted(
    make_daemon: Callable[..., Daemon], pki: Pki, tmp_path: Path
) -> None:
    daemon = make_daemon(tls=pki)
    stranger = make_pki(tmp_path / "other")
    with Client(daemon.url, ca=stranger.ca, retries=0) as client, pytest.raises(Unreachable) as e:
        client.host()
    assert "CERTIFICATE_VERIFY_FAILED" in e.value.detail
    refused = cli(daemon, "--ca", str(stranger.ca), "host")
    assert refused.returncode == UNREACHABLE
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr


def test_mutual_tls_refuses_a_client_without_a_certificate(
    make_daemon: Callable[..., Daemon], pki: Pki
) -> None:
    daemon = make_daemon(tls=pki, mutual=True)
    with Client(daemon.url, ca=pki.ca, retries=0) as client, pytest.raises(Unreachable):
        client.host()
    assert cli(daemon, "--ca", str(pki.ca), "host").returncode == UNREACHABLE

    with Client(daemon.url, ca=pki.ca, cert=pki.client_cert, key=pki.client_key) as client:
        assert client.host().cpus == 2
    shown = cli(
        daemon,
        *("--ca", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key)),
        *("host", "--json"),
    )
    assert shown.returncode == OK, shown.stderr
    assert json.loads(shown.stdout)["cpus"] == 2
    by_env = cli(
        daemon,
        "host",
        DEBUGREG_CA=str(pki.ca),
        DEBUGREG_CERT=str(pki.client_cert),
        DEBUGREG_KEY=str(pki.client_key),
    )
    assert by_env.returncode == OK, by_env.stderr


def test_tls_settings_the_client_cannot_read_are_an_invalid_request(
    daemon: Daemon, tmp_path: Path
) -> None:
    missing = tmp_path / "missing-ca.pem"
    url = f"https://127.0.0.1:{free_port()}"
    with pytest.raises(InvalidRequest) as e:
        Client(url, ca=missing)
    assert str(missing) in e.value.detail
    with pytest.raises(InvalidRequest):
        AsyncClient(url, key=tmp_path / "key-without-cert.pem")
    result = subprocess.run(
        [sys.executable, "-m", "debugreg.cli", "--url", url, "--ca", str(missing), "host"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == USAGE
    assert result.stderr.startswith("debugreg: invalid request: cannot use the TLS settings")
    assert len(result.stderr.strip().splitlines()) == 1
    # Read only for https: a stale DEBUGREG_CA does not break a plain-HTTP daemon.
    with Client(daemon.url, ca=missing) as plain:
        assert plain.host().cpus == 2


# ---------------------------------------------------------------- the daemon's side


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    """`debugregd serve` expected to refuse to start (a hang would hit the timeout)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DEBUGREGD_")}
    environment["DEBUGREGD_ADMIN_KEY"] = "test-admin-key"
    command = [sys.executable, "-m", "debugregd", "serve", "--port", str(free_port()), *args]
    return subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("cert-only", "--tls-cert needs --tls-key too"),
        ("key-only", "--tls-key needs --tls-cert too"),
        ("missing-cert", "No such file or directory"),
        ("key-is-a-directory", "Is a directory"),
        ("foreign-key", "the key must belong to the certificate"),
        ("client-ca-alone", "--tls-client-ca needs --tls-cert and --tls-key"),
        ("bad-client-ca", "--tls-client-ca"),
    ],
)
def test_the_daemon_refuses_tls_settings_it_cannot_use_in_one_line(
    case: str, expected: str, pki: Pki, tmp_path: Path
) -> None:
    cert, key = str(pki.server_cert), str(pki.server_key)
    not_pem = tmp_path / "not-a-ca.pem"
    not_pem.write_text("not a certificate\n")
    args = {
        "cert-only": ["--tls-cert", cert],
        "key-only": ["--tls-key", key],
        "missing-cert": ["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", key],
        "key-is-a-directory": ["--tls-cert", cert, "--tls-key", str(tmp_path)],
        "foreign-key": ["--tls-cert", cert, "--tls-key", str(pki.client_key)],
        "client-ca-alone": ["--tls-client-ca", str(pki.ca)],
        "bad-client-ca": ["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", str(not_pem)],
    }[case]
    state_dir = tmp_path / "state"
    result = serve("--state-dir", str(state_dir), "--cpus", "2", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("debugregd: ") and expected in lines[0], lines[0]
    assert not (state_dir / "journal.sqlite3").exists()


def test_tls_settings_come_from_the_environment_too(pki: Pki, tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DEBUGREGD_")}
    environment["DEBUGREGD_TLS_CERT"] = str(pki.server_cert)
    result = subprocess.run(
        [sys.executable, "-m", "debugregd", "serve", "--port", str(free_port())],
        env={**environment, "DEBUGREGD_STATE_DIR": str(tmp_path / "state")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--tls-cert needs --tls-key too" in result.stderr


def test_beyond_loopback_tls_silences_the_warning_and_the_address_is_https(
    make_daemon: Callable[..., Daemon], pki: Pki
) -> None:
    plain = make_daemon("--host", "0.0.0.0")
    secure = make_daemon("--host", "0.0.0.0", tls=pki)
    assert "WITHOUT TLS" in plain.log()
    assert f"dashboard at http://127.0.0.1:{plain.port}/" in plain.log()
    assert "WITHOUT TLS" not in secure.log()
    assert f"dashboard at https://127.0.0.1:{secure.port}/" in secure.log()
