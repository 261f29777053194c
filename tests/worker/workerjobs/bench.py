"""Rough figures for the worker runner: echo-job throughput and pool-process start time.

Run: python tests/worker/workerjobs/bench.py [JOBS] [CONCURRENCY]   (not collected by pytest)
"""

import functools
import os
import sys
import time

import trio

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
)
import gloom
from gloom.worker import serve
from gloomd.config import Config
from gloomd.server import GloomServer

N_JOBS = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
CONC = int(sys.argv[2]) if len(sys.argv) > 2 else 2


async def main():
    async with trio.open_nursery() as n:
        server = await n.start(GloomServer(Config(master_port=0, slave_port=0)).run)
        t0 = time.monotonic()
        runner = await n.start(
            functools.partial(
                serve,
                "t",
                "workerjobs.jobs:echo",
                slave_port=server.slave_port,
                master_port=server.master_port,
                import_path=[os.path.dirname(os.path.dirname(os.path.abspath(__file__)))],
                concurrency=CONC,
            )
        )
        print(f"pool of {CONC} ready in {time.monotonic() - t0:.3f} s")
        async with gloom.open_master("127.0.0.1", server.master_port) as m:
            t0 = time.monotonic()
            jobs = await m.submit_many([{"type": "t", "body": i} for i in range(N_JOBS)])
            for j in jobs:
                await j.wait(60)
            dt = time.monotonic() - t0
            print(f"{N_JOBS} echo jobs, concurrency {CONC}: {dt:.2f} s, {N_JOBS / dt:.0f} jobs/s")
        # start time of single processes
        times = []
        for _ in range(10):
            t0 = time.monotonic()
            p = await runner.factory.spawn()
            times.append(time.monotonic() - t0)
            await p.retire(5)
        times.sort()
        print(
            f"pool process start (spawn to ready), 10 runs: median {times[5] * 1000:.0f} ms,"
            f" max {times[-1] * 1000:.0f} ms"
        )
        runner.stop()
        await runner.wait_for(lambda: not runner.slots)
        n.cancel_scope.cancel()


trio.run(main)
