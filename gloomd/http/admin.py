"""Admin actions over HTTP, answered by the broker's own master protocol.

`POST /api/kick` and friends do not reimplement any rule: each request
becomes the very frame a master would send (`{"action":"kick","id":...}`),
handed to the broker by an in-process master (`gloomd.local.LocalMaster`),
and the frame the broker answers is the HTTP reply.  So validation, check
order and error frames are those of the master port, byte for byte, and an
action the broker does not know yet answers `unknown_action` here exactly
as it does there.

The seat is an internal peer: no connection, so `stats` does not count it
among `connections.masters`; and the HTTP layer lets only the actions below
through (the path names the action), so it never holds a job.

The reply is taken from the peer's outbox right after the broker handled
the frame, synchronously, unless the journal holds it until the commit that
stores the change (`kick`, `delete`, `pause`, `resume` with ``--journal``,
as on the master port): then `call` gives a `HeldAnswer` to await, so that
an operator is never told "done" about a change a crash could still lose.
"""

from __future__ import annotations

from typing import Any, Final

from ..local import HeldAnswer, LocalMaster
from ..server import GloomServer

__all__ = ["ADMIN_NAME", "AdminChannel", "HeldAnswer", "status_for"]

ADMIN_NAME: Final = "http-admin"

#: Error frames with an HTTP status of their own; every other error is 400.
_ERROR_STATUS: Final = {"unknown_id": 404, "invalid_state": 409, "backend_unavailable": 503}


def status_for(reply: dict[str, Any]) -> int:
    """The HTTP status of a broker reply: 200 for ok, else by its error."""
    if reply.get("ok") is True:
        return 200
    error = reply.get("error")
    return _ERROR_STATUS.get(error, 400) if isinstance(error, str) else 400


class AdminChannel:
    """The HTTP service's master seat at the broker of a running `GloomServer`."""

    def __init__(self, server: GloomServer, name: str = ADMIN_NAME) -> None:
        self._local = LocalMaster(server, name)

    def call(self, frame: dict[str, Any]) -> dict[str, Any] | HeldAnswer:
        """Send one master frame, return the broker's answer to it, or the
        `HeldAnswer` to await if the journal holds it.

        Raises `gloomd.local.LocalMasterError` (a RuntimeError) when the
        Gloom server is not running.
        """
        return self._local.ask(frame)
