"""The `gloomd` command: parse flags, configure logging, run the services.

`configured_services` turns the flags into the list of services to run (the
Gloom ports; the websocket job service, the scheduler and the HTTP port as
asked), and `serve` runs them alike (`gloomd.service`): each is a task in one
nursery, so SIGINT/SIGTERM unwinds them all.  Each is first told to shut
down, last started first (the HTTP port answers "draining", the Gloom server
answers every unanswered job with HALTED and flushes), then the nursery is
cancelled and the process exits 0.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import logging
import math
import re
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from gloomwire import __version__, environ, logformat
from gloomwire.framing import DEFAULT_MAX_FRAME
from gloomwire.logformat import event

from .broker import BrokerLimits
from .cluster.keys import prefix
from .cluster.settings import ClusterSettings, masked, read_password
from .config import Config
from .fdlimit import (
    DescriptorBudgetError,
    fit_connection_caps,
    open_descriptors,
    raise_soft_limit,
)
from .http.settings import DEFAULT_HTTP_PORT, HttpSettings
from .journal import JournalError, JournalStore
from .replay import Restored, decode_snapshot
from .security import TokenError, load_token, server_ssl_context
from .server import GloomServer
from .service import ConfigError, GloomService, Service
from .wsjobd.limits import WsLimits, positive_float, positive_int

__all__ = [
    "announce_ready",
    "build_parser",
    "check_flags",
    "config_from_args",
    "configured_services",
    "load_security",
    "main",
    "serve",
    "shut_down",
    "start_services",
    "use_import_path",
]

log = logging.getLogger("gloomd")

#: Default seconds between full garbage collections; see `_tune_gc`.
GC_INTERVAL = 300.0


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    lim = BrokerLimits()
    p = argparse.ArgumentParser(
        prog="gloomd",
        description="Job distribution daemon speaking the Gloom protocol.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=f"gloomd {__version__}")
    net = p.add_argument_group("network")
    net.add_argument("--host", default=d.host, help="address to bind the master and slave ports to")
    net.add_argument(
        "--master-port", type=int, default=d.master_port, help="port for masters (0: any free)"
    )
    net.add_argument(
        "--slave-port", type=int, default=d.slave_port, help="port for slaves (0: any free)"
    )
    caps = p.add_argument_group("limits")
    caps.add_argument(
        "--max-frame", type=int, default=DEFAULT_MAX_FRAME, help="largest frame payload, bytes"
    )
    caps.add_argument("--max-queued", type=int, default=lim.max_queued, help="queued jobs in all")
    caps.add_argument(
        "--max-connections", type=int, default=d.max_connections, help="open connections in all"
    )
    caps.add_argument(
        "--max-retries",
        type=int,
        default=lim.max_retries,
        help="requeues of a job whose slave was lost",
    )
    caps.add_argument(
        "--max-outbuf", type=int, default=d.max_outbuf, help="bytes buffered for one connection"
    )
    caps.add_argument(
        "--result-ttl", type=float, default=lim.result_ttl, help="seconds a detached result is kept"
    )
    caps.add_argument(
        "--max-results", type=int, default=lim.max_results, help="detached results kept at most"
    )
    caps.add_argument(
        "--shutdown-grace",
        type=float,
        default=d.shutdown_grace,
        help="seconds to flush at shutdown",
    )
    caps.add_argument(
        "--max-per-host", type=int, default=d.max_per_host, help="open connections from one address"
    )
    caps.add_argument(
        "--frame-timeout",
        type=float,
        default=d.frame_timeout,
        help="seconds a started frame may take",
    )
    caps.add_argument(
        "--auth-timeout",
        type=float,
        default=d.auth_timeout,
        help="seconds to authenticate (and finish TLS)",
    )
    caps.add_argument(
        "--output-high-water",
        type=int,
        default=d.output_high_water,
        help="unsent bytes past which a connection is not read until half have drained",
    )
    caps.add_argument(
        "--write-timeout",
        type=float,
        default=d.write_timeout,
        help="seconds output may wait to be written before the connection is dropped",
    )
    for flag, kind, default, text in (
        ("--max-frame-values", int, lim.max_values, "keys and values in one frame"),
        ("--max-id-size", int, lim.max_id, "characters of a string id (digits of an integer id)"),
        ("--max-type-size", int, lim.max_type, "characters of a string type (bytes of other JSON)"),
        ("--max-after", int, lim.max_after, "ids in one submit's after"),
        ("--max-result-bytes", int, lim.max_result_bytes, "bytes of detached results kept"),
        ("--max-outcome-bytes", int, lim.max_outcome_bytes, "bytes of outcomes kept (for after)"),
        ("--max-stats-types", int, lim.max_stats_types, "rows in a stats answer (the rest summed)"),
        ("--max-dead", int, lim.max_dead, "dead letters kept at most (the oldest dropped first)"),
        ("--log-rate", float, lim.log_rate, "log lines per second one connection may cause"),
        ("--log-burst", int, lim.log_burst, "log lines one connection may save up"),
    ):
        caps.add_argument(flag, type=kind, default=default, help=text)
    ka = p.add_argument_group("TCP keepalive (every accepted socket)")
    for flag, default, text in (
        ("--keepalive-idle", d.keepalive_idle, "idle seconds before the first probe"),
        ("--keepalive-interval", d.keepalive_interval, "seconds between probes"),
        ("--keepalive-count", d.keepalive_count, "unanswered probes, then the socket is dropped"),
    ):
        ka.add_argument(flag, type=int, default=default, help=text)
    sec = p.add_argument_group("security")
    sec.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="require this shared token (first line of the file); else $GLOOMD_TOKEN",
    )
    sec.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        help="TLS certificate chain (PEM): every port becomes TLS-only",
    )
    sec.add_argument("--tls-key", type=Path, default=None, help="TLS private key (PEM)")
    ws = p.add_argument_group("websocket job service (wsjobd)")
    ws.add_argument(
        "--ws-port", type=int, default=None, help="serve wsjobd on this port (off by default)"
    )
    ws.add_argument("--ws-host", default="127.0.0.1", help="address for the websocket service")
    ws.add_argument(
        "--jobs-dir", type=Path, default=None, help="directory holding wsjobd job modules"
    )
    wsd = WsLimits()
    ws.add_argument(
        "--ws-max-connections", type=positive_int, default=wsd.max_connections,
        help="open websocket connections, handshakes included; lowered at start to fit the"
        " descriptor budget (README)",
    )  # fmt: skip
    ws.add_argument(
        "--ws-max-jobs", type=positive_int, default=wsd.max_jobs,
        help="websocket jobs running at once; over it: SystemOverloadError",
    )  # fmt: skip
    ws.add_argument(
        "--ws-idle-timeout", type=positive_float, default=wsd.idle_timeout,
        help="seconds a websocket may stay open without sending its job description",
    )  # fmt: skip
    ws.add_argument(
        "--ws-handshake-timeout", type=positive_float, default=wsd.handshake_timeout,
        help="seconds from accept to a complete websocket handshake",
    )  # fmt: skip
    ws.add_argument(
        "--ws-max-message", type=positive_int, default=wsd.max_message,
        help="largest websocket message, bytes (over it: close 1009)",
    )  # fmt: skip
    web = p.add_argument_group("HTTP port (metrics, status page, health, admin API)")
    hd = HttpSettings()
    web.add_argument("--http-host", default=hd.host, help="address for the HTTP port")
    web.add_argument(
        "--http-port", type=int, default=DEFAULT_HTTP_PORT,
        help="port for HTTP (0: any free); TLS and the token are the daemon's",
    )  # fmt: skip
    web.add_argument("--no-http", action="store_true", help="serve no HTTP port")
    web.add_argument(
        "--metrics-max-types", type=int, default=hd.metrics_max_types,
        help="job types with a label of their own in /metrics (the rest: type=\"_other\")",
    )  # fmt: skip
    dur = p.add_argument_group("durability (README: Durability)")
    dur.add_argument(
        "--journal", type=Path, default=None,
        help="keep detached jobs, their results and pause flags in this SQLite file (created"
        " if absent) and restore them at start; none: jobs live in memory only",
    )  # fmt: skip
    dur.add_argument(
        "--sync", choices=("full", "normal", "off"), default="full",
        help="full: acks wait for a commit that survives power loss; normal: one that survives"
        " SIGKILL; off: acks do not wait, commits at least every 50 ms",
    )  # fmt: skip
    clu = p.add_argument_group("cluster (README: Scaling out)")
    clu.add_argument(
        "--cluster", default=None, metavar="URL",
        help="share one queue with every daemon given this Redis (redis://[[USER]:PASSWORD@]"
        "HOST:PORT/DB, rediss://, unix://); none: the embedded broker",
    )  # fmt: skip
    clu.add_argument(
        "--cluster-name", default="gloomd",
        help="the cluster's name on that Redis (daemons with the same Redis and name share a"
        " queue)",
    )  # fmt: skip
    clu.add_argument(
        "--cluster-lease", type=float, default=5.0, metavar="SECONDS",
        help="a daemon silent this long is presumed dead: its slaves' jobs are requeued",
    )  # fmt: skip
    clu.add_argument(
        "--cluster-password-file", type=Path, default=None, metavar="PATH",
        help="Redis password on the first line of this file (keeps it out of ps)",
    )  # fmt: skip
    sched = p.add_argument_group("scheduler")
    sched.add_argument("--schedule", type=Path, default=None, help="TOML file of periodic jobs")
    sched.add_argument(
        "--schedule-state",
        type=Path,
        default=None,
        help="JSON status file (default: next to the TOML); must be writable",
    )
    sched.add_argument(
        "--import-path",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="import the schedule's func modules from DIR first, then from the current"
        " directory, as gloom worker does (repeatable)",
    )
    p.add_argument(
        "--gc-interval",
        type=float,
        default=GC_INTERVAL,
        help="seconds between full garbage collections (automatic ones cover young objects only)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (per-job events are logged at debug)",
    )
    p.add_argument(
        "--log-format",
        default=logformat.FORMATS[0],
        choices=logformat.FORMATS,
        help="log lines on stderr: logfmt (key=value) or one JSON object a line",
    )
    return p


def config_from_args(
    args: argparse.Namespace,
    token: str | None = None,
    ssl_context: Any = None,
    journal: JournalStore | None = None,
    restored: Restored | None = None,
) -> Config:
    return Config(
        journal=journal,
        restored=restored,
        host=args.host,
        master_port=args.master_port,
        slave_port=args.slave_port,
        max_frame=args.max_frame,
        max_connections=args.max_connections,
        max_outbuf=args.max_outbuf,
        shutdown_grace=args.shutdown_grace,
        max_per_host=args.max_per_host,
        frame_timeout=args.frame_timeout,
        auth_timeout=args.auth_timeout,
        output_high_water=args.output_high_water,
        write_timeout=args.write_timeout,
        keepalive_idle=args.keepalive_idle,
        keepalive_interval=args.keepalive_interval,
        keepalive_count=args.keepalive_count,
        token=token,
        ssl_context=ssl_context,
        cluster=cluster_settings(args),
        limits=BrokerLimits(
            max_queued=args.max_queued,
            max_retries=args.max_retries,
            result_ttl=args.result_ttl,
            max_results=args.max_results,
            max_result_bytes=args.max_result_bytes,
            max_outcome_bytes=args.max_outcome_bytes,
            max_stats_types=args.max_stats_types,
            max_id=args.max_id_size,
            max_type=args.max_type_size,
            max_after=args.max_after,
            max_values=args.max_frame_values,
            log_rate=args.log_rate,
            log_burst=args.log_burst,
            max_dead=args.max_dead,
            metrics_max_types=args.metrics_max_types,
        ),
    )


#: Flags that count something and must be at least 1.
_COUNTS = (
    "max_frame",
    "max_queued",
    "max_connections",
    "max_outbuf",
    "max_results",
    "max_per_host",
    "output_high_water",
    "max_frame_values",
    "max_id_size",
    "max_type_size",
    "max_result_bytes",
    "max_outcome_bytes",
    "max_stats_types",
    "metrics_max_types",
    "log_burst",
    "keepalive_idle",
    "keepalive_interval",
    "keepalive_count",
)
#: Flags in seconds (or per second) that must be positive and finite.
_DURATIONS = (
    "frame_timeout",
    "auth_timeout",
    "gc_interval",
    "write_timeout",
    "result_ttl",
    "log_rate",
)


#: Flags that only mean something beside another one: (flag, attribute, the one it needs).
_NEEDS = (
    ("--ws-port", "ws_port", "jobs_dir", "--jobs-dir"),
    ("--jobs-dir", "jobs_dir", "ws_port", "--ws-port"),
    ("--schedule-state", "schedule_state", "schedule", "--schedule"),
    ("--import-path", "import_path", "schedule", "--schedule"),
    ("--cluster-password-file", "cluster_password_file", "cluster", "--cluster"),
)


def check_flags(args: argparse.Namespace) -> None:
    """Every value and combination of flags, before anything is read or bound.

    A flag that does nothing without another one (`--jobs-dir` without
    `--ws-port`) is an error, not a warning: it is almost always the other
    flag forgotten, a warning scrolls away in the log, and a daemon that
    starts without the service its operator expects fails later and
    quieter.  Raises `ConfigError` (one line, exit 2).
    """
    for name in _COUNTS:
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("max_retries", "max_after", "max_dead"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must not be negative")
    for flag, name, needed, needed_flag in _NEEDS:
        if getattr(args, name) not in (None, []) and getattr(args, needed) is None:
            raise ConfigError(f"{flag} does nothing without {needed_flag}: give both")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    for name in _DURATIONS:
        value = getattr(args, name)
        # `not value > 0` refuses NaN too, which argparse's float() accepts.
        if not value > 0 or not math.isfinite(value):
            raise ConfigError(f"--{name.replace('_', '-')} must be positive and finite")
    if not 0 <= args.shutdown_grace < math.inf:
        raise ConfigError("--shutdown-grace must be a finite number of seconds")
    check_cluster_flags(args)


def check_cluster_flags(args: argparse.Namespace) -> None:
    """`--cluster` and its companions (values and combinations; Redis itself
    is reached later, `probe_cluster`)."""
    if args.cluster is None:
        for flag, name, default in (
            ("--cluster-name", "cluster_name", "gloomd"),
            ("--cluster-lease", "cluster_lease", 5.0),
        ):
            if getattr(args, name) != default:
                raise ConfigError(f"{flag} does nothing without --cluster: give both")
        return
    if args.journal is not None:
        raise ConfigError(
            "--cluster and --journal go apart: in cluster mode Redis keeps the jobs (its AOF is"
            " the journal)"
        )
    url = args.cluster
    if url.split("://", 1)[0] not in ("redis", "rediss", "unix") or "://" not in url:
        raise ConfigError(f"--cluster {_safe_url(url)}: redis://, rediss:// or unix:// expected")
    try:
        prefix(args.cluster_name)
    except ValueError:
        raise ConfigError(
            f"--cluster-name {args.cluster_name!r}: must not be empty nor hold braces"
        ) from None
    lease = args.cluster_lease
    if not lease > 0 or not math.isfinite(lease):
        raise ConfigError(f"--cluster-lease {lease}: must be positive and finite (seconds)")
    if args.cluster_password_file is not None:
        try:
            read_password(str(args.cluster_password_file))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"--cluster-password-file {args.cluster_password_file}: cannot read it:"
                f" {getattr(exc, 'strerror', None) or exc}"
            ) from None


def cluster_settings(args: argparse.Namespace) -> ClusterSettings | None:
    """The cluster's settings from checked flags (None: no `--cluster`)."""
    if args.cluster is None:
        return None
    password_file = args.cluster_password_file
    return ClusterSettings(
        args.cluster,
        name=args.cluster_name,
        lease=args.cluster_lease,
        password_file=None if password_file is None else str(password_file),
    )


