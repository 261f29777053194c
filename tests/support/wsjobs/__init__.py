"""Job functions for the wsjobd tests; this directory is the service's jobs directory.

The two imports below are bait for the escape tests: ``func="system"`` and
``func="rmtree"`` name attributes of this package, but neither is a function
*defined* in the jobs directory, so the service must refuse both.
"""

from os import system  # noqa: F401
from shutil import rmtree  # noqa: F401

answer = 42


def hello(job):
    """A function in the package itself: ``func="hello"`` (no dot)."""
    job.data["result"] = "hello from the jobs package"


def numbers(job):
    """A generator function: callable, but not something a job can be."""
    yield job
