"""Per-service limits (413, 431) and the event-stream header, through the real gateway."""

from __future__ import annotations

import trio

from tests.integration.conftest import assert_error_body, client, upstream_service


async def test_headers_over_the_limit_are_431_and_under_it_pass(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={
            "up": upstream_service(limits={"max_header_size": "8KiB"}),
            "roomy": upstream_service()})
        async with client(gateway) as http:
            response = await http.get("/services/up/echo", headers={"x-big": "a" * 9000})
            body = assert_error_body(response, 431, "headers_too_large", "up")
            assert body["limit"] == 8192
            assert gateway.supervisors["up"].state.name == "COLD"  # nothing was woken
            ok = await http.get("/services/up/echo", headers={"x-big": "a" * 7000})
            assert ok.status_code == 200
            # The default (64KiB) lets a 60 KB cookie through, and refuses 70 KB.
            ok = await http.get("/services/roomy/echo", headers={"cookie": "c" * 60_000})
            assert ok.status_code == 200
            big = await http.get("/services/roomy/echo", headers={"cookie": "c" * 70_000})
            assert_error_body(big, 431, "headers_too_large", "roomy")


async def test_a_body_over_the_limit_is_413_before_the_backend_wakes(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={
            "up": upstream_service(limits={"max_body_size": "1MiB"})})
        async with client(gateway) as http:
            response = await http.post("/services/up/upload", content=b"x" * (1024 * 1024 + 1))
            body = assert_error_body(response, 413, "body_too_large", "up")
            assert body["limit"] == 1024 * 1024
            assert gateway.supervisors["up"].state.name == "COLD"
            ok = await http.post("/services/up/upload", content=b"x" * (1024 * 1024))
            assert ok.json()["length"] == 1024 * 1024


async def test_a_chunked_body_is_counted_and_cut_off_at_the_limit(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={
            "up": upstream_service(limits={"max_body_size": "256KiB"})})

        async def body(blocks: int):
            for _ in range(blocks):
                yield b"y" * 65536

        async with client(gateway) as http:
            ok = await http.post("/services/up/upload", content=body(4))
            assert ok.json()["length"] == 4 * 65536
            response = await http.post("/services/up/upload", content=body(5))
            assert_error_body(response, 413, "body_too_large", "up")
            again = await http.get("/services/up/health")  # the gateway carries on
            assert again.status_code == 200


async def test_event_streams_tell_proxies_in_front_not_to_buffer(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            sse = await http.get("/services/up/stream?n=2&type=sse")
            assert sse.headers["x-accel-buffering"] == "no"
            ndjson = await http.get("/services/up/stream?n=2&type=ndjson")
            assert "x-accel-buffering" not in ndjson.headers
