"""What can go wrong between a daemon and the cluster's Redis."""

from __future__ import annotations

__all__ = ["BackendUnavailable", "BackendUncertain", "Fenced"]


class BackendUnavailable(Exception):
    """Redis cannot be reached: the step was not sent, so it did not happen.

    The daemon answers a submit `{"error":"backend_unavailable","reason":ID}`
    and acks nothing Redis has not confirmed; the engine reconnects with
    back-off meanwhile.
    """


class BackendUncertain(BackendUnavailable):
    """The step was sent and the connection broke before its answer: it may
    or may not have happened.  A submit so answered is withdrawn once Redis
    is back (`ClusterEngine.withdraw`); a slave's step ends its connection
    (what it held is requeued with one loss)."""


class Fenced(Exception):
    """This daemon's record in Redis is gone: its lease lapsed and another
    daemon reaped it, or Redis lost its data.  What its peers held has been
    requeued or withdrawn, so the daemon drops every connection and joins
    again under a new id."""
