"""Shared-token authentication and TLS settings, kept apart from the I/O.

The token is a shared secret: whoever holds it may submit and take jobs.  It
is compared in constant time (`gloomwire.auth.token_matches`) so a stranger cannot
recover it byte by byte from response times.  TLS keeps it (and the jobs)
from being read on the wire; without TLS the token only keeps out clients
that do not know it, which is the point on a trusted network.
"""

from __future__ import annotations

import os
import ssl

from gloomwire.auth import ENV_TOKEN, TokenError, load_token, token_matches

__all__ = [
    "ENV_TOKEN",
    "TokenError",
    "load_token",
    "server_ssl_context",
    "token_matches",
]


def server_ssl_context(
    cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str]
) -> ssl.SSLContext:
    """A server-side context with the library's secure defaults (TLS 1.2+)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx
