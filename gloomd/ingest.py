"""One-way ingest: a connection's bytes in, typed messages to the broker out.

Everything a peer sends passes here, in one direction and in this order:

    bytes -> framing -> decoding -> auth -> validation -> Broker.slave_message
                                                       or Broker.master_message

One `Ingest` per connection (`SlaveIngest`, `MasterIngest`), sans-IO like the
framing it owns: it is fed payloads and queues its answers in the peer's
outbox through `Broker.send`, and never touches a socket, a clock or trio.
The trio layer (`gloomd.server`) feeds it what the transport received and
keeps what only it can know: deadlines, and how much output a connection may
pile up before it stops being read.

What is answered here, and why not by the broker:

* a frame that is not valid JSON, not an object, or not a valid message
  (`messages.ProtocolViolation`): this is the single receive point where a
  violation becomes the error frame the peer is owed;
* `auth` and `ping`, which are about the connection, not about jobs:
  `{"ok":true}`.  The first frame of a connection to a daemon with a token
  must be a good `auth`; `authenticate` judges it with the same decoder and
  policy as every other frame (issue 18: a token holding a lone surrogate
  stopped the daemon when it was decoded a second way).

The broker so gets only typed requests it has rules for (join, respond,
progress, fail; submit, cancel, result, stats, and the lifecycle's kick,
delete, jobs, pause, resume) and keeps only state.  While a master waits for
a request that takes several passes (a kick of many jobs), what it sends
next is handed to `Broker.hold` instead, already parsed or already answered
(an error, a ping's ok), so that its answers leave in request order.

Cost on the hot path: the work is what `Broker.receive` did before (decode,
parse, dispatch) in the same number of calls, plus one `type(msg) in
_LINK_LEVEL` test per frame (about 30 ns, measured) and, on the master port,
one `held is not None` test.
"""

from __future__ import annotations

from typing import Any, Final

from gloomwire import codec
from gloomwire.auth import token_matches
from gloomwire.framing import DEFAULT_MAX_FRAME, FrameDecoder
from gloomwire.vocabulary import OK_FRAME

from . import fastpath
from .broker import Broker, MasterPeer, Peer, SlavePeer
from .messages import (
    Auth,
    MasterMessage,
    Ping,
    ProtocolViolation,
    decode_object,
    parse_master,
    parse_slave,
)

__all__ = ["Ingest", "MasterIngest", "SlaveIngest", "auth_frame_ok", "ingest_for"]

#: Payloads shorter than this take the exact path: for them the fast one
#: (gloomd.fastpath) costs more than it saves (benchmarks/callgrind_jobs.py,
#: server instructions per job: 100 B string bodies 145k exact, 148k fast;
#: 1 KiB 206k exact, 166k fast).
FAST_PATH_MIN = 512

#: Messages about the connection itself, answered `{"ok":true}` here.
_LINK_LEVEL: Final = frozenset({Ping, Auth})


def auth_frame_ok(payload: bytes, token: str, max_values: int = codec.NO_LIMIT) -> bool:
    """Is this payload `{"action":"auth","token":T}` with the right token?

    Decoded by the same decoder, under the same policy, as every other frame:
    a payload holding a lone surrogate is invalid JSON here too, never a
    token that fails to encode (issue 18: that stopped the daemon before
    authentication).
    """
    try:
        obj: Any = decode_object(payload, max_values)
    except ProtocolViolation:
        return False
    return obj.get("action") == "auth" and token_matches(obj.get("token"), token)


