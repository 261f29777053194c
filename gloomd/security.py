"""Shared-token authentication and TLS settings, kept apart from the I/O.

The token is a shared secret: whoever holds it may submit and take jobs.  It
is compared in constant time (`hmac.compare_digest`) so a stranger cannot
recover it byte by byte from response times.  TLS keeps it (and the jobs)
from being read on the wire; without TLS the token only keeps out clients
that do not know it, which is the point on a trusted network.
"""

from __future__ import annotations

import hmac
import os
import ssl
from pathlib import Path
from typing import Any

from . import jsoncodec, messages

__all__ = ["TokenError", "auth_frame_ok", "load_token", "server_ssl_context"]

ENV_TOKEN = "GLOOMD_TOKEN"


class TokenError(ValueError):
    """The configured token cannot be used (empty, or the file is unreadable)."""


def load_token(token_file: str | os.PathLike[str] | None, environ: dict[str, str] | None = None) -> str | None:
    """The token in force: `--token-file` wins over `GLOOMD_TOKEN`; None means off.

    The token is the file's first line with surrounding whitespace stripped.
    An empty token is refused rather than taken to mean "no auth": a typo in
    a secret file must not silently open the daemon.
    """
    env = os.environ if environ is None else environ
    if token_file is not None:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenError(f"cannot read token file {token_file}: {exc.strerror}") from None
        lines = text.splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise TokenError(f"token file {token_file} is empty")
        return token
    if ENV_TOKEN in env:
        token = env[ENV_TOKEN].strip()
        if not token:
            raise TokenError(f"{ENV_TOKEN} is set but empty")
        return token
    return None


def auth_frame_ok(payload: bytes, token: str, max_values: int = jsoncodec.NO_LIMIT) -> bool:
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
    given = obj.get("token")
    if obj.get("action") != "auth" or type(given) is not str:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8"))


def token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison for tokens from other places (the websocket URL)."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


def server_ssl_context(cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str]) -> ssl.SSLContext:
    """A server-side context with the library's secure defaults (TLS 1.2+)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx
