"""What the HTTP port is told: address, TLS, token, caps and timeouts."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from gloomwire.framing import DEFAULT_MAX_FRAME

from ..config import Config

__all__ = ["DEFAULT_HTTP_PORT", "HttpSettings"]

DEFAULT_HTTP_PORT = 9997


@dataclass(frozen=True)
class HttpSettings:
    """The HTTP service's knobs; `from_config` takes the daemon's own.

    The port shares the daemon's security and limits on purpose: one token,
    one certificate, one connection cap and one slowloris timeout for every
    port, so turning on TLS or a token cannot leave a side door open.
    """

    host: str = "127.0.0.1"
    #: 0: any free port (read it back from `HttpService.port`).
    port: int = DEFAULT_HTTP_PORT
    #: TLS for the port; None: plaintext.
    ssl_context: ssl.SSLContext | None = None
    #: Every request but the page's static files needs `Authorization: Bearer TOKEN`.
    token: str | None = field(default=None, repr=False)
    #: Open HTTP connections; the next one is answered 503 and closed.
    max_connections: int = 10_000
    #: Seconds a request (line, headers and body) may take to arrive, and an
    #: idle keep-alive connection may stay open (slowloris guard); also the
    #: TLS handshake's limit and the limit for writing a response.
    request_timeout: float = 30.0
    #: Largest request body (a POST to /api/...): over it, 413 and close.
    max_body: int = DEFAULT_MAX_FRAME
    #: Request line plus headers; over it, 431 and close.
    max_header_bytes: int = 64 * 1024
    #: Job types with a label of their own in /metrics; the rest are summed
    #: under type="_other" so a flood of types cannot flood Prometheus.
    metrics_max_types: int = 1_000

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_HTTP_PORT,
        metrics_max_types: int = 1_000,
    ) -> HttpSettings:
        """The settings that follow from the daemon's: TLS, token, cap, timeout, frame size."""
        return cls(
            host=host,
            port=port,
            ssl_context=config.ssl_context,
            token=config.token,
            max_connections=config.max_connections,
            request_timeout=config.frame_timeout,
            max_body=config.max_frame,
            metrics_max_types=metrics_max_types,
        )
