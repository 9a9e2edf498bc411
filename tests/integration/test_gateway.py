"""The API, the `hestia` command, the built-in demo and shutdown, for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import trio

from .conftest import (
    alive,
    client,
    free_port,
    hestia_process,
    serve_file,
    stop_process,
    upstream_service,
    wait_for_state,
    wait_http,
)


async def test_the_api_shows_and_controls_services(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service(idle_timeout="1h")})
        async with client(gateway, headers={"X-Request-ID": "api-1"}) as http:
            health = await http.get("/__health")
            assert health.json() == {"status": "ok", "services": 1}
            assert health.headers["x-request-id"] == "api-1"

            listing = (await http.get("/v1/services")).json()["services"]
            assert [(s["serviceId"], s["state"]) for s in listing] == [("up", "COLD")]

            started = await http.post("/v1/services/up/start")
            assert started.status_code == 202
            assert started.json()["state"] == "STARTING"
            await wait_for_state(gateway, "up", "READY")
            again = await http.post("/v1/services/up/start")
            assert again.status_code == 409
            assert again.json()["error"] == "conflict"
            assert again.json()["request_id"] == "api-1"

            status = (await http.get("/v1/services/up/status")).json()
            assert status["serviceId"] == "up"
            assert status["state"] == "READY"
            assert status["machineId"] == "local"
            assert status["readiness"] == {"probe": "http GET /health", "ready": True,
                                           "lastResult": "HTTP 200"}
            assert (status["queuePending"], status["inFlight"]) == (0, 0)
            assert status["lastUsed"] is None
            assert status["lastStartDurationMs"] > 0
            assert any(line.startswith("listening ") for line in status["logTail"])

            await http.get("/services/up/echo")
            status = (await http.get("/v1/services/up/status")).json()
            assert status["lastUsed"].endswith("Z")

            stopped = await http.post("/v1/services/up/stop")
            assert stopped.status_code == 202
            await wait_for_state(gateway, "up", "COLD")
            assert (await http.post("/v1/services/up/stop")).status_code == 409

            missing = await http.get("/v1/services/nope/status")
            assert missing.status_code == 404
            assert missing.json()["error"] == "unknown_service"
            assert missing.json()["request_id"] == "api-1"
            unknown_route = await http.get("/v1/nothing")
            assert unknown_route.status_code == 404
            assert unknown_route.json()["request_id"] == "api-1"


async def test_sigterm_stops_the_gateway_and_leaves_no_process_behind(tmp_path):
    service = upstream_service("--ignore-sigterm", "--spawn-child")
    service["launcher"]["process"]["stop_timeout"] = "500ms"
    async with serve_file(tmp_path, service, grace_period="1s") as served:
        with trio.fail_after(60):
            async with httpx.AsyncClient(base_url=served.url) as http:
                pid = (await http.get("/services/up/echo")).json()["pid"]
            log = (tmp_path / "data" / "logs" / "up.log").read_text()
            child = int(log.split("child-pid ")[1].split()[0])
            assert alive(pid) and alive(child)
            served.process.send_signal(signal.SIGTERM)
            await served.wait_exit()
    assert served.process.returncode == 0, served.stderr
    assert not alive(pid)
    assert not alive(child)
    assert '"event": "backend_stopped"' in served.stderr
    assert '"reason": "shutdown"' in served.stderr
    # It ignored SIGTERM, so its process group got SIGKILL.
    assert '"event": "process_kill"' in served.stderr


async def test_repeated_signals_still_stop_every_backend(tmp_path):
    service = upstream_service("--ignore-sigterm")
    service["launcher"]["process"]["stop_timeout"] = "1s"
    async with serve_file(tmp_path, service) as served:
        with trio.fail_after(60):
            async with httpx.AsyncClient(base_url=served.url) as http:
                pid = (await http.get("/services/up/echo")).json()["pid"]
            for _ in range(3):
                served.process.send_signal(signal.SIGTERM)
                await trio.sleep(0.1)
            await served.wait_exit()
    assert served.process.returncode == 0, served.stderr
    assert not alive(pid)
    assert '"event": "gateway_stopping_now"' in served.stderr
    assert '"event": "gateway_already_stopping"' in served.stderr


async def test_the_built_in_demo_shows_the_whole_life_cycle(tmp_path):
    port, demo_port = free_port(), free_port()
    env = {**os.environ, "DEMO_UPSTREAM": f"http://127.0.0.1:{demo_port}",
           "DEMO_IDLE_TIMEOUT": "1s", "DEMO_START_DELAY": "0.2", "HOME": str(tmp_path)}
    gateway = hestia_process("serve", "--listen", f"127.0.0.1:{port}", "--log-format", "json",
                      env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        with trio.fail_after(60):
            await wait_http(f"{base}/__health")
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                hello = (await http.get("/services/demo/")).json()
                assert hello["hello"] == "from the demo service"

                async def chunks():
                    yield b"first "
                    yield b"second"

                # A chunked upload is read as such by the demo (it goes upstream chunked).
                echoed = (await http.post("/services/demo/echo", content=chunks())).json()
                assert (echoed["body"], echoed["headers"]["transfer-encoding"]) == (
                    "first second", "chunked")
                services = (await http.get("/v1/services")).json()["services"]
                assert services[0]["serviceId"] == "demo"
                assert services[0]["state"] == "READY"
                while (await http.get("/v1/services/demo/status")).json()["state"] != "COLD":
                    await trio.sleep(0.1)
            gateway.send_signal(signal.SIGINT)
            while gateway.poll() is None:
                await trio.sleep(0.05)
    finally:
        _, stderr = stop_process(gateway)
    assert gateway.returncode == 0, stderr
    events = [e for e in ("backend_starting", "backend_ready", "backend_stopped")
              if f'"event": "{e}"' in stderr]
    assert events == ["backend_starting", "backend_ready", "backend_stopped"]
    assert '"reason": "idle"' in stderr
    assert (tmp_path / ".local/share/hestia/logs/demo.log").exists()


def test_a_missing_configuration_file_is_a_clear_error():
    result = subprocess.run([sys.executable, "-m", "hestia", "check", "-c", "/nonexistent.yml"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "/nonexistent.yml" in result.stderr
    assert "cannot read" in result.stderr


def test_the_public_surface_is_sorted_and_complete():
    import hestia

    assert hestia.__all__ == sorted(hestia.__all__)
    public = {name for name in vars(hestia) if not name.startswith("_")}
    modules = {"config", "errors", "gateway", "lifecycle", "http", "launchers",
               "observability", "defaults", "cli", "demo", "launch_config", "semaphore",
               "events", "metrics", "notify", "store", "routing", "config_data",
                "private_files", "service_config", "sessions", "upstream", "caching",
                "schedule", "systemd", "cli_remote", "reload", "reloader", "config_env"}
    assert public - modules == set(hestia.__all__)


async def test_a_fallback_serves_when_the_primary_fails_and_machines_can_be_disabled(
        start_gateway):
    with trio.fail_after(30):
        backup = upstream_service()
        service = upstream_service("--fail-start", "3", startup={"cooldown": 0}, fallbacks=[
            {"machine": "backup", "upstream": backup["upstream"],
             "launcher": backup["launcher"]}])
        gateway = await start_gateway(machines={"backup": {}}, services={"up": service})
        async with client(gateway) as http:
            response = await http.get("/services/up/echo")
            assert response.status_code == 200
            status = (await http.get("/v1/services/up/status")).json()
            assert status["machineId"] == "backup"
            assert status["pid"] == response.json()["pid"]
            assert status["upstream"] == backup["upstream"]
            assert [p["machine"] for p in status["placements"]] == ["local", "backup"]

            disabled = await http.post("/v1/machines/backup/disable")
            assert (disabled.status_code, disabled.json()["enabled"]) == (200, False)
            await http.post("/v1/services/up/stop")
            await wait_for_state(gateway, "up", "COLD")
            response = await http.get("/services/up/echo")
            assert response.status_code == 503
            assert [(a["machine"], a["reason"]) for a in response.json()["attempts"]] == [
                ("local", "exited"), ("backup", "machine_unavailable")]
            machines = {m["machineId"]: m for m in
                        (await http.get("/v1/machines")).json()["machines"]}
            assert machines["backup"]["enabled"] is False
            assert machines["backup"]["reason"] == "machine 'backup' is disabled"
            assert (await http.post("/v1/machines/backup/enable")).json()["enabled"] is True
            assert (await http.get("/services/up/echo")).status_code == 200
            assert (await http.post("/v1/machines/nope/enable")).status_code == 404


async def test_two_services_in_an_exclusive_group_take_turns(start_gateway):
    with trio.fail_after(60):
        gateway = await start_gateway(groups={"gpu": {"max_running": 1}}, services={
            "llama": upstream_service(group="gpu"), "mistral": upstream_service(group="gpu")})
        async with client(gateway) as http:
            pids = []
            for name in ["llama", "mistral", "llama", "mistral"]:
                response = await http.get(f"/services/{name}/echo")
                assert response.status_code == 200
                pids.append(response.json()["pid"])
                running = [s for s, sup in gateway.supervisors.items()
                           if sup.state.name != "COLD"]
                assert running == [name]
                if len(pids) > 1:
                    assert not alive(pids[-2])  # the other one was stopped to make room
            assert len(set(pids)) == 4  # each turn is a fresh start
            status = (await http.get("/v1/services/mistral/status")).json()
            assert (status["group"], status["starts"]) == ("gpu", 2)


async def test_every_placement_failing_is_one_503_naming_each_attempt(start_gateway):
    with trio.fail_after(30):
        backup = upstream_service("--fail-start", "4")
        service = upstream_service("--fail-start", "3", startup={"attempts": 2, "delay": "50ms"},
                                   fallbacks=[{"machine": "backup",
                                               "upstream": backup["upstream"],
                                               "launcher": backup["launcher"]}])
        gateway = await start_gateway(machines={"backup": {}}, services={"up": service})
        async with client(gateway) as http:
            response = await http.get("/services/up/echo")
            assert response.status_code == 503
            body = response.json()
            assert [(a["machine"], a["attempt"], a["exit_status"]) for a in body["attempts"]] \
                == [("local", 1, 3), ("local", 2, 3), ("backup", 1, 4), ("backup", 2, 4)]
            assert all("fatal: simulated start failure" in a["log_tail"]
                       for a in body["attempts"])
            assert body["request_id"] == response.headers["x-request-id"]


async def test_keep_warm_restarts_after_a_crash_without_a_request(start_gateway):
    with trio.fail_after(30):
        # The restart waits startup.delay (the backoff, in virtual time in
        # tests/unit/test_crash_backoff.py), 100ms here.
        gateway = await start_gateway(services={"up": upstream_service(
            keep_warm=True, startup={"delay": "100ms"})})
        supervisor = gateway.supervisors["up"]
        await wait_for_state(gateway, "up", "READY")  # started at boot, no request
        first = supervisor.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        while supervisor.pid in (first, None) or supervisor.state.name != "READY":
            await trio.sleep(0.01)
        assert supervisor.starts == 2
        assert supervisor.last_error is not None
        assert supervisor.last_error["error"] == "backend_crashed"
