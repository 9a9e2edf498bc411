"""Server-sent events and metrics from the real gateway."""

from __future__ import annotations

import json

import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import client, upstream_service


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_the_event_stream_delivers_a_starts_events_in_order(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service(),
                                                "other": upstream_service()})
        received: list[dict] = []
        async with client(gateway) as http:
            async with http.stream("GET", "/v1/events", params={"service": "up"}) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                lines = stream.aiter_lines()
                assert await anext(lines) == ": hestia events"
                assert (await http.get("/services/other/health")).status_code == 200
                assert (await http.get("/services/up/health")).status_code == 200
                event: dict[str, str] = {}
                async for line in lines:
                    if line:
                        key, _, value = line.partition(": ")
                        event[key] = value
                        continue
                    if event:
                        received.append({"id": int(event["id"]), "event": event["event"],
                                         **json.loads(event["data"])})
                        event = {}
                    if received and received[-1]["event"] == "ready":
                        break
        assert [(e["event"], e.get("state")) for e in received] == [
            ("state", "STARTING"), ("start_attempt", None), ("state", "READY"),
            ("ready", None)]
        assert all(e["service"] == "up" for e in received)
        assert [e["id"] for e in received] == sorted(e["id"] for e in received)
        assert received[1]["ok"] is True and received[1]["machine"] == "local"
        assert received[3]["duration_ms"] > 0


async def test_prometheus_metrics_count_requests_and_starts_by_service(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            for path in ("/services/up/health", "/services/up/health", "/services/up/nope"):
                await http.get(path)
            response = await http.get("/metrics")
            assert response.headers["content-type"].startswith("text/plain")
            values = samples(response.text)
            assert values[("hestia_requests_total", (("service", "up"), ("status", "200")))] == 2
            assert values[("hestia_requests_total", (("service", "up"), ("status", "404")))] == 1
            assert values[("hestia_starts_total", (("result", "ready"), ("service", "up")))] == 1
            assert values[("hestia_cold_start_seconds_count",
                           (("machine", "local"), ("service", "up")))] == 1
            assert values[("hestia_backend_state", (("service", "up"), ("state", "READY")))] == 1
            assert values[("hestia_backend_state", (("service", "up"), ("state", "COLD")))] == 0
            assert values[("hestia_queue_wait_seconds_count", (("service", "up"),))] == 1
            as_json = (await http.get("/v1/metrics")).json()
            requests = next(m for m in as_json["metrics"]
                            if m["name"] == "hestia_requests_total")
            ok = next(s for s in requests["samples"] if s["labels"] == {"service": "up",
                                                                        "status": "200"})
            assert ok["value"] == 2


async def test_an_open_event_stream_does_not_hold_up_a_graceful_shutdown(start_gateway):
    gateway = await start_gateway(services={"up": upstream_service()}, grace_period="20s")
    with trio.fail_after(10):  # well under the grace period
        async with client(gateway) as http:
            async with http.stream("GET", "/v1/events") as stream:
                lines = stream.aiter_lines()
                assert await anext(lines) == ": hestia events"
                gateway.shutdown()
                rest = [line async for line in lines]
        assert rest == [""]  # the stream ended cleanly, with nothing more to say