def probe_cluster(settings: ClusterSettings) -> None:
    """Reach the cluster's Redis once before anything listens: a daemon does
    not start on a queue it cannot reach (`ConfigError`, password masked)."""
    try:
        from .cluster.engine import probe  # coredis: loaded in cluster mode only
    except ModuleNotFoundError as exc:
        if exc.name != "coredis":
            raise
        raise ConfigError(
            f"--cluster {masked(settings.url)}: needs the cluster extra"
            " (pip install 'gloomd[cluster]': coredis)"
        ) from None
    from .cluster.errors import BackendUnavailable

    try:
        trio.run(probe, settings)
    except BackendUnavailable as exc:
        raise ConfigError(f"--cluster {exc}") from None


def load_security(args: argparse.Namespace) -> tuple[str | None, ssl.SSLContext | None]:
    """The token and the TLS context, read now: a bad file is a `ConfigError`."""
    try:
        token = load_token(args.token_file)
    except TokenError as exc:
        raise ConfigError(str(exc)) from None
    if args.tls_cert is None:
        return token, None
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{flag} {path}: cannot read it: {exc.strerror or exc}") from None
    try:
        context = server_ssl_context(args.tls_cert, args.tls_key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        raise ConfigError(
            f"--tls-cert {args.tls_cert} / --tls-key {args.tls_key}: not a certificate chain and"
            f" its private key in PEM ({reason})"
        ) from None
    return token, context


def use_import_path(args: argparse.Namespace) -> None:
    """Put `--import-path` and then the current directory first on `sys.path`.

    The same rule as `gloom worker`'s (its pool imports from the current
    directory too): `gloomd --schedule jobs.toml` finds `mypkg/` beside
    jobs.toml when started there, whether it was run as `gloomd` (whose
    sys.path starts at the script's directory) or `python -m gloomd`.
    """
    if args.schedule is None:
        return
    entries = [str(Path(p).resolve()) for p in args.import_path] + [str(Path.cwd())]
    sys.path[:0] = [entry for entry in dict.fromkeys(entries) if entry not in sys.path[:1]]


def configured_services(
    args: argparse.Namespace, config: Config, server: GloomServer
) -> list[Service]:
    """The services the flags ask for, in the order they start (see `gloomd.service`).

    The Gloom ports come first: the others need its broker.  The HTTP port
    comes last, so that it can count every other port's connections.
    Services are imported only when asked for, and built here, before any
    of them runs: each checks its configuration as it is built (`ConfigError`).
    """
    services: list[Service] = [GloomService(server)]
    counts: dict[str, Callable[[], int]] = {}
    if args.ws_port is not None:
        from .wsjobd.service import WsJobdService

        try:
            ws = WsJobdService(
                args.ws_host, args.ws_port, args.jobs_dir, token=config.token,
                limits=_ws_limits(args), ssl_context=config.ssl_context,
            )  # fmt: skip
        except OSError as exc:
            raise ConfigError(f"--jobs-dir {args.jobs_dir}: not a directory") from exc
        counts["ws"] = lambda: ws.jobs.open_connections
        services.append(ws)
    if args.schedule is not None:
        from .scheduler.service import SchedulerService

        services.append(SchedulerService(server, args.schedule, state_path=args.schedule_state))
    if not args.no_http:
        from .http.service import HttpService

        settings = HttpSettings.from_config(
            config,
            host=args.http_host,
            port=args.http_port,
            metrics_max_types=args.metrics_max_types,
        )
        services.append(HttpService(server, settings, connection_counts=counts))
    return services


async def start_services(nursery: trio.Nursery, services: list[Service]) -> str:
    """Start each service in order, in `nursery`; return the ready line."""
    ready = ["gloomd ready"]
    for service in services:
        fragment = await nursery.start(service.run)
        if fragment is not None:
            ready.append(fragment)
    return " ".join(ready)


async def shut_down(services: list[Service]) -> None:
    """Tell each service the daemon is stopping, the last started first."""
    for service in reversed(services):
        await service.shutdown()


def announce_ready(services: list[Service]) -> None:
    """The ready line is out: tell each service (`Service.ready`)."""
    for service in services:
        service.ready()


async def serve(services: list[Service], gc_interval: float = GC_INTERVAL) -> None:
    """Run `services` (built by `configured_services`) until SIGINT or SIGTERM."""
    # Install the handlers before anything listens, so that a signal that
    # arrives during start-up still leads to a clean exit.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            ready = await start_services(nursery, services)
            nursery.start_soon(_collect_garbage, gc_interval)
            print(ready, flush=True)
            announce_ready(services)
            async for signum in signals:
                event(log, "signal", signal=signal.Signals(signum).name)
                break
            await shut_down(services)
            nursery.cancel_scope.cancel()


def _ws_limits(args: argparse.Namespace) -> WsLimits:
    """The websocket caps, the connection cap as fitted at start (`_fit_descriptors`)."""
    return WsLimits(
        max_connections=args.ws_max_connections,
        idle_timeout=args.ws_idle_timeout,
        handshake_timeout=args.ws_handshake_timeout,
        max_jobs=args.ws_max_jobs,
        max_message=args.ws_max_message,
    )


def _fit_descriptors(args: argparse.Namespace) -> None:
    """Raise the descriptor limit, then fit every connection cap in it (`gloomd.fdlimit`).

    Lowered caps are written back into `args` and logged, so that a
    connection a cap admits never fails for want of a descriptor.
    """
    limit = raise_soft_limit()
    ws_on = args.ws_port is not None
    gloom, ws = fit_connection_caps(
        limit,
        gloom=args.max_connections,
        ws=args.ws_max_connections if ws_on else 0,
        ws_jobs=args.ws_max_jobs if ws_on else 0,
        open_now=open_descriptors(),
    )
    for flag, requested, fitted in (
        ("--max-connections", args.max_connections, gloom),
        ("--ws-max-connections", args.ws_max_connections if ws_on else 0, ws),
    ):
        if fitted < requested:
            event(
                log, "cap_lowered", logging.WARNING, flag=flag, requested=requested, cap=fitted,
                descriptors=limit, note="raise the descriptor limit (ulimit -Hn) for more",
            )  # fmt: skip
    args.max_connections = gloom
    if ws_on:
        args.ws_max_connections = ws


def _tune_gc() -> None:
    """Keep the cyclic garbage collector from stalling the event loop.

    A full collection scans every tracked object: with 1,000 websocket
    listeners it paused the daemon for 100-250 ms (measured: report lateness
    p99 202 ms, max 259 ms; with full collections off, 20 ms and 39 ms), and
    with a million queued jobs it would take seconds.  So automatic
    collections cover the young generations only (where nearly all cyclic
    garbage dies), the heap built at start-up is frozen out of every scan,
    and `_collect_garbage` runs a full collection on a fixed interval so that
    long-lived cycles are still reclaimed.
    """
    gc.freeze()
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0, gen1, 1_000_000)


