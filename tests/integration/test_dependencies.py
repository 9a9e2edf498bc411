"""`depends_on` with real processes: `app` depends on `db`, both tests/upstream_app.py.

`app`'s command first asks `db` for `/health` and exits 3 if that fails: it can only start
once `db` serves, as a real dependent would.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import trio

from hestia import Gateway
from hestia.http.openapi import openapi_document

from .conftest import UPSTREAM_APP, alive, client, free_port, upstream_service, wait_for_state
from .test_openapi import Spec

NEEDS_DB = ("import os, sys, urllib.request\n"
            "try:\n"
            "    urllib.request.urlopen(sys.argv[1], timeout=2).read()\n"
            "except OSError as exc:\n"
            "    sys.exit(f'db is not serving: {exc}')\n"
            "os.execv(sys.executable, [sys.executable, sys.argv[2]])\n")


def services(**app_fields: Any) -> dict[str, Any]:
    db_port = free_port()
    db = upstream_service(port=db_port, idle_timeout="200ms")
    app = upstream_service(depends_on=["db"], **app_fields)
    app["launcher"]["process"]["command"] = [
        sys.executable, "-c", NEEDS_DB, f"http://127.0.0.1:{db_port}/health", UPSTREAM_APP]
    return {"db": db, "app": app}


def record(gateway: Gateway) -> list[tuple[str, str, str]]:
    """(service, kind, state or stop reason) of every state change and stop from now on."""
    seen: list[tuple[str, str, str]] = []

    def listen(event: Any) -> None:
        if event.kind == "state":
            seen.append((event.service, "state", event.data["state"]))
        elif event.kind == "stopped":
            seen.append((event.service, "stopped", event.data["reason"]))

    gateway.events.add_listener(listen)
    return seen


async def test_a_request_starts_the_dependency_first_and_it_outlives_its_dependent(
        start_gateway):
    with trio.fail_after(60):
        gateway = await start_gateway(services=services(idle_timeout="1s"))
        events = record(gateway)
        async with client(gateway) as http:
            response = await http.get("/services/app/echo")
            assert response.status_code == 200, response.text
            status = (await http.get("/v1/services/db/status")).json()
            assert (status["state"], status["heldBy"]) == ("READY", ["app"])
        # db's idle timeout is 200ms, app's 1s: db goes only once app is down.
        await wait_for_state(gateway, "app", "COLD")
        await wait_for_state(gateway, "db", "COLD")
        assert events == [
            ("app", "state", "STARTING"),
            ("db", "state", "STARTING"), ("db", "state", "READY"),
            ("app", "state", "READY"),
            ("app", "state", "STOPPING"), ("app", "state", "COLD"), ("app", "stopped", "idle"),
            ("db", "state", "STOPPING"), ("db", "state", "COLD"), ("db", "stopped", "idle"),
        ]


async def test_stopping_the_dependency_stops_its_dependent_first(start_gateway):
    with trio.fail_after(60):
        gateway = await start_gateway(services=services(idle_timeout="5m"))
        async with client(gateway) as http:
            assert (await http.get("/services/app/echo")).status_code == 200
            pids = {name: gateway.supervisors[name].pid for name in ("app", "db")}
            events = record(gateway)
            assert (await http.post("/v1/services/db/stop")).status_code == 202
            await wait_for_state(gateway, "db", "COLD")
        assert [e for e in events if e[1] == "stopped"] == [
            ("app", "stopped", "dependency_stopped"), ("db", "stopped", "api")]
        assert gateway.supervisors["app"].state.name == "COLD"
        assert not alive(pids["app"]) and not alive(pids["db"])


async def test_a_dependency_that_cannot_start_fails_its_dependent_with_its_name(start_gateway):
    with trio.fail_after(60):
        broken = services()
        broken["db"] = upstream_service("--fail-start", "4", port=free_port())
        gateway = await start_gateway(services=broken)
        async with client(gateway) as http:
            response = await http.get("/services/app/echo")
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        body = response.json()
        assert (body["error"], body["reason"], body["dependency"]) == (
            "start_failed", "dependency_failed", "db")
        assert body["detail"].startswith(
            "'app' was not started: its dependency 'db' failed to start: 'db' failed to start")
        assert gateway.supervisors["app"].starts == 1
        assert gateway.supervisors["app"].pid is None


async def test_status_of_a_schedule_and_a_dependency_matches_the_document(start_gateway):
    spec = Spec(copy.deepcopy(openapi_document()))
    with trio.fail_after(60):
        both = services(idle_timeout="5m")
        # Open all week: started at boot, with its dependency.
        both["app"]["keep_warm"] = {"schedule": ["daily 00:00-24:00"], "timezone": "UTC"}
        gateway = await start_gateway(services=both)
        await wait_for_state(gateway, "app", "READY")
        async with client(gateway) as http:
            app = spec.check(await http.get("/v1/services/app/status"), 200)
            db = spec.check(await http.get("/v1/services/db/status"), 200)
        assert app["keepWarm"] is True
        assert app["keepWarmSchedule"] == {
            "schedule": ["daily 00:00-24:00"], "timezone": "UTC", "leadS": 20.0, "open": True,
            "nextChangeAt": None, "nextChangeInS": None}
        assert (app["dependsOn"], app["heldBy"]) == (["db"], [])
        assert (db["keepWarm"], db["keepWarmSchedule"], db["heldBy"]) == (True, None, ["app"])
