"""Fixtures shared by the worker runner's tests (defined in workerjobs/support.py)."""

from .workerjobs.support import gate, master, start_worker

__all__ = ["gate", "master", "start_worker"]
