"""Shared fixtures: a real gloomd in the test's own trio run, on 127.0.0.1,
and the session's redis-server for the tests of the cluster."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import trio

from gloomd.config import Config
from gloomd.server import GloomServer
from tests.cluster.redis_server import REDIS_SERVER, RedisServer
from tests.support.wire import Peer


def require_redis() -> None:
    """Skip without a redis-server; under CI (.ci/run installs it) fail."""
    if not os.path.exists(REDIS_SERVER):
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing under CI: .ci/install-redis should install it")
        pytest.skip("no redis-server (bash .ci/install-redis)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session; each test keeps to a cluster
    name of its own (its own keys)."""
    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


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
