"""What each URL answers: an `HttpRequest` in, an `HttpResponse` out, no I/O.

Checks run in one order, so every bad request gets one answer:

    path known (404) -> method allowed (405, with Allow)
        -> token, except for the page's files (401, with WWW-Authenticate)
        -> for a POST: JSON content type (415), then the body as the action's frame

The I/O shell has already answered what it alone can see: malformed HTTP
(400), oversized headers (431) or body (413), too many connections (503) and
slow requests (408).

Every handler reads the broker synchronously (no await between the first
read and the answer), so a response describes one moment.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import trio

from gloomwire import codec

from ..messages import ProtocolViolation, decode_object
from ..server import GloomServer
from .admin import AdminChannel, HeldAnswer, status_for
from .assets import PAGE_HEADERS, Asset, load_assets
from .buildinfo import build_labels
from .messages import (
    Deferred,
    HttpRequest,
    HttpResponse,
    Offload,
    error_response,
    json_response,
    text_response,
)
from .metrics import (
    CONTENT_TYPE,
    MetricsSnapshot,
    render,
    snapshot_from_broker,
    snapshot_from_stats,
)
from .settings import HttpSettings

__all__ = ["ADMIN_ACTIONS", "JOBS_KEYS", "OFFLOAD_TYPES", "HttpApp", "split_target"]

_GET: Final = ("GET", "HEAD")
_POST: Final = ("POST",)
#: The admin actions a POST may name; everything else is a 404.
ADMIN_ACTIONS: Final = ("kick", "delete", "pause", "resume")
#: The query keys of GET /api/jobs that become keys of the `jobs` frame.
JOBS_KEYS: Final = ("type", "state", "limit", "cursor")
#: More query fields than this is not a question the API asks.
_MAX_QUERY_FIELDS: Final = 32
#: A /metrics snapshot with more types than this is rendered in a worker
#: thread: at ~18 us per type that is over a millisecond of event loop,
#: while the hand-off to a thread costs ~0.1 ms.  Measured with 1,000 types
#: held and a 5 Hz scrape: the slowest of 20,000 one-at-a-time jobs took
#: 53 ms with the render on the loop and 20 ms with it in a thread (the GIL
#: still takes turns between them); p50 0.1 ms either way.
OFFLOAD_TYPES: Final = 64

#: What a route gives the I/O shell: a response, or the work that makes it.
Result = HttpResponse | Offload | Deferred


class HttpApp:
    """The routes of the HTTP port over one running `GloomServer`.

    `connections` reports open connections by port name at scrape time (the
    service adds its own "http" count); `draining` says whether the daemon
    is shutting down (then /healthz answers 503).
    """

    def __init__(
        self,
        server: GloomServer,
        settings: HttpSettings,
        *,
        connections: Callable[[], Mapping[str, int]],
        draining: Callable[[], bool],
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._server = server
        self._settings = settings
        self._connections = connections
        self._draining = draining
        self._clock = clock
        self._token = None if settings.token is None else settings.token.encode("utf-8")
        self._assets: dict[str, Asset] = load_assets()
        self.admin = AdminChannel(server)
        handlers: dict[str, tuple[tuple[str, ...], Callable[[HttpRequest], Result]]] = {
            path: (_GET, self._asset) for path in self._assets
        }
        handlers["/healthz"] = (_GET, self._healthz)
        handlers["/metrics"] = (_GET, self._metrics)
        handlers["/api/stats"] = (_GET, self._stats)
        handlers["/api/jobs"] = (_GET, self._jobs)
        for action in ADMIN_ACTIONS:
            handlers[f"/api/{action}"] = (_POST, self._admin_action)
        self._handlers = handlers

    # ------------------------------------------------------------ dispatch

    def handle(self, request: HttpRequest) -> Result:
        """The response, or the work that makes it if that is better done off the
        loop (`Offload`), or what it waits for on the loop (`Deferred`)."""
        route = self._handlers.get(request.path)
        if route is None:
            return error_response(404, "not_found", request.path)
        methods, handler = route
        if request.method not in methods:
            allow = ", ".join(methods).encode("ascii")
            return error_response(
                405, "method_not_allowed", request.method, headers=((b"allow", allow),)
            )
        if request.path not in self._assets and not self._authorized(request):
            return error_response(
                401,
                "unauthorized",
                "token",
                headers=((b"www-authenticate", b'Bearer realm="gloomd"'),),
            )
        return handler(request)

    def _authorized(self, request: HttpRequest) -> bool:
        if self._token is None:
            return True
        given = request.header(b"authorization")
        if given is None:
            return False
        scheme, _, credentials = given.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        # Constant time, so the token cannot be guessed byte by byte.
        return hmac.compare_digest(credentials.strip(), self._token)

    # ------------------------------------------------------------ handlers

    def _asset(self, request: HttpRequest) -> HttpResponse:
        asset = self._assets[request.path]
        return HttpResponse(200, asset.body, asset.content_type, headers=PAGE_HEADERS)

    def _healthz(self, request: HttpRequest) -> HttpResponse:
        if self._draining():
            return text_response(503, "draining\n")
        return text_response(200, "ok\n")

    def _metrics(self, request: HttpRequest) -> HttpResponse | Offload | Deferred:
        if self._server.cluster is not None:
            return self._cluster_metrics()
        # The snapshot is taken here, on the loop (it reads the broker); only
        # the formatting of a large one leaves it.
        snapshot = self.snapshot()
        if len(snapshot.types) > OFFLOAD_TYPES:
            return Offload(lambda: _metrics_response(snapshot))
        return _metrics_response(snapshot)

    def _cluster_metrics(self) -> Deferred:
        """With --cluster the figures are the cluster's, from a stats step
        (one round trip to Redis per scrape), not this daemon's broker."""
        reply = self.admin.call({"action": "stats"})

        async def wait() -> HttpResponse:
            answer = await reply.wait() if isinstance(reply, HeldAnswer) else reply
            if answer.get("ok") is not True:
                return json_response(status_for(answer), answer)
            snapshot = snapshot_from_stats(
                answer["stats"],
                max_types=self._settings.metrics_max_types,
                connections=self._connections(),
                build=build_labels(),
            )
            return _metrics_response(snapshot)

        return Deferred(wait)

    def _stats(self, request: HttpRequest) -> Result:
        return self._answer(self.admin.call({"action": "stats"}))

    def _jobs(self, request: HttpRequest) -> Result:
        frame: dict[str, Any] = {"action": "jobs"}
        try:
            fields = parse_qsl(
                request.query, keep_blank_values=False, max_num_fields=_MAX_QUERY_FIELDS
            )
        except ValueError:
            return error_response(400, "bad_request", "too many query fields")
        for key, value in fields:
            if key in JOBS_KEYS:
                frame[key] = _query_value(value)
        return self._answer(self.admin.call(frame))

    def _admin_action(self, request: HttpRequest) -> Result:
        content_type = request.header(b"content-type") or b""
        if content_type.split(b";", 1)[0].strip().lower() != b"application/json":
            # A cross-site form or a "simple" fetch cannot send this type
            # without a CORS preflight, which this port never grants: so a
            # web page the operator visits cannot kick or delete jobs.
            return error_response(415, "unsupported_media_type", "application/json")
        action = request.path.rsplit("/", 1)[1]
        try:
            body = decode_object(request.body) if request.body.strip() else {}
        except ProtocolViolation as violation:
            # The master port's own answer to the same payload.
            return self._answer(violation.frame())
        # The path names the action; the body holds the rest of the frame.
        frame = {"action": action, **{k: v for k, v in body.items() if k != "action"}}
        return self._answer(self.admin.call(frame))

    @staticmethod
    def _answer(reply: dict[str, Any] | HeldAnswer) -> HttpResponse | Deferred:
        if isinstance(reply, HeldAnswer):
            # With --journal: answered once the commit storing the change has
            # returned (or with journal_error), as the master port answers.
            async def wait() -> HttpResponse:
                answer = await reply.wait()
                return json_response(status_for(answer), answer)

            return Deferred(wait)
        return json_response(status_for(reply), reply)

    # ------------------------------------------------------------ metrics

    def snapshot(self) -> MetricsSnapshot:
        broker = self._server.broker
        if broker is None:
            raise RuntimeError("the Gloom server is not running")
        return snapshot_from_broker(
            broker,
            now=self._clock(),
            max_types=self._settings.metrics_max_types,
            connections=self._connections(),
            build=build_labels(),
        )


def _metrics_response(snapshot: MetricsSnapshot) -> HttpResponse:
    return HttpResponse(200, render(snapshot), CONTENT_TYPE.encode("ascii"))


def split_target(target: str) -> tuple[str, str]:
    """(path, query) of a request target, origin-form or absolute-form."""
    parts = urlsplit(target)
    return parts.path or "/", parts.query


def _query_value(text: str) -> Any:
    """A query value is JSON if it parses as JSON, else the string itself.

    So `type=7` is the integer type 7, `type=resize` the string "resize",
    and the string "7" is written `type="7"`.
    """
    try:
        return codec.loads(text.encode("utf-8"))
    except codec.DecodeError:
        return text
