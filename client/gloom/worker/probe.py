"""The start-up check: is the daemon there, and will it have us?

Later losses reconnect, but at start-up a wrong address, a refused token or
a plaintext runner on a TLS-only port must fail fast with a clear message.
One full exchange, not just a TCP connect: a plaintext client on a TLS-only
port, or one without a token on a daemon that wants one, gets its connection
accepted and then closed, which only a reply can tell.  The exchange is a
``ping`` on the slave port through the client's `SlaveProtocol`: gloomd
answers ``{"ok":true}``, older daemons an error frame, an answer either way.
"""

from __future__ import annotations

import trio

from .._connect import Endpoint, connect
from .._slave_protocol import SlaveProtocol
from ..errors import ProtocolError, TransportError, Unauthorized

__all__ = ["probe", "probe_any"]

_READ_SIZE = 64 * 1024


async def probe(endpoint: Endpoint) -> None:
    """Return once the daemon answered a ping; raise `TransportError` (with a
    hint when a TLS-only port is the likely cause) or `Unauthorized`."""
    where = endpoint.peer
    timeout = 10.0 if endpoint.connect_timeout is None else endpoint.connect_timeout
    # A plaintext hello on a TLS-only port is closed (or reset) unanswered.
    hint = endpoint.tls_hint
    try:
        stream = await connect(endpoint)
    except TransportError as exc:
        # "cannot reach ..." is TCP itself failing; anything later (a close
        # during auth) is what a TLS-only port does to plaintext.
        if not hint or str(exc).startswith("cannot reach"):
            raise
        raise TransportError(f"{exc}{hint}") from None
    protocol = SlaveProtocol()
    ping, data = protocol.ping()
    try:
        with trio.move_on_after(timeout) as scope:
            await stream.send_all(data)
            while not ping.answered:
                received = await stream.receive_some(_READ_SIZE)
                if not received:
                    raise TransportError(
                        f"gloomd at {where} closed the connection without a reply{hint}"
                    )
                protocol.receive_data(received)
        if scope.cancelled_caught:
            raise TransportError(f"gloomd at {where} did not answer a ping in {timeout:g} s")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        reason = f"gloomd at {where} dropped the start-up check ({exc}){hint}"
        raise TransportError(reason) from None
    except ProtocolError as exc:
        reason = f"gloomd at {where} answered the start-up check oddly: {exc}"
        raise TransportError(reason) from None
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
    if isinstance(ping.error, Unauthorized):
        raise ping.error


async def probe_any(endpoints: list[Endpoint]) -> list[str]:
    """`probe` every daemon side by side; return the unreachable ones' reasons.

    With several daemons (``--servers``) one that answers is enough to start
    (the slots keep trying the others); a refused token anywhere is raised,
    and so is the first daemon's error when none answers.
    """
    if len(endpoints) == 1:
        await probe(endpoints[0])
        return []
    errors: list[TransportError | None] = [None] * len(endpoints)
    refused: list[Unauthorized] = []

    async def one(index: int) -> None:
        try:
            await probe(endpoints[index])
        except TransportError as exc:
            errors[index] = exc
        except Unauthorized as exc:
            refused.append(exc)

    async with trio.open_nursery() as nursery:
        for index in range(len(endpoints)):
            nursery.start_soon(one, index)
    if refused:
        raise refused[0]
    failed = [error for error in errors if error is not None]
    if len(failed) == len(endpoints):
        raise failed[0]
    return [str(error) for error in failed]
