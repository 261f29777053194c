"""Shared fixtures: a real gloomd in the test's own trio run, on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio

from gloomd.config import Config
from gloomd.server import GloomServer
from tests.support.wire import Peer


@pytest.fixture
async def wire_peers() -> AsyncIterator[None]:
    """Close every raw wire peer the test opened, pass or fail."""
    yield
    await Peer.close_all()


@pytest.fixture
async def gloomd_server(nursery: trio.Nursery, wire_peers: None) -> AsyncIterator[GloomServer]:
    """A GloomServer on free loopback ports, stopped when the test ends."""
    server: GloomServer = await nursery.start(GloomServer(Config(master_port=0, slave_port=0)).run)
    yield server


@pytest.fixture
def make_server(nursery: trio.Nursery, wire_peers: None) -> Callable[..., Awaitable[GloomServer]]:
    """Factory for servers with non-default settings: `await make_server(max_frame=...)`."""

    async def start(**settings: object) -> GloomServer:
        config = Config(master_port=0, slave_port=0, **settings)  # type: ignore[arg-type]
        server: GloomServer = await nursery.start(GloomServer(config).run)
        return server

    return start
