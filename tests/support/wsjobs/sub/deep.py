"""A job two levels down, importing its neighbour relatively."""

from ..echo import run as echo_run


def run(job):
    echo_run(job)
    job.data["where"] = "sub.deep"
