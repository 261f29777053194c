"""The HTTP port over real sockets: bad input, slowloris, caps, auth, TLS, keep-alive.

The fine print of durability-and-operations.md section 3: malformed request
400, unknown path 404, wrong method 405, request line or headers over 64 KiB
431 and close, body over --max-frame 413 and close; plus 503 over the
connection cap and a request that takes longer than the frame timeout cut.
"""

from __future__ import annotations

import ssl

import h11
import pytest
import trio
import trio.testing
import trustme

from gloomd.http import HttpService
from gloomd.server import GloomServer
from tests.support.httpkit import Client, build_request, exchange_raw, fetch, start_http

MAX_BODY = 1000


@pytest.fixture
async def http(gloomd_server: GloomServer, nursery: trio.Nursery) -> HttpService:
    return await start_http(nursery, gloomd_server, max_body=MAX_BODY, request_timeout=5.0)


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: x\r\n\r\n",
    ],
)
async def test_malformed_request_is_400_and_close(http: HttpService, data: bytes) -> None:
    reply, closed = await exchange_raw(http.port, data)
    assert reply is not None
    assert reply.status in (400, 501)  # 501: a transfer coding h11 does not implement
    assert reply.json()["error"] == "bad_request"
    assert reply.headers["connection"] == "close"
    assert closed


