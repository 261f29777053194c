"""The HTTP port's routes and admin channel as values: no sockets.

An `HttpApp` over a `GloomServer` whose broker is driven by hand (brokerkit),
fed `HttpRequest`s, answering `HttpResponse`s.
"""

from __future__ import annotations

from typing import Any

import pytest

from gloomd.http.admin import AdminChannel, status_for
from gloomd.http.messages import HttpRequest, HttpResponse, Offload
from gloomd.http.routes import OFFLOAD_TYPES, HttpApp, split_target
from gloomd.http.settings import HttpSettings
from gloomd.server import GloomServer
from gloomwire import codec
from tests.support.brokerkit import Kit

JSON = ((b"content-type", b"application/json"),)


def make_app(token: str | None = None, draining: bool = False) -> tuple[HttpApp, Kit]:
    kit = Kit()
    server = GloomServer()
    server.broker = kit.broker
    app = HttpApp(
        server,
        HttpSettings(token=token),
        connections=lambda: {"master": len(kit.broker.masters), "slave": len(kit.broker.slaves)},
        draining=lambda: draining,
        clock=kit.clock,
    )
    return app, kit


def get(
    path: str, headers: tuple[tuple[bytes, bytes], ...] = (), method: str = "GET"
) -> HttpRequest:
    path_only, query = split_target(path)
    return HttpRequest(method, path_only, query, headers)


def post(path: str, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = JSON) -> HttpRequest:
    return HttpRequest("POST", path, "", headers, body)


def body_of(response: HttpResponse | Offload) -> Any:
    assert isinstance(response, HttpResponse)
    return codec.loads(response.body)


def test_unknown_path_is_404() -> None:
    app, _ = make_app()
    response = app.handle(get("/nope"))
    assert response.status == 404
    assert body_of(response) == {"error": "not_found", "reason": "/nope"}
    assert app.handle(get("/api")).status == 404
    assert app.handle(get("/api/submit")).status == 404  # not an admin action


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/api/stats", b"GET, HEAD"),
        ("DELETE", "/metrics", b"GET, HEAD"),
        ("PUT", "/", b"GET, HEAD"),
        ("GET", "/api/kick", b"POST"),
        ("HEAD", "/api/delete", b"POST"),
    ],
)
def test_wrong_method_is_405_with_allow(method: str, path: str, allow: bytes) -> None:
    app, _ = make_app()
    response = app.handle(HttpRequest(method, path, "", JSON))
    assert response.status == 405
    assert (b"allow", allow) in response.headers
    assert body_of(response) == {"error": "method_not_allowed", "reason": method}


@pytest.mark.parametrize(
    "authorization",
    [None, b"Bearer wrong", b"Basic c2VjcmV0", b"secret", b"Bearer", b"Bearer secret2"],
)
def test_token_required_everywhere_but_the_page(authorization: bytes | None) -> None:
    app, _ = make_app(token="secret")
    headers = () if authorization is None else ((b"authorization", authorization),)
    for path in ("/api/stats", "/metrics", "/healthz", "/api/jobs"):
        response = app.handle(get(path, headers))
        assert response.status == 401, path
        assert (b"www-authenticate", b'Bearer realm="gloomd"') in response.headers
        assert body_of(response) == {"error": "unauthorized", "reason": "token"}
    assert app.handle(post("/api/kick", b"{}", JSON + headers)).status == 401
    # The page's files hold no data: they load so the page can ask for the token.
    for path in ("/", "/app.js", "/app.css"):
        assert app.handle(get(path, headers)).status == 200


@pytest.mark.parametrize("authorization", [b"Bearer secret", b"bearer secret", b"BEARER  secret "])
def test_right_token_is_accepted(authorization: bytes) -> None:
    app, _ = make_app(token="secret")
    response = app.handle(get("/api/stats", ((b"authorization", authorization),)))
    assert response.status == 200
    assert body_of(response)["ok"] is True


def test_healthz_ok_then_draining() -> None:
    app, _ = make_app()
    response = app.handle(get("/healthz"))
    assert (response.status, response.body) == (200, b"ok\n")
    draining, _ = make_app(draining=True)
    response = draining.handle(get("/healthz"))
    assert (response.status, response.body) == (503, b"draining\n")


def test_api_stats_is_the_stats_action_and_skips_the_internal_peer() -> None:
    app, kit = make_app()
    master = kit.master()
    kit.submit(master, 1, "resize")
    kit.submit(master, 2, "resize")
    kit.slave("email")
    response = app.handle(get("/api/stats"))
    assert response.status == 200
    reply = body_of(response)
    # Exactly what a master gets for {"action":"stats"} at the same moment.
    assert reply == kit.send(master, {"action": "stats"})[0]
    assert reply["stats"]["connections"] == {"masters": 1, "slaves": 1}
    # The admin seat is no connection: the broker never lists it.
    assert len(kit.broker.masters) == 1
    assert not kit.broker.dirty


def test_static_files_are_the_package_files() -> None:
    app, _ = make_app()
    page = app.handle(get("/"))
    assert page.status == 200
    assert page.content_type.startswith(b"text/html")
    assert b'<script src="app.js"' in page.body  # relative: works behind a path prefix
    script = app.handle(get("/app.js"))
    assert script.content_type.startswith(b"text/javascript")
    assert b"api/stats" in script.body
    assert app.handle(get("/app.css")).content_type.startswith(b"text/css")
    headers = dict(page.headers)
    assert b"default-src 'none'" in headers[b"content-security-policy"]
    assert headers[b"x-frame-options"] == b"DENY"


