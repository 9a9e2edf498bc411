"""`POST /v1/requests`: a request described as JSON, through the real proxy."""

from __future__ import annotations

import base64
import hashlib
import json

import trio

from tests.integration.conftest import assert_error_body, client, upstream_service


async def test_a_described_request_is_proxied_through_a_cold_start(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            response = await http.post("/v1/requests", json={
                "serviceId": "up", "method": "POST", "path": "/echo/x?a=1",
                "headers": {"X-Trace": "t-1"}, "body": "hello"},
                headers={"X-Request-ID": "dispatch-1"})
            assert response.status_code == 200
            answer = response.json()
            assert answer["status"] == 200 and answer["bodyEncoding"] == "utf-8"
            echoed = json.loads(answer["body"])
            assert (echoed["method"], echoed["path"], echoed["body"]) == (
                "POST", "/echo/x?a=1", "hello")
            sent = dict((k.lower(), v) for k, v in echoed["headers"])
            assert sent["x-trace"] == "t-1" and sent["x-request-id"] == "dispatch-1"
            assert ["x-request-id", "dispatch-1"] in answer["headers"]

            binary = await http.post("/v1/requests", json={
                "serviceId": "up", "method": "PUT", "path": "/upload",
                "body": base64.b64encode(bytes(range(256))).decode(), "bodyEncoding": "base64"})
            assert json.loads(binary.json()["body"])["sha256"] == \
                hashlib.sha256(bytes(range(256))).hexdigest()
            raw = await http.post("/v1/requests", json={"serviceId": "up",
                                                         "path": "/bytes?n=300"})
            assert raw.json()["bodyEncoding"] == "base64"
            assert base64.b64decode(raw.json()["body"]) == bytes(range(256)) + bytes(range(44))


async def test_upstream_statuses_are_answers_and_hestia_errors_keep_their_codes(
        start_gateway):
    with trio.fail_after(30):
        broken = upstream_service("--fail-start", "3", startup={"cooldown": 0})
        gateway = await start_gateway(services={"up": upstream_service(), "broken": broken})
        async with client(gateway) as http:
            upstream_404 = await http.post("/v1/requests", json={"serviceId": "up",
                                                                  "path": "/status/404"})
            assert upstream_404.status_code == 200
            assert upstream_404.json()["status"] == 404
            unknown = await http.post("/v1/requests", json={"serviceId": "nope"})
            assert_error_body(unknown, 404, "unknown_service", "nope")
            failed = await http.post("/v1/requests", json={"serviceId": "broken"})
            body = assert_error_body(failed, 503, "start_failed", "broken")
            assert body["exit_status"] == 3 and failed.headers["retry-after"]
            for bad in ({}, {"serviceId": "up", "path": "no-slash"},
                        {"serviceId": "up", "headers": ["x"]},
                        {"serviceId": "up", "body": "%%", "bodyEncoding": "base64"}):
                response = await http.post("/v1/requests", json=bad)
                assert response.status_code == 400, bad
                assert response.json()["error"] == "bad_request"