async def test_request_line_over_64k_is_431_and_close(http: HttpService) -> None:
    data = b"GET /" + b"a" * (64 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    reply, closed = await exchange_raw(http.port, data)
    assert reply is not None and reply.status == 431
    assert reply.json()["error"] == "headers_too_large"
    assert closed


async def test_headers_over_64k_are_431_and_close(http: HttpService) -> None:
    headers = {f"X-Filler-{i}": "v" * 1000 for i in range(70)}
    reply, closed = await exchange_raw(http.port, build_request("GET", "/healthz", headers=headers))
    assert reply is not None and reply.status == 431
    assert closed


async def test_headers_under_64k_are_fine(http: HttpService) -> None:
    headers = {f"X-Filler-{i}": "v" * 1000 for i in range(60)}
    reply = await fetch(http.port, "GET", "/healthz", headers=headers)
    assert reply.status == 200


async def test_declared_body_over_max_is_413_and_close(http: HttpService) -> None:
    # The body is never sent: the declared length alone is refused.
    head = (
        b"POST /api/kick HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {MAX_BODY + 1}\r\n\r\n".encode()
    )
    reply, closed = await exchange_raw(http.port, head)
    assert reply is not None and reply.status == 413
    assert reply.json() == {"error": "size_error", "reason": f"body over {MAX_BODY} bytes"}
    assert closed


async def test_chunked_body_over_max_is_413_and_close(http: HttpService) -> None:
    chunk = b"x" * 600
    data = (
        b"POST /api/kick HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(chunk) + chunk + b"\r\n"
        + b"%x\r\n" % len(chunk) + chunk + b"\r\n0\r\n\r\n"
    )  # fmt: skip
    reply, closed = await exchange_raw(http.port, data)
    assert reply is not None and reply.status == 413
    assert closed


async def test_body_at_max_is_read(http: HttpService) -> None:
    body = b'{"id":"' + b"x" * (MAX_BODY - 9) + b'"}'
    assert len(body) == MAX_BODY
    reply = await fetch(
        http.port, "POST", "/api/kick", headers={"Content-Type": "application/json"}, body=body
    )
    assert reply.status == 404  # the broker's answer (no such job), not 413
    assert reply.json() == {"error": "unknown_id", "reason": "x" * (MAX_BODY - 9)}


async def test_404_405_keep_the_connection(http: HttpService) -> None:
    client = await Client.open(http.port)
    try:
        missing = await client.request("GET", "/nope")
        assert missing.status == 404 and "connection" not in missing.headers
        wrong = await client.request("DELETE", "/metrics")
        assert wrong.status == 405 and wrong.headers["allow"] == "GET, HEAD"
        fine = await client.request("GET", "/healthz")
        assert (fine.status, fine.body) == (200, b"ok\n")
        assert http.open_connections == 1
    finally:
        await client.aclose()


async def test_head_sends_headers_only(http: HttpService) -> None:
    client = await Client.open(http.port)
    try:
        head = await client.request("HEAD", "/")
        assert head.status == 200 and head.body == b""
        page = await client.request("GET", "/")
        assert int(head.headers["content-length"]) == len(page.body) > 0
        assert head.headers["server"].startswith("gloomd/")
    finally:
        await client.aclose()


async def test_http10_and_connection_close_are_honoured(http: HttpService) -> None:
    reply, closed = await exchange_raw(http.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert reply is not None and reply.status == 200 and closed
    reply, closed = await exchange_raw(http.port, build_request("GET", "/healthz", close=True))
    assert reply is not None and reply.status == 200 and closed


async def test_pipelined_requests_are_answered_in_order(http: HttpService) -> None:
    client = await Client.open(http.port)
    try:
        await client.send_raw(build_request("GET", "/healthz") + build_request("GET", "/nope"))
        statuses = []
        for _ in range(2):
            # Tell the client-side parser which request each response answers.
            client.conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            client.conn.send(h11.EndOfMessage())
            statuses.append((await client.read_reply()).status)
            client.conn.start_next_cycle()
        assert statuses == [200, 404]
    finally:
        await client.aclose()


async def test_expect_100_continue(http: HttpService) -> None:
    client = await Client.open(http.port)
    try:
        body = b'{"id":1}'
        head = (
            b"POST /api/kick HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        await client.send_raw(head)
        interim = await client.stream.receive_some(65536)
        assert interim.startswith(b"HTTP/1.1 100 ")
        await client.send_raw(body)
        rest = b""
        while b"unknown_id" not in rest:
            rest += await client.stream.receive_some(65536)
        assert rest.startswith(b"HTTP/1.1 404 ")
    finally:
        await client.aclose()


# ---------------------------------------------------------------- time limits


async def test_slowloris_is_cut_at_the_request_timeout(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    timeout = 0.5
    http = await start_http(nursery, gloomd_server, request_timeout=timeout)
    client = await Client.open(http.port)
    started = trio.current_time()
    cut_at: float | None = None
    try:
        await client.send_raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        # One header byte every 50 ms, for at most 10 s: a request that never ends.
        with trio.fail_after(10):
            for _ in range(200):
                try:
                    await client.send_raw(b"X")
                except trio.BrokenResourceError:
                    break
                with trio.move_on_after(0.05):
                    data = await client.stream.receive_some(65536)
                    cut_at = trio.current_time()
                    assert data.startswith(b"HTTP/1.1 408 "), data
                    assert b"connection: close" in data
                    break
    finally:
        await client.aclose()
    assert cut_at is not None
    assert timeout <= cut_at - started < timeout + 2.0
    # The port served others all along and still does.
    assert (await fetch(http.port, "GET", "/healthz")).status == 200


async def test_slow_requests_do_not_stall_others(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    http = await start_http(nursery, gloomd_server, request_timeout=30.0)
    slow = [await Client.open(http.port) for _ in range(100)]
    try:
        for client in slow:
            await client.send_raw(b"GET /metrics HTTP/1.1\r\nHo")
        with trio.fail_after(5):
            for _ in range(20):
                assert (await fetch(http.port, "GET", "/api/stats")).status == 200
    finally:
        for client in slow:
            await client.aclose()


async def test_idle_keep_alive_is_closed_silently(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    http = await start_http(nursery, gloomd_server, request_timeout=0.3)
    client = await Client.open(http.port)
    try:
        assert (await client.request("GET", "/healthz")).status == 200
        with trio.fail_after(5):
            assert await client.stream.receive_some(65536) == b""
    finally:
        await client.aclose()


async def test_client_that_does_not_read_is_dropped(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    http = await start_http(nursery, gloomd_server, request_timeout=0.5)
    client = await Client.open(http.port)
    try:
        # Pipeline many page requests and never read: the responses fill
        # both socket buffers, the write times out and the server hangs up.
        request = build_request("GET", "/app.js")
        with trio.fail_after(10):
            with trio.move_on_after(3):
                while True:
                    try:
                        await client.send_raw(request * 50)
                    except trio.BrokenResourceError:
                        break  # the server hung up: what this test waits for
            while http.open_connections:
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    finally:
        await client.aclose()


# ---------------------------------------------------------------- connection cap


async def test_over_the_cap_is_503_and_close(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    http = await start_http(nursery, gloomd_server, max_connections=2)
    held = [await Client.open(http.port) for _ in range(2)]
    for client in held:
        assert (await client.request("GET", "/healthz")).status == 200
    reply, closed = await exchange_raw(http.port, build_request("GET", "/healthz"))
    assert reply is not None and reply.status == 503
    assert reply.json() == {"error": "too_many_connections", "reason": 2}
    assert closed
    await held.pop().aclose()
    with trio.fail_after(5):
        while http.open_connections > 1:
            await trio.testing.wait_all_tasks_blocked(cushion=0.01)
    assert (await fetch(http.port, "GET", "/healthz")).status == 200
    await held.pop().aclose()


# ---------------------------------------------------------------- auth and TLS


async def test_bearer_token_end_to_end(gloomd_server: GloomServer, nursery: trio.Nursery) -> None:
    http = await start_http(nursery, gloomd_server, token="s3cret")
    denied = await fetch(http.port, "GET", "/metrics")
    assert denied.status == 401
    assert denied.headers["www-authenticate"] == 'Bearer realm="gloomd"'
    wrong = await fetch(http.port, "GET", "/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    ok = await fetch(http.port, "GET", "/metrics", headers={"Authorization": "Bearer s3cret"})
    assert ok.status == 200 and b"gloomd_build_info" in ok.body
    assert (await fetch(http.port, "GET", "/")).status == 200  # the page asks for the token


@pytest.fixture(scope="module")
def tls_pair() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def test_tls(
    gloomd_server: GloomServer,
    nursery: trio.Nursery,
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls_pair
    http = await start_http(nursery, gloomd_server, ssl_context=server_ctx, token="t")
    client = await Client.open(http.port, ssl_context=client_ctx)
    try:
        for _ in range(2):  # keep-alive over TLS
            reply = await client.request("GET", "/api/stats", headers={"Authorization": "Bearer t"})
            assert reply.status == 200 and reply.json()["ok"] is True
    finally:
        await client.aclose()
    # Plain HTTP on the TLS port gets no HTTP answer.
    plain = await trio.open_tcp_stream("127.0.0.1", http.port)
    try:
        await plain.send_all(build_request("GET", "/healthz"))
        with trio.fail_after(10):
            data = b""
            while True:
                try:
                    chunk = await plain.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                data += chunk
        assert not data.startswith(b"HTTP/1.1 200")
    finally:
        await plain.aclose()


async def test_tls_over_the_cap_is_closed_without_handshake(
    gloomd_server: GloomServer,
    nursery: trio.Nursery,
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls_pair
    http = await start_http(nursery, gloomd_server, ssl_context=server_ctx, max_connections=1)
    held = await Client.open(http.port, ssl_context=client_ctx)
    try:
        assert (await held.request("GET", "/healthz")).status == 200
        with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
            await Client.open(http.port, ssl_context=client_ctx)
    finally:
        await held.aclose()


# ---------------------------------------------------------------- shutdown


async def test_healthz_says_draining_once_the_server_shuts_down(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    http = await start_http(nursery, gloomd_server)
    client = await Client.open(http.port)
    try:
        assert (await client.request("GET", "/healthz")).status == 200
        assert gloomd_server.broker is not None
        gloomd_server.broker.halt()  # what shutdown() does first
        reply = await client.request("GET", "/healthz")
        assert (reply.status, reply.body) == (503, b"draining\n")
    finally:
        await client.aclose()


async def test_start_draining_flag(http: HttpService) -> None:
    http.start_draining()
    assert (await fetch(http.port, "GET", "/healthz")).status == 503