async def _collect_garbage(interval: float) -> None:
    while True:
        await trio.sleep(interval)
        started = trio.current_time()
        found = gc.collect()
        event(
            log, "gc", logging.DEBUG, found=found,
            seconds=round(trio.current_time() - started, 3),
        )  # fmt: skip


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Check every flag and file, then bind and serve.

    Exit status: 0 after SIGINT/SIGTERM; 2 for a configuration gloomd cannot
    start with (argparse's usage errors, and one line ``gloomd: ...`` for
    the rest), found before any port is bound; 1 for a failure to start
    that the configuration could not show (a port taken, no descriptors).
    """
    environ.print_notes("gloomd")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_flags(args)
        token, ssl_context = load_security(args)
        settings = cluster_settings(args)
        if settings is not None:
            probe_cluster(settings)
    except ConfigError as exc:
        print(f"gloomd: {exc}", file=sys.stderr)
        return 2
    logformat.setup(args.log_level, args.log_format, sys.stderr)
    # trio-websocket logs every message it reads at debug: noise beside ours.
    logging.getLogger("trio-websocket").setLevel(logging.INFO)
    if token is None and not _is_loopback(args.host):
        event(
            log, "insecure", logging.WARNING, host=args.host,
            note="listening beyond loopback without a token; anyone who can reach these ports"
            " can submit and take jobs (use --token-file)",
        )  # fmt: skip
    try:
        _fit_descriptors(args)
    except DescriptorBudgetError as exc:
        event(log, "fatal", logging.ERROR, error=str(exc))
        return 1
    try:
        journal, restored = _open_journal(args)
    except JournalError as exc:
        print(f"gloomd: --journal {exc.path}: {exc.reason}", file=sys.stderr, flush=True)
        return 2
    config = config_from_args(args, token, ssl_context, journal, restored)
    del restored  # the broker holds the jobs once replayed
    use_import_path(args)
    try:
        services = configured_services(args, config, GloomServer(config))
    except ConfigError as exc:
        if journal is not None:
            journal.close()
        print(f"gloomd: {exc}", file=sys.stderr)
        return 2
    _tune_gc()
    try:
        trio.run(serve, services, args.gc_interval)
    except (OSError, ExceptionGroup) as exc:
        # Typically a port is taken: say so in one line rather than a traceback.
        errors = exc.subgroup(OSError) if isinstance(exc, ExceptionGroup) else exc
        if errors is None:
            raise
        event(log, "fatal", logging.ERROR, error=str(_first_leaf(errors)))
        return 1
    finally:
        if journal is not None:
            journal.close()
    return 0


def _open_journal(args: argparse.Namespace) -> tuple[JournalStore | None, Restored | None]:
    """Open `--journal` with every start-up check and read it whole (replay's input).

    Before trio starts, so that a refused journal ends the start with exit
    status 2 and one line (`main`), the file untouched.
    """
    if args.journal is None:
        return None, None
    path = str(args.journal)
    store = JournalStore.open(path, args.sync)
    # A million records are millions of objects, none of them garbage: the
    # collector would scan them again and again (1M jobs: 15 s instead of 5).
    gc.disable()
    try:
        restored = decode_snapshot(path, store.load())
    except BaseException:
        store.close()
        raise
    finally:
        gc.enable()
    return store, restored


def _safe_url(url: str) -> str:
    """A URL as it may be printed: its password masked."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
