"""The waiting page's events stream and Retry, on the real gateway in front of real processes."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator

import httpx
import trio

from tests.integration.conftest import client, upstream_service, wait_for_state

FAILING = {"launcher": {"process": {"command": [
    sys.executable, "-c", "import sys; print('boom: no GPU found'); sys.exit(3)"]}},
    "startup": {"attempts": 2, "delay": "0.05s", "cooldown": "60s"}}


async def statuses(stream: httpx.Response) -> AsyncIterator[dict]:
    """The JSON of each message, keep-alive comments skipped."""
    async for line in stream.aiter_lines():
        if line.startswith("data: "):
            yield json.loads(line[len("data: "):])


async def test_the_stream_follows_a_start_and_ends_once_ready(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"slow": upstream_service("--start-delay", "1")})
        async with client(gateway) as http:
            async with http.stream("GET", "/__hestia/events/slow") as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
                assert stream.headers["cache-control"] == "no-store"
                seen = []
                async for status in statuses(stream):
                    seen.append(status)
                    if len(seen) == 1:
                        retried = await http.post("/__hestia/retry/slow")
                        assert retried.status_code == 202
            # The stream ended by itself after READY.
        states = [s["state"] for s in seen]
        assert states[0] == "COLD" and states[-1] == "READY"
        assert "STARTING" in states
        assert all(s["serviceId"] == "slow" for s in seen)
        starting = next(s for s in seen if s["state"] == "STARTING")
        assert starting["page"]["phase"] == "starting"
        assert starting["page"]["headline"].startswith("Starting slow.")
        assert seen[-1]["page"]["phase"] == "ready"


async def test_the_stream_of_a_ready_service_says_so_once_and_ends(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            assert (await http.get("/services/up/health")).status_code == 200
            async with http.stream("GET", "/__hestia/events/up") as stream:
                seen = [status async for status in statuses(stream)]
        assert [s["state"] for s in seen] == ["READY"]


async def test_a_failed_start_is_in_the_stream_in_words_and_retry_starts_again(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"bad": upstream_service(**FAILING)})
        supervisor = gateway.supervisors["bad"]
        async with client(gateway) as http:
            assert (await http.post("/__hestia/retry/bad")).status_code == 202
            await wait_for_state(gateway, "bad", "FAILED")
            async with http.stream("GET", "/__hestia/events/bad") as stream:
                seen = []
                async for status in statuses(stream):
                    seen.append(status)
                    if len(seen) == 1:
                        assert (await http.post("/__hestia/retry/bad")).status_code == 202
                    if status["state"] == "FAILED" and len(seen) > 1:
                        break
        failed = seen[0]["page"]
        assert seen[0]["state"] == "FAILED" and failed["phase"] == "failed"
        assert failed["failure"]["summary"].startswith(
            "Hestia tried 2 times to start it, and every attempt failed. "
            "The process exited with status 3.")
        assert failed["failure"]["logTail"] == ["boom: no GPU found"]
        assert "STARTING" in [s["state"] for s in seen]
        assert supervisor.starts == 2  # the retry skipped the minute of cool-down


async def test_the_page_scripts_and_styles_are_served_by_the_gateway(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            script = await http.get("/__hestia/static/waiting.js")
            assert script.headers["content-type"] == "text/javascript; charset=utf-8"
            assert "EventSource" in script.text
            style = await http.get("/__hestia/static/pages.css")
            assert "prefers-color-scheme: dark" in style.text
            assert (await http.get("/__hestia/static/..%2Fwaiting.py")).status_code == 404
