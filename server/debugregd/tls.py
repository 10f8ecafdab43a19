"""HTTPS served by uvicorn itself: checking the files before start, and uvicorn's options.

The admin key and session tokens travel in `Authorization` headers, so a daemon reachable beyond
loopback should speak TLS; with a client CA it also asks every client for a certificate (mutual
TLS), which keeps out anyone on the network without one before a token is even read.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from debugregd.config import Settings


def _readable(flag: str, path: Path) -> str | None:
    try:
        with path.open("rb"):
            return None
    except OSError as exc:
        return f"{flag} {path}: {exc.strerror or exc}"


def problem(settings: Settings) -> str | None:
    """Why the TLS settings cannot work, in one line, or None when they can (or TLS is off).

    The files are loaded here, before the state directory is locked and the journal opened,
    so a wrong path, a key that does not match its certificate or a file that is not PEM
    stops the start with a sentence instead of a traceback from inside uvicorn.
    """
    cert, key, ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
    if cert is None and key is None:
        if ca is not None:
            return "--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first"
        return None
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if key is None else ("--tls-key", "--tls-cert")
        return f"{given} needs {missing} too: give both the certificate and its private key"
    for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", ca)):
        if path is not None and (error := _readable(flag, path)):
            return error
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        return (
            f"--tls-cert {cert} with --tls-key {key}: cannot load them ({exc}); both must be "
            "PEM and the key must belong to the certificate"
        )
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError, ValueError) as exc:
            return f"--tls-client-ca {ca}: not a PEM CA bundle ({exc})"
    return None


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments that make `uvicorn.Config` serve HTTPS (none when TLS is off)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return {}
    options: dict[str, Any] = {
        "ssl_certfile": str(settings.tls_cert),
        "ssl_keyfile": str(settings.tls_key),
    }
    if settings.tls_client_ca is not None:
        options["ssl_ca_certs"] = str(settings.tls_client_ca)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options
