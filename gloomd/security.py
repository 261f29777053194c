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
from typing import Any

from gloomwire import codec
from gloomwire.auth import ENV_TOKEN, TokenError, load_token, token_matches

from . import messages

__all__ = [
    "ENV_TOKEN",
    "TokenError",
    "auth_frame_ok",
    "load_token",
    "server_ssl_context",
    "token_matches",
]

def auth_frame_ok(payload: bytes, token: str, max_values: int = codec.NO_LIMIT) -> bool:
    """Is this payload `{"action":"auth","token":T}` with the right token?

    Decoded by the same decoder, under the same policy, as every other frame:
    a payload holding a lone surrogate is invalid JSON here too, never a
    token that fails to encode (issue 18: that stopped the daemon before
    authentication).  `surrogatepass` is a second guard, for this one frame
    that strangers may send.
    """
    try:
        obj: Any = messages.decode_object(payload, max_values)
    except messages.ProtocolViolation:
        return False
    return obj.get("action") == "auth" and token_matches(obj.get("token"), token)


def server_ssl_context(cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str]) -> ssl.SSLContext:
    """A server-side context with the library's secure defaults (TLS 1.2+)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx
