"""The shape every part of the daemon has for `gloomd.cli`: a `Service`.

The command line builds the list of configured services (the Gloom ports
always; the websocket job service, the scheduler and the HTTP port when
asked) and runs them all alike in one nursery:

* start each in order with `await nursery.start(service.run)`: a service
  reports, once it is listening, its fragment of the ready line
  (``ws=127.0.0.1:8765``), or None when it listens on nothing;
* print ``gloomd ready`` and the fragments, then tell each service
  `ready()` (the scheduler fires nothing before the ready line is out);
* on SIGINT/SIGTERM, `shutdown()` each in reverse order (the HTTP port starts
  answering "draining", the Gloom ports answer every unanswered job with
  HALTED and flush), then cancel the nursery.

A service checks its configuration when it is built, before any port is
bound, and raises `ConfigError` (or its own error, which the command line
words as one) for what it cannot start with: the daemon then prints one line
and exits 2, instead of starting half its services.

A new service (the journal, a cluster link) is one more entry in that list,
not more wiring in the command line.  The services themselves live with
their packages (`gloomd.wsjobd.service.WsJobdService`,
`gloomd.scheduler.service.SchedulerService`, `gloomd.http.HttpService`);
the Gloom ports' own is here, beside the protocol.
"""

from __future__ import annotations

from typing import Protocol

import trio

from .server import GloomServer

__all__ = ["ConfigError", "GloomService", "Service"]


class ConfigError(ValueError):
    """A configuration gloomd cannot start with.

    Its text names the flag and says what is wrong with it
    (``--jobs-dir jobs: not a directory``); `gloomd.cli` prints it as one
    line, ``gloomd: <text>``, and exits 2 before binding any port.
    """


class Service(Protocol):
    """One long-running part of the daemon (see the module docstring)."""

    #: A short name for logs ("gloom", "ws", "scheduler", "http").
    name: str

    async def run(
        self, *, task_status: trio.TaskStatus[str | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; report the ready-line fragment once listening."""
        ...

    def ready(self) -> None:
        """Every service listens and the ready line is out.

        What must not happen before that line (the scheduler's first fire,
        whose job may print) waits for this call.  By default: nothing.
        """
        return None

    async def shutdown(self) -> None:
        """Begin stopping, before the nursery is cancelled.

        By default there is nothing to finish: cancelling `run` stops the
        service.  A service that owes its peers something (answers, a
        "draining" health check) overrides this.
        """
        return None


class GloomService(Service):
    """The master and slave ports (`GloomServer`) as a service.

    The server is built by the caller, so that the services that need its
    broker (the scheduler, the HTTP port) can be given it before it runs.
    """

    name = "gloom"

    def __init__(self, server: GloomServer) -> None:
        self.server = server

    async def run(
        self, *, task_status: trio.TaskStatus[str | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            server: GloomServer = await nursery.start(self.server.run)
            host = server.config.host
            task_status.started(
                f"master={host}:{server.master_port} slave={host}:{server.slave_port}"
            )

    async def shutdown(self) -> None:
        """Answer every unanswered job with HALTED, flush, close (`GloomServer.shutdown`)."""
        await self.server.shutdown()
