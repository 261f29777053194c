"""The client's half of gloomd's security: which token, which TLS context, and
the auth exchange itself (sans-IO, shared by the trio and blocking clients).

The exchange is done once per connection, before the connection is handed to
the master or slave protocol: send ``{"action":"auth","token":T}``, read one
frame.  Doing it up front rather than pipelining it with the first request
costs one round trip per connect, and buys a clear answer: a refused token is
reported as `Unauthorized` by `open_master`/`open_slave` themselves, instead
of surfacing later as a lost connection under whichever request came first.
"""

from __future__ import annotations

import os
import ssl
import struct
from collections.abc import Mapping
from typing import Any

from gloomwire import codec, vocabulary
from gloomwire.auth import ENV_TOKEN, TokenError, load_token
from gloomwire.framing import encode_frame

from .errors import ProtocolError, ServerError, Unauthorized

__all__ = ["AuthHandshake", "TokenError", "client_ssl_context", "resolve_token"]

#: Largest reply to an auth frame we are willing to buffer; the real ones are
#: a few dozen bytes, so anything bigger is not gloomd.
_MAX_REPLY = 64 * 1024

PathLike = str | os.PathLike[str]


def resolve_token(
    token: str | None = None,
    token_file: PathLike | None = None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The token to present: `token`, else `token_file`'s first line, else $GLOOMD_TOKEN.

    The same rules as the daemon's (`gloomwire.auth.load_token`): surrounding
    whitespace is stripped and an empty token is an error (`TokenError`, a
    ValueError), never a silent "no token".  None: no auth frame is sent.
    """
    if token is not None:
        token = token.strip()
        if not token:
            raise TokenError("the token given is empty")
        return token
    env = dict(os.environ if environ is None else environ)
    return load_token(token_file, env)


def client_ssl_context(
    ssl_context: ssl.SSLContext | None = None, *, tls: bool = False, tls_ca: PathLike | None = None
) -> ssl.SSLContext | None:
    """The context to wrap connections in, or None for plaintext.

    An explicit `ssl_context` wins.  Otherwise `tls=True` (or a `tls_ca`, which
    implies it) builds the standard library's default client context: the
    daemon's certificate is verified and its name must match the host we
    dial, against `tls_ca` when given, else the system's trust store.
    """
    if ssl_context is not None:
        return ssl_context
    if not tls and tls_ca is None:
        return None
    return ssl.create_default_context(cafile=None if tls_ca is None else os.fspath(tls_ca))


class AuthHandshake:
    """One auth request and its one reply, fed bytes as they arrive.

    `request` is the frame to send; `receive_data` returns False until the
    reply is complete, then True (accepted) or raises: `Unauthorized` for
    ``unauthorized``, `ServerError` for any other error frame (say
    ``too_many_connections``), `ProtocolError` for something that is not a
    reply.  Bytes that arrived after the reply are kept in `leftover` for the
    protocol that takes the connection over (gloomd sends none, but a stream
    must not lose bytes on the strength of that).
    """

    def __init__(self, token: str) -> None:
        self.request = encode_frame(vocabulary.auth(token))
        self._buf = bytearray()
        self.leftover = b""

    def receive_data(self, data: bytes | bytearray) -> bool:
        self._buf += data
        if len(self._buf) < 4:
            return False
        (length,) = struct.unpack_from(">I", self._buf)
        if length > _MAX_REPLY:
            raise ProtocolError(f"reply to auth of {length} bytes: not gloomd")
        if len(self._buf) < 4 + length:
            return False
        payload = bytes(self._buf[4 : 4 + length])
        self.leftover = bytes(self._buf[4 + length :])
        self._buf.clear()
        try:
            reply: Any = codec.loads(payload)
        except codec.DecodeError as exc:
            raise ProtocolError(f"undecodable reply to auth: {exc}") from None
        if not isinstance(reply, dict):
            raise ProtocolError(f"reply to auth is not an object: {reply!r:.200}")
        if reply.get("ok") is True:
            return True
        if reply.get("error") == "unauthorized":
            raise Unauthorized(reply.get("reason", "auth"))
        if "error" in reply:
            raise ServerError(reply)
        raise ProtocolError(f"unexpected reply to auth: {reply!r:.200}")


__all__ += ["ENV_TOKEN"]