class Ingest:
    """The receiving side of one connection (see the module docstring).

    `decoder` frames the bytes; `authenticate` judges a connection's first
    frame when a token is required; `receive` handles one payload.  The I/O
    layer calls `decoder.feed` itself (one call less per receive) and reads
    `decoder.pending` after it (slow-frame deadline, EOF in mid-frame).
    """

    __slots__ = ("_broker", "_caps", "_max_values", "_token", "authenticated", "decoder", "peer")

    def __init__(
        self,
        broker: Broker,
        peer: Peer,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        token: str | None = None,
    ) -> None:
        self.decoder = FrameDecoder(max_frame)
        self.peer = peer
        #: Has presented the token (always, when none is required).
        self.authenticated = token is None
        self._broker = broker
        self._token = token or ""
        self._caps = broker.caps
        self._max_values = broker.caps.max_values

    def queued(self) -> int:
        """Bytes the broker has queued for this peer and not yet handed to the I/O layer."""
        return self.peer.pending

    def clear(self) -> None:
        """The connection is gone: drop a partial frame now, not with the object."""
        self.decoder.clear()

    def authenticate(self, payload: bytes) -> bool:
        """Judge the first frame of a connection that must authenticate.

        True: the token matched; the `{"ok":true}` is queued and every later
        frame goes to `receive`.  False: the caller refuses the connection.
        """
        if not auth_frame_ok(payload, self._token, self._max_values):
            return False
        self.authenticated = True
        self._broker.send(self.peer, OK_FRAME)
        return True

    def receive(self, payload: bytes) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class SlaveIngest(Ingest):
    """A slave connection: the state check needs to know whether it holds a job."""

    __slots__ = ()

    def receive(self, payload: bytes) -> None:
        # A narrower local, not a narrower `peer: SlavePeer` in the class:
        # mypyc refuses to narrow an attribute's type in a subclass.  Not
        # `cast(...)` either: that is a call per frame in pure Python, while a
        # local's annotation costs nothing there (mypyc checks the type).
        slave: SlavePeer = self.peer  # type: ignore[assignment]
        if slave.job is not None and len(payload) >= FAST_PATH_MIN:
            fast = fastpath.respond(payload, self._max_values)
            if fast is not None:
                self._broker.slave_message(slave, fast)
                return
        try:
            msg = parse_slave(
                decode_object(payload, self._max_values), slave.job is not None, self._caps
            )
            if type(msg) in _LINK_LEVEL:
                self._broker.send(slave, OK_FRAME)
            else:
                self._broker.slave_message(slave, msg)  # type: ignore[arg-type]
        except ProtocolViolation as violation:
            self._broker.send(slave, violation.frame())


class MasterIngest(Ingest):
    """A master connection (or an in-process master, `gloomd.local`)."""

    __slots__ = ()

    def receive(self, payload: bytes) -> None:
        master: MasterPeer = self.peer  # type: ignore[assignment]  # as in SlaveIngest
        try:
            # A submit the fast path is sure of, else the exact path: either
            # way the message is held behind an earlier request, as below.
            msg: MasterMessage | None = None
            if len(payload) >= FAST_PATH_MIN:
                msg = fastpath.submit(payload, self._caps)
            if msg is None:
                msg = parse_master(decode_object(payload, self._max_values), self._caps)
            if master.held is not None:
                # An earlier request of this master is still being worked on
                # (a kick of many jobs): this one waits behind it, so that
                # answers leave in request order.
                reply = OK_FRAME if type(msg) in _LINK_LEVEL else msg
                self._broker.hold(master, reply, len(payload))  # type: ignore[arg-type]
            elif type(msg) in _LINK_LEVEL:
                self._broker.send(master, OK_FRAME)
            else:
                self._broker.master_message(master, msg)  # type: ignore[arg-type]
        except ProtocolViolation as violation:
            if master.held is not None:
                self._broker.hold(master, violation.frame(), len(payload))
            else:
                self._broker.send(master, violation.frame())


def ingest_for(
    broker: Broker, peer: Peer, *, max_frame: int = DEFAULT_MAX_FRAME, token: str | None = None
) -> Ingest:
    """The ingest that suits `peer`'s port."""
    if isinstance(peer, SlavePeer):
        return SlaveIngest(broker, peer, max_frame=max_frame, token=token)
    if isinstance(peer, MasterPeer):
        return MasterIngest(broker, peer, max_frame=max_frame, token=token)
    raise TypeError(f"no ingest for {type(peer).__name__}")
