"""Tests of the daemon's core: broker, ingest, in-process masters, server, cli."""
