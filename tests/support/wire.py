"""Hand-built frames over real sockets: the tests' independent view of the wire.

End-to-end tests drive gloomd through these rather than through our own
client, so a bug shared by client and server cannot hide itself.
"""

from __future__ import annotations

import json
import struct
from typing import Any, ClassVar

import trio

from gloomwire import codec


def frame(obj: Any) -> bytes:
    """Encode with the standard library: independent of the server's codec."""
    payload = json.dumps(obj, separators=(",", ":")).encode()
    return struct.pack(">I", len(payload)) + payload


def raw_frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


class Peer:
    """A trio TCP connection that reads and writes whole frames.

    Every peer opened is remembered in `OPEN` so that the test's teardown
    (conftest) closes whatever a test left open.
    """

    OPEN: ClassVar[list[Peer]] = []

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buf = bytearray()
        Peer.OPEN.append(self)

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> Peer:
        return cls(await trio.open_tcp_stream(host, port))

    async def send(self, obj: Any) -> None:
        await self.stream.send_all(frame(obj))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return False
            self._buf += chunk
        return True

    async def recv_payload(self) -> bytes | None:
        """Next frame's raw payload, or None at EOF."""
        if not await self._fill(4):
            return None
        (n,) = struct.unpack_from(">I", self._buf)
        if not await self._fill(4 + n):
            return None
        payload = bytes(self._buf[4 : 4 + n])
        del self._buf[: 4 + n]
        return payload

    async def recv(self) -> Any:
        payload = await self.recv_payload()
        if payload is None:
            raise EOFError("connection closed")
        return codec.loads(payload)

    async def recv_eof(self) -> bool:
        """True when the server closes the connection without another frame."""
        return await self.recv_payload() is None

    async def request(self, obj: Any) -> Any:
        await self.send(obj)
        return await self.recv()

    async def aclose(self) -> None:
        await self.stream.aclose()

    @classmethod
    async def close_all(cls) -> None:
        while cls.OPEN:
            await cls.OPEN.pop().aclose()


async def join(port: int, job_type: Any) -> Peer:
    slave = await Peer.connect(port)
    assert await slave.request({"action": "join", "type": job_type}) == {"ok": True}
    return slave
