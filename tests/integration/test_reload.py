"""Live reload with the real gateway and real upstream processes: SIGHUP, `POST /v1/reload`
and `Gateway.reload()` read the configuration file again and apply it backend by backend."""

from __future__ import annotations

import contextlib
import json
import signal
from typing import Any

import httpx
import pytest
import trio
import yaml

from hestia import Gateway, load_config, parse_config, run
from tests.recording_upstream import RecordingUpstream

from .conftest import (
    alive,
    assert_error_body,
    client,
    free_port,
    serve_file,
    upstream_service,
)


def rewrite(gateway: Gateway, change: Any) -> None:
    """Change the gateway's configuration file: `change(raw)` edits the parsed YAML."""
    path = gateway.config_file
    assert path is not None
    raw = yaml.safe_load(path.read_text())
    change(raw)
    path.write_text(yaml.safe_dump(raw))


async def pid_of(http: httpx.AsyncClient, service: str) -> int:
    response = await http.get(f"/services/{service}/echo")
    assert response.status_code == 200, response.text
    return response.json()["pid"]


async def test_a_reload_applies_each_backend_by_its_changes_without_losing_a_stream(
        start_gateway):
    with trio.fail_after(60):
        ports = {name: free_port() for name in ("keep", "change", "drop", "policy")}
        gateway = await start_gateway(services={
            name: upstream_service(port=port) for name, port in ports.items()})
        async with client(gateway) as http:
            pids = {name: await pid_of(http, name) for name in ports}
            async with http.stream("GET", "/services/keep/gated?key=k&n=2") as keep, \
                    http.stream("GET", "/services/change/gated?key=c&n=2") as change, \
                    http.stream("GET", "/services/drop/gated?key=d&n=2") as drop:
                streams = {"keep": keep.aiter_lines(), "change": change.aiter_lines(),
                           "drop": drop.aiter_lines()}
                for lines in streams.values():
                    assert await anext(lines) == '{"i": 0}'
                moved = free_port()

                def edit(raw: dict[str, Any]) -> None:
                    services = raw["services"]
                    del services["drop"]
                    services["change"] = upstream_service(port=moved)
                    services["policy"]["idle_timeout"] = "1h"
                    services["added"] = upstream_service()

                rewrite(gateway, edit)
                result = await gateway.reload()
                assert result.ok, result.as_dict()
                assert result.changes is not None
                assert result.changes.as_dict() == {
                    "added": ["added"], "removed": ["drop"],
                    "restarted": {"change": ["upstream"]},
                    "updated": {"policy": ["idle_timeout"]}, "unchanged": 1,
                    "topLevel": []}

                # Removed: no new request reaches it; the one in flight goes on.
                assert_error_body(await http.get("/services/drop/echo"), 404,
                                  "unknown_service", "drop")
                # Added: served at once.
                assert (await http.get("/services/added/echo")).status_code == 200
                # Policy: the same process, with the new setting.
                assert await pid_of(http, "policy") == pids["policy"]
                assert gateway.supervisors["policy"].config.idle_timeout == 3600
                # Every stream in flight completes, each from the process it began on.
                async with httpx.AsyncClient() as direct:
                    for name, key in (("keep", "k"), ("change", "c"), ("drop", "d")):
                        # The stream it releases is the last lease of "change" and "drop":
                        # their stop may cut this answer short.
                        with contextlib.suppress(httpx.TransportError):
                            await direct.get(
                                f"http://127.0.0.1:{ports[name]}/release?key={key}")
                for lines in streams.values():
                    assert [line async for line in lines] == ['{"i": 1}']

            # Unchanged: the same process throughout.
            assert await pid_of(http, "keep") == pids["keep"]
            # Launch fields changed: stopped once drained, started again with them.
            assert await pid_of(http, "change") != pids["change"]
            assert gateway.supervisors["change"].placement.port == moved
            assert not alive(pids["change"])
            # Removed: stopped once its request was done.
            with trio.fail_after(10):
                while alive(pids["drop"]):
                    await trio.sleep(0.02)
            assert "drop" not in gateway.supervisors

            event = [e for e in gateway.events.recent if e.kind == "config_reloaded"]
            assert [e.data["added"] for e in event] == [["added"]]
            status = (await http.get("/v1/status")).json()
            assert status["lastReload"]["ok"] is True
            assert status["lastReload"]["changes"]["removed"] == ["drop"]
            assert (status["services"], status["backends"]) == (4, 4)


