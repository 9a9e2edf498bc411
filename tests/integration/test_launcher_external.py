"""The `external` launcher: probed, never started or stopped."""

from __future__ import annotations

import os
import subprocess
import sys

import trio

from .conftest import UPSTREAM_APP, assert_error_body, client, free_port, wait_for_state


async def test_an_external_backend_is_only_probed(start_gateway):
    port = free_port()
    with trio.fail_after(30):
        gateway = await start_gateway(services={"ext": {
            "upstream": f"http://127.0.0.1:{port}", "launcher": {"external": {}},
            "readiness": {"http": "/health", "timeout": "60s"}, "idle_timeout": "300ms",
            "startup": {"cooldown": 0}}})
        async with client(gateway) as http:
            # One probe decides, well within this test's 30 s; a wait for readiness would take
            # 60 s (to the instant in tests/unit/test_external.py).
            response = await http.get("/services/ext/echo")
            body = assert_error_body(response, 503, "start_failed", "ext")
            assert body["reason"] == "unreachable"
            assert "not reachable" in body["detail"]

            # Started by someone else, not by Hestia.
            upstream = await trio.lowlevel.open_process(
                [sys.executable, UPSTREAM_APP, "--port", str(port)],
                stdout=subprocess.DEVNULL)
            try:
                while True:
                    try:
                        await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                        break
                    except OSError:
                        await trio.sleep(0.01)
                response = await http.get("/services/ext/echo")
                assert response.json()["pid"] == upstream.pid
                status = (await http.get("/v1/services/ext/status")).json()
                assert (status["state"], status["launcher"], status["pid"]) == (
                    "READY", "external", None)
                await wait_for_state(gateway, "ext", "COLD")  # idle: forgotten, not stopped
                os.kill(upstream.pid, 0)
                assert upstream.poll() is None
            finally:
                upstream.terminate()
                await upstream.wait()
