"""Admin actions over HTTP, answered by the broker's own master protocol.

`POST /api/kick` and friends do not reimplement any rule: each request
becomes the very frame a master would send (`{"action":"kick","id":...}`),
fed to `Broker.receive` from an internal master peer, and the frame the
broker answers is the HTTP reply.  So validation, check order and error
frames are those of the master port, byte for byte, and an action the broker
does not know yet answers `unknown_action` here exactly as it does there.

The internal peer is built as a `MasterPeer` but not registered through
`Broker.connect_master`: it is no connection, so `stats` must not count it
among `connections.masters`, and it submits nothing, so `halt` and
`disconnect` have nothing to do for it.  The HTTP layer lets only the
actions below through (the path names the action), so it never holds a job.

Everything here runs synchronously between two awaits: the reply is in the
peer's outbox right after `receive`, and the peer is taken off the broker's
dirty set before the server's flush could see it (it has no transport).
"""

from __future__ import annotations

from typing import Any, Final

from gloomwire import codec

from ..broker import Broker, MasterPeer
from ..ingest import MasterIngest
from ..server import GloomServer

__all__ = ["ADMIN_NAME", "AdminChannel", "status_for"]

ADMIN_NAME: Final = "http-admin"

#: Error frames with an HTTP status of their own; every other error is 400.
_ERROR_STATUS: Final = {"unknown_id": 404, "invalid_state": 409}


def status_for(reply: dict[str, Any]) -> int:
    """The HTTP status of a broker reply: 200 for ok, else by its error."""
    if reply.get("ok") is True:
        return 200
    error = reply.get("error")
    return _ERROR_STATUS.get(error, 400) if isinstance(error, str) else 400


class AdminChannel:
    """The HTTP service's master seat at the broker of a running `GloomServer`."""

    def __init__(self, server: GloomServer, name: str = ADMIN_NAME) -> None:
        self._server = server
        self._name = name
        self._broker: Broker | None = None
        self._ingest: MasterIngest | None = None

    def _seat(self) -> tuple[Broker, MasterIngest]:
        broker = self._server.broker
        if broker is None:
            raise RuntimeError("the Gloom server is not running")
        if broker is not self._broker or self._ingest is None:
            # A broker per server run: take a fresh seat if it was replaced.
            self._broker = broker
            self._ingest = MasterIngest(broker, MasterPeer(self._name))
        return broker, self._ingest

    def call(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send one master frame, return the broker's answer to it."""
        return self.call_payload(codec.dumps(frame))

    def call_payload(self, payload: bytes) -> dict[str, Any]:
        """Feed one frame payload as sent; the broker judges it as it would any."""
        broker, ingest = self._seat()
        peer = ingest.peer
        ingest.receive(payload)
        replies = peer.outbox
        peer.outbox = []
        broker.dirty.pop(peer, None)
        # The action may have given other peers frames (a kick hands a job to
        # an idle slave): write them now rather than at the next unrelated flush.
        if broker.dirty or broker.timers_changed:
            self._server.flush()
        if len(replies) != 1:
            raise RuntimeError(f"the broker answered {len(replies)} frames to one action")
        item = replies[0]
        if isinstance(item, bytes):
            # A pre-encoded frame (OK_FRAME): skip the 4-byte length prefix.
            decoded: Any = codec.loads(item[4:])
            assert isinstance(decoded, dict)
            return decoded
        return item