async def test_an_invalid_file_changes_nothing_and_says_every_error(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            pid = await pid_of(http, "up")

            def edit(raw: dict[str, Any]) -> None:
                raw["services"]["up"]["queue"] = {"max": 0}
                raw["services"]["up"]["idel_timeout"] = "1m"
                raw["services"]["other"] = upstream_service()

            rewrite(gateway, edit)
            response = await http.post("/v1/reload")
            body = assert_error_body(response, 422, "config_invalid", None)
            assert sorted(e["path"] for e in body["errors"]) == [
                "services.up.idel_timeout", "services.up.queue.max"]
            assert await pid_of(http, "up") == pid
            assert sorted(gateway.supervisors) == ["up"]
            assert (await http.get("/services/other/echo")).status_code == 404
            last = (await http.get("/v1/status")).json()["lastReload"]
            assert (last["ok"], last["error"], len(last["errors"])) == (
                False, "config_invalid", 2)
            assert [e.kind for e in gateway.events.recent][-1] == "config_reload_failed"


async def test_a_bug_inside_a_reload_is_reported_and_the_gateway_goes_on(
        start_gateway, monkeypatch):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})

        def broken(*args: Any) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr("hestia.reloader.diff_configs", broken)
        async with client(gateway) as http:
            pid = await pid_of(http, "up")
            response = await http.post("/v1/reload")
            body = assert_error_body(response, 500, "internal_error", None)
            assert body["detail"].startswith(
                "the reload failed unexpectedly (RuntimeError: a bug)")
            # Still serving, and the next reload is taken.
            assert await pid_of(http, "up") == pid
            monkeypatch.undo()
            assert (await http.post("/v1/reload")).status_code == 200


async def test_a_removed_backend_gives_a_request_in_flight_the_grace_period_then_stops(
        start_gateway):
    with trio.fail_after(30):
        port = free_port()
        gateway = await start_gateway(services={"gone": upstream_service(port=port),
                                                "stay": upstream_service()})
        async with client(gateway) as http:
            pid = await pid_of(http, "gone")
            async with http.stream("GET", "/services/gone/gated?key=g&n=2") as stream:
                lines = stream.aiter_lines()
                assert await anext(lines) == '{"i": 0}'
                rewrite(gateway, lambda raw: raw["services"].pop("gone"))
                assert (await gateway.reload()).ok
                assert alive(pid)  # drained first
                with pytest.raises(httpx.RemoteProtocolError):
                    # Never released: the grace period (2 s) ends it, then the backend stops.
                    async for _ in lines:
                        pass
            with trio.fail_after(10):
                while alive(pid):
                    await trio.sleep(0.02)


async def test_a_gateway_without_a_file_says_it_cannot_reload(nursery, tmp_path):
    with trio.fail_after(30):
        config = parse_config({"listen": "127.0.0.1:0", "data_dir": str(tmp_path / "data")},
                              env={})
        gateway = await nursery.start(lambda task_status: run(
            config, handle_signals=False, task_status=task_status))
        async with client(gateway) as http:
            response = await http.post("/v1/reload")
            body = assert_error_body(response, 409, "not_reloadable", None)
            assert "built-in demo" in body["detail"]
        gateway.shutdown()


async def test_auth_turned_on_by_a_reload_guards_the_api_at_once(start_gateway, tmp_path):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            assert (await http.get("/v1/services")).status_code == 200
            rewrite(gateway, lambda raw: raw.update(auth={"enabled": True}))
            assert (await http.post("/v1/reload")).status_code == 200
            assert_error_body(await http.get("/v1/services"), 401, "unauthorized", None)
            key = (tmp_path / "data" / "cli.key").read_text().strip()
            assert (await http.get("/v1/services", headers={"X-API-Key": key})
                    ).status_code == 200


async def test_sighup_reloads_a_served_gateway_and_does_not_stop_it(tmp_path):
    with trio.fail_after(60):
        async with serve_file(tmp_path, upstream_service()) as served:
            path = tmp_path / "hestia.yml"
            raw = yaml.safe_load(path.read_text())
            async with httpx.AsyncClient(base_url=served.url) as http:
                pid = (await http.get("/services/up/echo")).json()["pid"]
                path.write_text("services: [not, a, mapping")
                served.process.send_signal(signal.SIGHUP)
                last = None
                while last is None:
                    await trio.sleep(0.05)
                    last = (await http.get("/v1/status")).json()["lastReload"]
                assert (last["ok"], last["error"]) == (False, "config_invalid")

                raw["services"]["more"] = upstream_service()
                path.write_text(yaml.safe_dump(raw))
                served.process.send_signal(signal.SIGHUP)
                while not last["ok"]:
                    await trio.sleep(0.05)
                    last = (await http.get("/v1/status")).json()["lastReload"]
                assert last["changes"]["added"] == ["more"]
                assert (await http.get("/services/more/echo")).status_code == 200
                assert (await http.get("/services/up/echo")).json()["pid"] == pid
                assert served.process.poll() is None
        logged = [json.loads(line) for line in served.stderr.splitlines()
                  if line.startswith("{")]
        failed = [e for e in logged if e.get("event") == "config_reload_failed"]
        assert len(failed) == 1 and failed[0]["errors"]
        assert [e["added"] for e in logged if e.get("event") == "config_reloaded"] == [
            ["more"]]


