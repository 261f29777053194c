"""The supervisor: a pool of slots, each a (pool process, slave connection) pair.

`Runner.run` wires the parts of a run together and owns its lifecycle:
start the first pool processes (a handler that does not resolve fails before
anything connects), `probe` the daemon, start the slots (`slots`), report
ready, run scaling and burst mode (`autoscale`) and signals (`signals`), then
drain on stop.  What each part shares lives in `state.RunState`, which a
`Runner` is.

Rules the parts keep (each one is a bug of EventMQ or myjobs, fixed):

* **Credit = idle processes** (`slots`, `provision`): a slot's connection is
  joined only while its process is alive, free and not due for retirement.
* **Outcomes, always through the slave protocol** (`jobrun`).
* **Leaving without losing** (`slots`).
* **A refused token is final.**  Every connection (the start-up probe, each
  slot's link, the master connection for scaling and burst) uses the same
  TLS context and token.  Reconnecting cannot fix a token the daemon refuses,
  so a refusal stops the runner (running jobs get `grace`) and `run` raises
  `Unauthorized`, instead of retrying forever.
* **Kill for real.**  Timeouts SIGTERM the job's process group and SIGKILL it
  after `grace`; shutdown lets running jobs finish until `grace` runs out and
  then SIGKILLs them; no pool process outlives `run`.
"""

from __future__ import annotations

import logging

import trio

from gloomwire.logformat import event

from . import autoscale
from .handler import HandlerError
from .options import WorkerOptions
from .pool import PoolProcess, ProcessFactory, SpawnFailed
from .probe import probe_any
from .signals import stop_on_signals
from .slots import add_slot
from .state import RunnerStats, RunState, WorkerEvent

__all__ = ["Runner", "RunnerStats", "WorkerEvent", "WorkerOptions"]

log = logging.getLogger("gloom.worker")


class Runner(RunState):
    """Runs one worker pool until stopped.  Use `gloom.worker.serve` / `run`."""

    async def run(self, *, task_status: trio.TaskStatus[Runner] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until stopped (`stop`, a signal, burst end, or a trio cancel).

        A cancel from outside is treated like SIGTERM: the pool is drained
        under a shield (bounded by `grace` plus the kill), then the cancel
        goes on.
        """
        error: BaseException | None = None
        async with trio.open_nursery() as guard:
            guard.start_soon(self._stop_on_cancel)
            try:
                with trio.CancelScope(shield=True):
                    await self._main(task_status)
            except BaseException as exc:
                error = _unwrap(exc)
            guard.cancel_scope.cancel()
        if error is None:
            error = self.fatal
        if error is not None:
            try:
                raise error
            finally:
                error = None

    async def _stop_on_cancel(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            if self.aux_nursery is None:
                self.stop_before_start()
            elif not self.stopping:
                self.stop()

    async def _main(self, task_status: trio.TaskStatus[Runner]) -> None:
        opts = self.options
        async with trio.open_nursery() as proc_nursery:
            self.factory = ProcessFactory(opts.spec(), proc_nursery, on_exit=self.on_exit)
            try:
                await self._start(task_status)
            finally:
                # Normally none is left; this catches one caught mid-way by a
                # cancel (e.g. a successor that finished starting as we stopped).
                with trio.CancelScope(shield=True):
                    for proc in list(self.procs):
                        await proc.kill()
                proc_nursery.cancel_scope.cancel()

    async def _start(self, task_status: trio.TaskStatus[Runner]) -> None:
        opts = self.options
        low, _ = opts.bounds
        # The handler first: a path that does not resolve is a usage error
        # whether or not the daemon is up.
        procs = await self._spawn_initial(low)
        try:
            for reason in await probe_any(opts.slave_endpoints):
                event(log, "server_down", logging.WARNING, reason=reason)
            if opts.scaling or opts.burst:
                await autoscale.check_master(self)
            async with trio.open_nursery() as aux:
                self.aux_nursery = aux
                if opts.handle_signals:
                    aux.start_soon(stop_on_signals, self)
                async with trio.open_nursery() as slot_nursery:
                    self.slot_nursery = slot_nursery
                    for proc in procs:
                        add_slot(self, proc)
                    procs = []
                    await self.wait_for(lambda: self.stopping or self.all_idle())
                    event(log, "ready", type=opts.type, slots=len(self.slots))
                    self.emit("ready", slots=len(self.slots))
                    task_status.started(self)
                    if opts.scaling:
                        aux.start_soon(autoscale.scaler, self)
                    if opts.burst:
                        aux.start_soon(autoscale.burst, self)
                aux.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for proc in procs:
                    await proc.kill()
        event(
            log, "stopped", type=opts.type, jobs=self.stats.jobs_started,
            ok=self.stats.succeeded, error=self.stats.errors, retry=self.stats.retries,
            timeout=self.stats.timeouts, crash=self.stats.crashes, halted=self.stats.halted,
        )  # fmt: skip

    async def _spawn_initial(self, count: int) -> list[PoolProcess]:
        """Start the first process alone (it proves the handler resolves, so a
        bad path fails once, not N times), then the rest side by side."""
        factory = self.factory
        assert factory is not None
        first = await factory.spawn()
        self.register(first, None)
        procs = [first]
        errors: list[BaseException] = []

        async def one() -> None:
            try:
                proc = await factory.spawn()
            except (HandlerError, SpawnFailed) as exc:
                errors.append(exc)
                return
            self.register(proc, None)
            procs.append(proc)

        async with trio.open_nursery() as nursery:
            for _ in range(count - 1):
                nursery.start_soon(one)
        if errors:
            for proc in procs:
                await proc.kill()
            raise errors[0]
        return procs


def _unwrap(exc: BaseException) -> BaseException:
    """The one real error inside nested single-exception groups (startup errors
    such as `HandlerNotFound` cross a few nurseries on their way out)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
