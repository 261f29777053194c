"""One job across two daemons of a cluster, with the Gloom client: the check
the cluster's process tests and the compiled build's share."""

from __future__ import annotations

import gloom

HOST = "127.0.0.1"


async def square_across(master_port: int, slave_port: int) -> None:
    """A job submitted on one daemon (its master port) runs on a slave of
    another (its slave port), and its result comes back to the submitter."""
    async with (
        gloom.open_master(HOST, master_port) as master,
        gloom.open_slave(HOST, slave_port) as slave,
    ):
        await slave.join("square")
        job = await master.submit("square", 7, id="sq")
        work = await slave.next_job()
        assert (work.id, work.body) == ("sq", 7)
        await work.respond(49)
        assert await job.wait(timeout=10) == 49