async def test_routing_settings_change_in_place_on_the_running_processes(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={
            "up": upstream_service(limits={"max_header_size": "4KiB"}),
            "duo": {**upstream_service(), "backends": {"a": {}, "b": {}}}})
        async with client(gateway) as http:
            pid = await pid_of(http, "up")
            big = {"X-Big": "x" * 20_000}
            assert_error_body(await http.get("/services/up/echo", headers=big), 431,
                              "headers_too_large", "up")
            assert (await http.get("/services/up/echo", headers={"Host": "up.example.net"})
                    ).status_code == 403

            def edit(raw: dict[str, Any]) -> None:
                raw["services"]["up"]["limits"] = {"max_header_size": "1MiB"}
                raw["services"]["up"]["hosts"] = ["up.example.net"]
                raw["services"]["duo"]["strategy"] = {"name": "least_inflight"}

            rewrite(gateway, edit)
            result = await gateway.reload()
            assert result.changes is not None
            assert result.changes.updated == {"up": ["limits", "hosts"],
                                              "duo": ["strategy"]}
            assert (await http.get("/services/up/echo", headers=big)).status_code == 200
            by_host = await http.get("/echo", headers={"Host": "up.example.net"})
            assert by_host.json()["pid"] == pid
            strategies = (await http.get("/v1/strategies")).json()["services"]
            assert [s["strategy"] for s in strategies] == ["least_inflight"]


async def test_webhooks_added_by_a_reload_hear_the_reload_and_what_follows(
        start_gateway, nursery):
    with trio.fail_after(30):
        receiver: RecordingUpstream = await nursery.start(RecordingUpstream().run)
        gateway = await start_gateway(machines={"spare": {}},
                                      services={"up": upstream_service()})
        rewrite(gateway, lambda raw: raw.update(notify=[
            {"url": f"http://127.0.0.1:{receiver.port}/hook"}]))
        async with client(gateway) as http:
            assert (await http.post("/v1/reload")).json()["changes"]["topLevel"] == ["notify"]
            await http.post("/v1/machines/spare/disable")
            while len(receiver.requests) < 2:
                await trio.sleep(0.01)
        kinds = [json.loads(r.body)["kind"] for r in receiver.requests]
        assert kinds == ["config_reloaded", "machine"]


async def test_a_listen_address_given_on_the_command_line_stays_across_reloads(
        nursery, tmp_path):
    with trio.fail_after(30):
        path = tmp_path / "hestia.yml"
        path.write_text(yaml.safe_dump({"listen": "127.0.0.1:1", "data_dir": str(tmp_path),
                                        "services": {"up": upstream_service()}}))
        # As `hestia serve -c hestia.yml --listen 127.0.0.1:0` does.
        config = load_config(path, env={}).model_copy(update={"listen": "127.0.0.1:0"})
        gateway = await nursery.start(lambda task_status: run(
            config, handle_signals=False, task_status=task_status))
        rewrite(gateway, lambda raw: raw["services"].update(more=upstream_service()))
        result = await gateway.reload()
        assert result.ok, result.as_dict()
        assert result.changes is not None and result.changes.added == ["more"]
        rewrite(gateway, lambda raw: raw.update(listen="127.0.0.1:2"))
        assert (await gateway.reload()).ok  # the command line's address still wins
        gateway.shutdown()


async def test_reloads_asked_for_at_once_run_one_after_the_other(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"up": upstream_service()})
        rewrite(gateway, lambda raw: raw["services"].update(more=upstream_service()))
        results: list[Any] = []

        async def reload() -> None:
            results.append(await gateway.reload())

        async with trio.open_nursery() as both:
            both.start_soon(reload)
            both.start_soon(reload)
        assert [(r.changes.added, r.changes.unchanged) for r in results] == [
            (["more"], 1), ([], 2)]
