"""Handlers for the worker-runner tests (they run inside pool processes)."""
