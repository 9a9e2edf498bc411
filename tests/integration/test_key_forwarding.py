"""A Hestia API key never reaches an upstream: not through a service with `auth: none`, not in a
second header, not through a WebSocket or `/v1/requests`. Only with
`auth.forward_authorization`, and only to a service that required the key, does it pass.

The upstream records what it received (tests/recording_upstream.py): the test reads the headers
as the upstream saw them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket_url

from tests.integration.conftest import client
from tests.integration.test_websocket import ws_service, ws_url
from tests.recording_upstream import RecordingUpstream

OTHER_KEY = "hestia_" + "o" * 43  # a key's shape, known to nobody


def recording(upstream: RecordingUpstream, **fields) -> dict:
    return {"upstream": f"http://127.0.0.1:{upstream.port}", "launcher": {"external": {}},
            "readiness": {"tcp": True}, "idle_timeout": 0, **fields}


@pytest.fixture
async def keyed(nursery, start_gateway, tmp_path: Path):
    async def start(**auth) -> tuple:
        upstream: RecordingUpstream = await nursery.start(RecordingUpstream().run)
        gateway = await start_gateway(
            auth={"enabled": True, **auth},
            services={"open": recording(upstream, auth="none"), "closed": recording(upstream),
                      "ws": ws_service(auth="none")})
        key = (tmp_path / "data" / "cli.key").read_text().strip()
        return gateway, upstream, key

    return start


def seen(upstream: RecordingUpstream) -> list[tuple[bytes, bytes]]:
    [request] = upstream.requests
    upstream.reset()
    return request.headers


def holds_a_key(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if b"hestia_" in v]


async def test_no_header_holding_a_key_reaches_an_auth_none_service(keyed):
    with trio.fail_after(30):
        gateway, upstream, key = await keyed()
        async with client(gateway) as http:
            for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"},
                            {"authorization": f"bearer   {key}"},
                            {"X-API-Key": key, "Authorization": f"Bearer {OTHER_KEY}"},
                            {"X-API-Key": OTHER_KEY}, {"Authorization": f"Token {key}"}):
                response = await http.get("/services/open/x", headers=headers)
                assert response.status_code == 200, headers
                assert holds_a_key(seen(upstream)) == [], headers


async def test_the_upstreams_own_credentials_still_pass(keyed):
    with trio.fail_after(30):
        gateway, upstream, key = await keyed()
        async with client(gateway) as http:
            response = await http.get("/services/open/x", headers={
                "Authorization": "Bearer sk-upstream-own", "X-API-Key": "upstream-key"})
            assert response.status_code == 200
            sent = seen(upstream)
            assert (b"authorization", b"Bearer sk-upstream-own") in sent
            assert (b"x-api-key", b"upstream-key") in sent
            # Hestia's key in one header, the upstream's token in the other: only the token.
            response = await http.get("/services/closed/x", headers={
                "X-API-Key": key, "Authorization": "Bearer sk-upstream-own"})
            assert response.status_code == 200
            sent = seen(upstream)
            assert holds_a_key(sent) == []
            assert (b"authorization", b"Bearer sk-upstream-own") in sent


async def test_a_second_key_in_another_header_is_stripped_too(keyed):
    with trio.fail_after(30):
        gateway, upstream, key = await keyed()
        async with client(gateway) as http:
            response = await http.get("/services/closed/x", headers={
                "X-API-Key": key, "Authorization": f"Bearer {OTHER_KEY}"})
            assert response.status_code == 200
            assert holds_a_key(seen(upstream)) == []


async def test_forward_authorization_passes_the_key_only_to_services_that_required_it(keyed):
    with trio.fail_after(30):
        gateway, upstream, key = await keyed(forward_authorization=True)
        async with client(gateway) as http:
            assert (await http.get("/services/closed/x",
                                   headers={"X-API-Key": key})).status_code == 200
            assert holds_a_key(seen(upstream)) == [(b"x-api-key", key.encode())]
            assert (await http.get("/services/open/x",
                                   headers={"X-API-Key": key})).status_code == 200
            assert holds_a_key(seen(upstream)) == []


async def test_a_key_never_reaches_the_upstream_through_v1_requests(keyed):
    with trio.fail_after(30):
        gateway, upstream, key = await keyed(forward_authorization=True)
        async with client(gateway, headers={"X-API-Key": key}) as http:
            response = await http.post("/v1/requests", json={
                "serviceId": "closed", "path": "/x",
                "headers": {"Authorization": f"Bearer {key}", "X-API-Key": OTHER_KEY}})
            assert (response.status_code, response.json()["status"]) == (200, 200)
            assert holds_a_key(seen(upstream)) == []


async def test_no_key_reaches_a_websocket_upstream(keyed):
    with trio.fail_after(30):
        gateway, _, key = await keyed()
        async with open_websocket_url(
                ws_url(gateway, "/services/ws/headers"),
                extra_headers=[("X-API-Key", key), ("Authorization", f"Bearer {OTHER_KEY}"),
                               ("Cookie", "a=b")]) as ws:
            headers = json.loads(await ws.get_message())
        names = {k.lower() for k, _ in headers}
        assert "cookie" in names
        assert [(k, v) for k, v in headers if "hestia_" in v] == []
