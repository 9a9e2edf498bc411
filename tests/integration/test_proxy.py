"""The proxy end to end: real gateway, real upstream process, real sockets."""

from __future__ import annotations

import hashlib
import json
import os

import httpx
import pytest
import trio
from structlog.testing import capture_logs

from .conftest import assert_error_body, client, upstream_service, wait_for_state

MB = 1024 * 1024


async def test_fifty_concurrent_cold_requests_cause_one_start_and_all_succeed(start_gateway):
    with trio.fail_after(60):
        gateway = await start_gateway(services={"up": upstream_service("--start-delay", "0.5")})
        results: list[httpx.Response] = []
        async with client(gateway) as http:
            async def one(i: int) -> None:
                results.append(await http.get(f"/services/up/echo/{i}"))

            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(one, i)
        assert [r.status_code for r in results] == [200] * 50
        assert len({r.json()["pid"] for r in results}) == 1
        assert gateway.supervisors["up"].starts == 1


async def test_path_and_query_are_forwarded_byte_for_byte(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            target = "/echo/a%2Fb/%7Euser/;x=1?q=%20a+b&q=2&empty=&raw=%E2%9C%93"
            response = await http.get("/services/up" + target)
            assert response.json()["path"] == target
            response = await http.get("/services/up")
            assert response.status_code == 404  # forwarded as "/", which the upstream lacks
            assert response.json()["path"] == "/"


async def test_every_method_and_body_is_forwarded(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]:
                content = f"body of {method}".encode() if method != "GET" else b""
                response = await http.request(method, "/services/up/echo", content=content)
                echoed = response.json()
                assert (echoed["method"], echoed["body_length"]) == (method, len(content))
            response = await http.head("/services/up/echo")
            assert response.status_code == 200
            assert response.content == b""


async def test_headers_are_forwarded_with_hop_by_hop_dropped_and_forwarding_added(
        start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            response = await http.post(
                "/services/up/echo", content=b"x",
                headers={"X-Custom": "one", "Connection": "keep-alive, X-Private",
                         "X-Private": "secret", "Keep-Alive": "timeout=5", "TE": "trailers",
                         "X-Request-ID": "req-123", "X-Forwarded-For": "10.1.2.3",
                         "Authorization": "Bearer upstream-token"})
            assert response.headers["x-request-id"] == "req-123"
            received = {}
            for name, value in response.json()["headers"]:
                received.setdefault(name.lower(), []).append(value)
            assert received["x-custom"] == ["one"]
            assert received["authorization"] == ["Bearer upstream-token"]
            assert received["x-request-id"] == ["req-123"]
            assert received["x-forwarded-for"] == ["10.1.2.3, 127.0.0.1"]
            assert received["x-forwarded-proto"] == ["http"]
            assert received["x-forwarded-host"] == [gateway.url.removeprefix("http://")]
            upstream = gateway.supervisors["up"].config
            assert received["host"] == [f"127.0.0.1:{upstream.upstream_port}"]
            for hop in ("connection", "x-private", "keep-alive", "te"):
                assert hop not in received

            response = await http.get("/services/up/hop")
            assert response.headers["x-kept"] == "yes"
            assert "x-secret" not in response.headers
            assert "keep-alive" not in response.headers

            response = await http.get("/services/up/cookies")
            assert response.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
            assert response.headers["x-upstream"] == "yes"
            assert len(response.headers["x-request-id"]) == 32  # generated


async def test_status_codes_pass_through(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            for status in (201, 204, 301, 404, 418, 500, 503):
                response = await http.get(f"/services/up/status/{status}")
                assert response.status_code == status


async def test_a_chunk_reaches_the_client_before_the_upstream_sends_the_next(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})
        port = gateway.supervisors["up"].config.upstream_port
        async with client(gateway) as http, httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}") as direct:
            async with http.stream("GET", "/services/up/gated?key=k1&n=3") as response:
                lines = response.aiter_lines()
                # Each chunk is only sent by the upstream after the previous one was read here.
                assert json.loads(await lines.__anext__()) == {"i": 0}
                await direct.post("/release?key=k1")
                assert json.loads(await lines.__anext__()) == {"i": 1}
                await direct.post("/release?key=k1")
                assert json.loads(await lines.__anext__()) == {"i": 2}


async def test_sse_and_ndjson_streams_arrive_chunk_by_chunk(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            async with http.stream("GET", "/services/up/stream?n=4&gap_ms=50&type=sse") as r:
                assert r.headers["content-type"] == "text/event-stream"
                chunks = [chunk async for chunk in r.aiter_raw()]
            assert chunks == [f'data: {{"i": {i}}}\n\n'.encode() for i in range(4)]


async def test_a_100_mb_upload_and_download_pass_intact(start_gateway):
    with trio.fail_after(120):
        gateway = await start_gateway(services={"up": upstream_service()})
        block = bytes(range(256)) * 256  # 64 KiB
        expected = hashlib.sha256()
        for _ in range(100 * MB // len(block)):
            expected.update(block)

        async def upload():
            for _ in range(100 * MB // len(block)):
                yield block

        async with client(gateway) as http:
            response = await http.post("/services/up/upload", content=upload())
            assert response.json() == {"length": 100 * MB, "sha256": expected.hexdigest()}

            for chunked in ("0", "1"):
                digest, size = hashlib.sha256(), 0
                async with http.stream("GET", f"/services/up/bytes?n={100 * MB}"
                                              f"&chunked={chunked}") as response:
                    async for chunk in response.aiter_raw():
                        digest.update(chunk)
                        size += len(chunk)
                assert (size, digest.hexdigest()) == (100 * MB, expected.hexdigest())


async def test_unknown_service_is_404_json(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            response = await http.get("/services/nope/x")
            body = assert_error_body(response, 404, "unknown_service", "nope")
            assert body["services"] == ["up"]


async def test_an_upstream_that_refuses_connections_is_502(start_gateway):
    with trio.fail_after(30):
        # The process is "ready" after a fixed delay but never listens where Hestia looks.
        service = upstream_service("--port", "1", readiness={"delay": "100ms"})
        gateway = await start_gateway(services={"up": service})
        async with client(gateway) as http:
            response = await http.get("/services/up/echo")
            assert_error_body(response, 502, "upstream_unreachable", "up")


async def test_an_upstream_that_closes_without_answering_is_502(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            response = await http.get("/services/up/close")
            assert_error_body(response, 502, "upstream_reset", "up")
            assert (await http.get("/services/up/health")).status_code == 200


async def test_a_real_client_gets_504_when_a_deadline_passes(start_gateway):
    # Each deadline (connect, first byte, total) to the instant: unit/test_proxy_deadlines.py.
    with trio.fail_after(30):
        gateway = await start_gateway(services={
            "first": upstream_service(timeouts={"first_byte": "200ms"})})
        async with client(gateway) as http:
            response = await http.get("/services/first/slow?ms=2000")
            body = assert_error_body(response, 504, "upstream_timeout", "first")
            assert body["phase"] == "first_byte"
            # Within the deadline, the same route answers.
            assert (await http.get("/services/first/slow?ms=10")).status_code == 200


async def test_a_failed_start_is_503_with_exit_status_and_log_tail(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service("--fail-start", "3")})
        async with client(gateway) as http:
            response = await http.get("/services/up/echo")
            body = assert_error_body(response, 503, "start_failed", "up")
            assert body["exit_status"] == 3
            assert "exited with status 3" in body["detail"]
            assert "fatal: simulated start failure" in body["log_tail"]
            assert int(response.headers["retry-after"]) >= 1
            assert [a["exit_status"] for a in body["attempts"]] == [3]
            status = (await http.get("/v1/services/up/status")).json()
            assert status["state"] == "FAILED"  # for the cool-down, then COLD again
            assert status["lastError"]["exit_status"] == 3


async def test_queue_overflow_and_queue_deadline_are_503_with_retry_after(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={
            "up": upstream_service("--start-delay", "3", queue={"max": 1, "timeout": "500ms"}),
        })
        async with client(gateway) as http:
            responses: dict[str, httpx.Response] = {}

            async def first() -> None:
                responses["first"] = await http.get("/services/up/echo")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(first)
                while gateway.supervisors["up"].queue_pending == 0:
                    await trio.sleep(0.005)
                responses["second"] = await http.get("/services/up/echo")
            body = assert_error_body(responses["second"], 503, "queue_full", "up")
            assert responses["second"].headers["retry-after"] == "5"
            assert body["state"] == "STARTING"
            assert_error_body(responses["first"], 503, "queue_timeout", "up")
            assert "retry-after" in responses["first"].headers


# A start after a crash waits startup.delay (the backoff: tests/unit/test_crash_backoff.py),
# 100ms in the two tests below.
CRASH_BACKOFF = {"delay": "100ms"}


async def test_a_crash_while_ready_is_seen_and_the_next_request_restarts(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service(startup=CRASH_BACKOFF)})
        async with client(gateway) as http:
            first = (await http.get("/services/up/echo")).json()["pid"]
            assert (await http.get("/services/up/die-later?ms=50")).text == "bye"
            await wait_for_state(gateway, "up", "COLD")
            status = (await http.get("/v1/services/up/status")).json()
            assert status["lastError"]["error"] == "backend_crashed"
            assert status["lastError"]["exit_status"] == 19
            second = (await http.get("/services/up/echo")).json()["pid"]
            assert second != first
            assert gateway.supervisors["up"].starts == 2


async def test_an_upstream_dying_mid_body_truncates_the_response(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service(startup=CRASH_BACKOFF)})
        async with client(gateway) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get("/services/up/crash-mid-body")
            await wait_for_state(gateway, "up", "COLD")
            assert (await http.get("/services/up/health")).status_code == 200


async def test_a_client_leaving_mid_stream_releases_its_lease(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})
        supervisor = gateway.supervisors["up"]
        async with client(gateway) as http:
            async with http.stream("GET", "/services/up/stream?n=1000&gap_ms=20") as response:
                async for _ in response.aiter_raw():
                    assert supervisor.in_flight == 1
                    break
        while supervisor.in_flight:
            await trio.sleep(0.005)
        assert supervisor.state.name == "READY"


async def test_idle_shutdown_really_ends_the_process(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service(idle_timeout="300ms")})
        async with client(gateway) as http:
            pid = (await http.get("/services/up/echo")).json()["pid"]
            os.kill(pid, 0)  # alive
            await wait_for_state(gateway, "up", "COLD")
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
            status = (await http.get("/v1/services/up/status")).json()
            assert status["pid"] is None


async def test_a_client_that_disconnects_while_waiting_leaves_the_queue(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service("--start-delay", "5")})
        supervisor = gateway.supervisors["up"]
        host, port = gateway.url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"GET /services/up/echo HTTP/1.1\r\nHost: localhost\r\n\r\n")
        while supervisor.queue_pending == 0:
            await trio.sleep(0.005)
        await stream.aclose()
        while supervisor.queue_pending:
            await trio.sleep(0.005)
        assert supervisor.in_flight == 0


