"""Services with several backends, through the real gateway and real backend processes."""

from __future__ import annotations

import json
import os
import signal
from functools import partial

import pytest
import trio

from hestia import ConfigError, parse_config, run
from tests.integration.conftest import (
    assert_error_body,
    client,
    upstream_service,
)


def backend(**fields: object) -> dict:
    """One backend of tests/upstream_app.py on a port of its own."""
    return upstream_service(**fields)


async def pid_of(http, path: str = "/services/llm/echo", **kwargs) -> int:
    response = await http.post(path, **kwargs) if "json" in kwargs else await http.get(path)
    assert response.status_code == 200, response.text
    return response.json()["pid"]


async def test_round_robin_alternates_between_two_backends(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"llm": {
            "backends": {"a": backend(), "b": backend()}, "strategy": {"name": "round_robin"}}})
        async with client(gateway) as http:
            pids = [await pid_of(http) for _ in range(6)]
            a, b = gateway.supervisors["llm@a"].pid, gateway.supervisors["llm@b"].pid
            assert a != b and pids == [a, b, a, b, a, b]
            routes = (await http.get("/v1/strategies")).json()["services"]
            decisions = {d["backend"]: d["count"] for d in routes[0]["decisions"]}
            assert decisions == {"a": 3, "b": 3}


async def test_by_model_routes_by_body_and_lists_models_without_waking_anything(
        start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(services={"llm": {
            "backends": {"llama": backend(), "mistral": backend()},
            "strategy": {"name": "by_model", "map": {"llama3:8b": "llama",
                                                     "mistral:7b": "mistral"},
                         "aliases": {"mistral": "mistral:7b"}}}})
        async with client(gateway) as http:
            models = (await http.get("/services/llm/v1/models")).json()
            assert {m["id"] for m in models["data"]} >= {"llama3:8b", "mistral:7b"}
            tags = (await http.get("/services/llm/api/tags")).json()
            assert {m["name"] for m in tags["models"]} >= {"llama3:8b", "mistral:7b"}
            assert all(s.state.name == "COLD" for s in gateway.supervisors.values())

            answer = await http.post("/services/llm/echo", json={"model": "mistral",
                                                                   "prompt": "hi"})
            assert answer.json()["pid"] == gateway.supervisors["llm@mistral"].pid
            assert json.loads(answer.json()["body"]) == {"model": "mistral", "prompt": "hi"}
            assert gateway.supervisors["llm@llama"].state.name == "COLD"
            unknown = await http.post("/services/llm/echo", json={"model": "gpt-9"})
            body = assert_error_body(unknown, 404, "unknown_model", "llm")
            assert "llama3:8b" in body["models"]


async def test_alternating_models_in_one_group_swap_and_none_fails(start_gateway):
    with trio.fail_after(60):
        gateway = await start_gateway(groups={"gpu": {"max_running": 1}}, services={"llm": {
            "group": "gpu",
            "backends": {"llama": backend(), "mistral": backend()},
            "strategy": {"name": "by_model", "map": {"llama3": "llama",
                                                     "mistral": "mistral"}}}})
        llama, mistral = gateway.supervisors["llm@llama"], gateway.supervisors["llm@mistral"]
        async with client(gateway) as http:
            for model in ["llama3", "mistral", "llama3", "mistral"]:
                pid = await pid_of(http, json={"model": model})
                running, other = (llama, mistral) if model == "llama3" else (mistral, llama)
                assert pid == running.pid
                assert other.state.name == "COLD"  # one GPU: the other was stopped first
            assert llama.starts == 2 and mistral.starts == 2


async def test_a_killed_backend_fails_over_then_recovers(start_gateway):
    with trio.fail_after(60):
        gateway = await start_gateway(services={"llm": {
            "backends": {"a": backend(), "b": backend()},
            "strategy": {"name": "round_robin", "unhealthy_for": "3s"}}})
        a, b = gateway.supervisors["llm@a"], gateway.supervisors["llm@b"]
        async with client(gateway) as http:
            assert [await pid_of(http) for _ in range(2)] == [a.pid, b.pid]
            dead = a.pid
            os.kill(dead, signal.SIGKILL)
            # Under load, every request is answered 200 (`pid_of` checks): those that reach
            # the dead backend are sent again, to b (or to a started afresh by a request that
            # had already picked it).
            pids: list[int] = []

            async def one() -> None:
                pids.append(await pid_of(http))

            async with trio.open_nursery() as load:
                for _ in range(16):
                    load.start_soon(one)
            assert len(pids) == 16 and dead not in pids
            assert set(pids) <= {b.pid, a.pid}
            await trio.sleep(3.1)  # past unhealthy_for: a is in rotation again
            later = [await pid_of(http) for _ in range(4)]
            assert a.pid in later and b.pid in later  # restarted, and served again


async def test_a_plugin_strategy_is_loaded_and_a_broken_one_stops_the_start(
        start_gateway, tmp_path, monkeypatch, nursery):
    plugins = tmp_path / "strategies"
    plugins.mkdir()
    (plugins / "always_last.py").write_text(
        "from hestia.routing import Decision, Strategy, eligible\n"
        "\n"
        "class AlwaysLast(Strategy):\n"
        "    name = 'always_last'\n"
        "    def pick(self, ctx, backends):\n"
        "        return Decision(eligible(backends)[-1].name, 'balance')\n"
        "\n"
        "def register_strategy(registry):\n"
        "    registry.register(AlwaysLast)\n")
    with trio.fail_after(30):
        gateway = await start_gateway(strategies_dir=str(plugins), services={"llm": {
            "backends": {"a": backend(), "b": backend()}, "strategy": {"name": "always_last"}}})
        async with client(gateway) as http:
            assert [await pid_of(http) for _ in range(2)] == [gateway.supervisors["llm@b"].pid] * 2
            described = (await http.get("/v1/strategies")).json()["strategies"]
            assert next(s for s in described if s["name"] == "always_last")["origin"].endswith(
                "always_last.py")
    config = parse_config({"listen": "127.0.0.1:0", "data_dir": str(tmp_path / "d1"),
                           "strategies_dir": str(plugins), "services": {"llm": {
                               "backends": {"a": backend(), "b": backend()},
                               "strategy": {"name": "always_last", "tie_break": "order"}}}},
                          env={})
    with pytest.raises(ConfigError) as caught:  # an option it does not take: not started
        await nursery.start(partial(run, config, handle_signals=False))
    assert caught.value.errors == [(
        "services.llm.strategy.tie_break", "unknown option 'tie_break': always_last takes no "
        "options; valid: name, max_body, unhealthy_for")]
    (plugins / "broken.py").write_text("def register_strategy(registry):\n"
                                       "    raise RuntimeError('no')\n")
    config = parse_config({"listen": "127.0.0.1:0", "data_dir": str(tmp_path / "d2"),
                           "strategies_dir": str(plugins)}, env={})
    with pytest.raises(ConfigError) as caught:
        await nursery.start(partial(run, config, handle_signals=False))
    assert f"{plugins / 'broken.py'}:2" in str(caught.value)
