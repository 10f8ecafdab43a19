"""How the clients check an `https://` daemon and, for mutual TLS, show their own certificate.

One place for both `Client` and `AsyncClient` (and so the CLI): they hand the result to httpx as
its `verify` argument and never look at certificates themselves.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

StrPath = str | os.PathLike[str]

CA_ENV, CERT_ENV, KEY_ENV = "DEBUGREG_CA", "DEBUGREG_CERT", "DEBUGREG_KEY"


def _path(value: StrPath | None, env: str) -> Path | None:
    if value is None:
        value = os.environ.get(env) or None
    return None if value is None else Path(value)


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """A CA bundle to trust (None: the system's) and a client certificate and key (mutual TLS).

    Parameters left None are read from DEBUGREG_CA, DEBUGREG_CERT and DEBUGREG_KEY.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def resolve(
        cls, ca: StrPath | None = None, cert: StrPath | None = None, key: StrPath | None = None
    ) -> TLSSettings:
        """Settings from the arguments given, the environment for the rest."""
        return cls(_path(ca, CA_ENV), _path(cert, CERT_ENV), _path(key, KEY_ENV))

    def context(self) -> ssl.SSLContext:
        """An SSL context that verifies the daemon (hostname included) against `ca` and shows
        `cert` when the daemon asks. Raises ValueError naming the file it cannot use."""
        if self.key is not None and self.cert is None:
            raise ValueError(f"a client key ({self.key}) needs its certificate too ({CERT_ENV})")
        try:
            context = ssl.create_default_context(cafile=self.ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"CA bundle {self.ca}: {_reason(exc)}") from None
        if self.cert is not None:
            try:
                # A PEM holding both certificate and key is fine: `key` None reads it from `cert`.
                context.load_cert_chain(self.cert, self.key)
            except (OSError, ssl.SSLError) as exc:
                where = self.cert if self.key is None else f"{self.cert} with key {self.key}"
                raise ValueError(f"client certificate {where}: {_reason(exc)}") from None
        return context


def _reason(exc: OSError) -> str:
    # ssl.SSLError is an OSError whose strerror is unset for some failures.
    return exc.strerror or str(exc)