async def test_upstream_connections_are_kept_alive_and_successes_logged_as_such(start_gateway):
    with trio.fail_after(30), capture_logs() as logs:
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            ports = [(await http.get("/services/up/echo")).json()["peer_port"]
                     for _ in range(5)]
        # The handler logs its line just after the client has the whole response.
        while len(requests := [e for e in logs if e["event"] == "request"]) < 5:
            await trio.sleep(0.005)
    assert len(set(ports)) == 1
    assert [(r["status"], r["error"]) for r in requests] == [(200, None)] * 5


async def test_a_request_outlasting_a_stop_gets_502_after_the_drain(start_gateway):
    with trio.fail_after(30):
        # The drain (grace_period) is 1s here; in virtual time: tests/unit/test_supervisor.py.
        gateway = await start_gateway(services={"up": upstream_service()}, grace_period="1s")
        supervisor = gateway.supervisors["up"]
        async with client(gateway) as http:
            responses: list[httpx.Response] = []

            async def slow() -> None:
                responses.append(await http.get("/services/up/slow?ms=20000"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow)  # the only request: it starts the backend, then waits
                while supervisor.state.name != "READY" or supervisor.in_flight == 0:
                    await trio.sleep(0.005)
                assert (await http.post("/v1/services/up/stop")).status_code == 202
                assert (await http.get("/v1/services/up/status")).json()["state"] == "STOPPING"
            body = assert_error_body(responses[0], 502, "backend_stopped", "up")
            assert "was stopped (api)" in body["detail"]
            await wait_for_state(gateway, "up", "COLD")


async def test_a_kept_alive_connection_the_upstream_closed_is_replaced(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            assert (await http.get("/services/up/close-idle?ms=20")).text == "ok"
            await trio.sleep(0.2)  # closed by the upstream, too recently to be checked
            first = await http.get("/services/up/echo")
            assert first.status_code == 200
            await trio.sleep(0.7)  # idle long enough to be checked before reuse
            second = await http.get("/services/up/echo")
            assert second.json()["peer_port"] == first.json()["peer_port"]
            # A POST is never sent twice, so its connection is checked before it is reused.
            assert (await http.get("/services/up/close-idle?ms=20")).text == "ok"
            await trio.sleep(0.2)
            response = await http.post("/services/up/echo", content=b"once")
            assert response.json()["body"] == "once"


async def test_ignored_requests_do_not_wake_the_backend_or_keep_it_awake(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service(
            idle_timeout="1s",
            activity={"ignore": {"paths": ["/health", "/status/*"],
                                 "user_agents": ["UptimeRobot"]}})})
        supervisor = gateway.supervisors["up"]
        async with client(gateway) as http:
            for path, agent in [("/health", "curl"), ("/status/200", "curl"),
                                ("/echo", "Mozilla/5.0 (compatible; UptimeRobot/2.0)")]:
                response = await http.get(f"/services/up{path}", headers={"User-Agent": agent})
                body = assert_error_body(response, 503, "backend_sleeping", "up")
                assert body["state"] == "sleeping"
                assert int(response.headers["retry-after"]) >= 1
            assert supervisor.starts == 0

            assert (await http.get("/services/up/echo")).status_code == 200
            for _ in range(5):  # while it runs, ignored requests are served like any other
                assert (await http.get("/services/up/health")).status_code == 200
            # They keep coming, and the backend still stops once idle: they are not use.
            while supervisor.state.name == "READY":
                await http.get("/services/up/health")
                await trio.sleep(0.05)
            await wait_for_state(gateway, "up", "COLD")
            assert supervisor.starts == 1
