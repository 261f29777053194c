"""The HTTP port: Prometheus metrics, the status page, health and the admin API.

A plug-in service beside the Gloom ports: ``await nursery.start(HttpService(server,
settings).run)`` in the daemon's nursery, after the `GloomServer` is running.
It reads the server's broker at request time and acts on it only through the
broker's own master protocol (`admin`).

Modules: `settings` (the knobs), `messages` (requests and responses as
values), `routes` (what each URL answers, no I/O), `admin` (actions through
the broker), `metrics` (snapshot, collector, exposition), `assets` (the
page's files, in static/), `service` (h11 over trio).
"""

from .metrics import HistogramSnapshot, MetricsSnapshot, TypeMetrics, snapshot_from_broker
from .service import HttpService
from .settings import DEFAULT_HTTP_PORT, HttpSettings

__all__ = [
    "DEFAULT_HTTP_PORT",
    "HistogramSnapshot",
    "HttpService",
    "HttpSettings",
    "MetricsSnapshot",
    "TypeMetrics",
    "snapshot_from_broker",
]