def test_post_needs_json_content_type() -> None:
    app, _ = make_app()
    for headers in (
        (),
        ((b"content-type", b"text/plain"),),
        ((b"content-type", b"application/x-www-form-urlencoded"),),
    ):
        response = app.handle(post("/api/kick", b'{"id":1}', headers))
        assert response.status == 415
    response = app.handle(
        post("/api/kick", b'{"id":1}', ((b"content-type", b"Application/JSON; charset=utf-8"),))
    )
    assert response.status != 415


def test_post_body_is_judged_like_a_master_frame() -> None:
    app, kit = make_app()
    master = kit.master()
    for body in (b"{nope", b"[1,2]", b"12"):
        response = app.handle(post("/api/kick", body))
        assert response.status == 400
        # The master port's own answer to the same payload.
        kit.receive(master, body)
        assert body_of(response) == kit.out(master)[0], body


def test_path_names_the_action() -> None:
    # The path names the action whatever the body says; the answer is the
    # broker's, as on the master port.
    app, _ = make_app()
    for action in ("kick", "delete"):
        response = app.handle(post(f"/api/{action}", b'{"action":"stats","id":1}'))
        assert response.status == 404
        assert body_of(response) == {"error": "unknown_id", "reason": 1}
    for action in ("pause", "resume"):
        response = app.handle(post(f"/api/{action}", b'{"action":"stats","id":1}'))
        assert response.status == 400
        assert body_of(response) == {"error": "missing_field", "reason": "type"}
    empty = app.handle(post("/api/pause", b""))
    assert body_of(empty) == {"error": "missing_field", "reason": "type"}
    paused = app.handle(post("/api/pause", b'{"type":"resize"}'))
    assert (paused.status, body_of(paused)) == (200, {"ok": True})


def test_jobs_query_becomes_the_jobs_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    app, _ = make_app()
    sent: list[dict[str, Any]] = []

    def record(frame: dict[str, Any]) -> dict[str, Any]:
        sent.append(frame)
        return {"ok": True, "jobs": [], "next": None}

    monkeypatch.setattr(app.admin, "call", record)
    response = app.handle(get("/api/jobs?type=resize&state=dead&limit=10&cursor=%22c1%22&x=1"))
    assert response.status == 200
    assert sent[-1] == {
        "action": "jobs",
        "type": "resize",
        "state": "dead",
        "limit": 10,
        "cursor": "c1",
    }
    app.handle(get("/api/jobs?type=%7B%22k%22%3A%5B1%2C2%5D%7D&limit=ten"))
    assert sent[-1] == {"action": "jobs", "type": {"k": [1, 2]}, "limit": "ten"}
    app.handle(get("/api/jobs?type=7&type=%227%22"))
    assert sent[-1] == {"action": "jobs", "type": "7"}  # the last value; quoted: a string
    app.handle(get("/api/jobs?type=&state="))
    assert sent[-1] == {"action": "jobs"}  # empty values are no filter
    big = 2**70
    app.handle(get(f"/api/jobs?cursor={big}"))
    assert sent[-1]["cursor"] == big  # exact, as on the wire


def test_jobs_answers_the_brokers_page() -> None:
    app, _ = make_app()
    response = app.handle(get("/api/jobs?state=dead"))
    assert response.status == 200
    assert body_of(response) == {"ok": True, "jobs": [], "next": None}
    bad = app.handle(get("/api/jobs?state=gone"))
    assert (bad.status, body_of(bad)) == (400, {"error": "invalid_type", "reason": "state"})


def test_too_many_query_fields_is_400() -> None:
    app, _ = make_app()
    query = "&".join(f"k{i}=1" for i in range(100))
    assert app.handle(get(f"/api/jobs?{query}")).status == 400


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        ({"ok": True}, 200),
        ({"error": "unknown_id", "reason": 5}, 404),
        ({"error": "invalid_state", "reason": "running"}, 409),
        ({"error": "missing_field", "reason": "id"}, 400),
        ({"error": "unknown_action", "reason": "kick"}, 400),
        ({"ok": False}, 400),
    ],
)
def test_status_for_broker_replies(reply: dict[str, Any], status: int) -> None:
    assert status_for(reply) == status


def test_admin_channel_needs_a_running_server() -> None:
    with pytest.raises(RuntimeError):
        AdminChannel(GloomServer()).call({"action": "stats"})


def test_admin_channel_reads_pre_encoded_replies() -> None:
    # ping is answered with the broker's pre-encoded OK_FRAME (bytes).
    app, _ = make_app()
    assert app.admin.call({"action": "ping"}) == {"ok": True}


def test_large_metrics_are_rendered_off_the_loop() -> None:
    app, kit = make_app()
    master = kit.master()
    for i in range(OFFLOAD_TYPES):
        kit.submit(master, i, f"t{i}")
    small = app.handle(get("/metrics"))
    assert isinstance(small, HttpResponse) and small.status == 200
    kit.submit(master, "one more", "t-last")
    large = app.handle(get("/metrics"))
    assert isinstance(large, Offload)
    # The snapshot was taken at handle time: later changes do not leak in.
    kit.submit(master, "after", "t-after")
    response = large.work()
    assert response.status == 200
    assert b'type="t-last"' in response.body and b"t-after" not in response.body


def test_split_target_absolute_form() -> None:
    assert split_target("http://127.0.0.1:9997/api/jobs?state=dead") == ("/api/jobs", "state=dead")
    assert split_target("/metrics") == ("/metrics", "")
    assert split_target("*") == ("*", "")
