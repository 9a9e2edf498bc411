"""`GET /`: the dashboard for a browser, the gateway's index as JSON for everyone else.

A navigation (`browser.is_navigation`) gets a page rendered here from the same status the API
serves (`service_status`, `Machines.status`, the activity history), so it is complete without
JavaScript. `web/static/dashboard.js` then keeps it live from the `/v1` API and `/v1/events`,
and its buttons call `POST /v1/services/{id}/start|stop` and `/v1/machines/{id}/enable|disable`
like any API client (fetch with a JSON content type: the same-origin check lets them through).

The texts here (`summary`, `detail`, `idle`, `when`, `describe`, …) have twins in dashboard.js,
which recomputes them every second; change both together.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping
from typing import Any

import trio
from quart import Blueprint, Response, jsonify, request

from ..events import EventBus
from ..lifecycle.placement import Machines
from ..lifecycle.supervisor import State, Supervisor
from ..observability import iso_time
from ..routing.router import Route
from ..sessions import session_token
from ..store import Store
from .addressing import Addressing
from .browser import html_headers, is_navigation, render
from .context import facts
from .login import LOGOUT_PATH, is_https
from .status import service_status

__all__ = ["dashboard_blueprint"]

ACTIVITY_SHOWN = 30
API = ["/v1/services", "/v1/services/{id}/status", "/v1/services/{id}/start",
       "/v1/services/{id}/stop", "/v1/machines", "/v1/machines/{id}/disable",
       "/v1/machines/{id}/enable", "/v1/semaphore/status", "/v1/semaphore/start",
       "/v1/semaphore/stop", "/v1/events", "/v1/activity", "/v1/metrics", "/metrics",
       "/v1/requests", "/v1/strategies", "/v1/status", "/v1/reload", "/v1/openapi.json",
       "/__health"]


def dashboard_blueprint(supervisors: Mapping[str, Supervisor], routes: Mapping[str, Route],
                        machines: Machines, addressing: Addressing, *, events: EventBus,
                        store: Store | None = None) -> Blueprint:
    page = Blueprint("dashboard", __name__)

    @page.get("/")
    async def index() -> Response:
        # The answer depends on these: a cache must not hand the page to an API client.
        vary = {"Vary": "Accept, Sec-Fetch-Mode"}
        if not is_navigation(request.method, request.scope["headers"]):
            return jsonify(
                name="hestia",
                services={name: {"url": f"/services/{name}/",
                                 "state": route.single.state.name if route.single else None,
                                 "backends": [sup.name for sup in route.backends.values()]}
                          for name, route in routes.items()}, api=API), 200, vary
        services = [_service(sup, route, _link(addressing, name))
                    for name, route in routes.items() for sup in route.backends.values()]
        body = render("dashboard.html", now_ms=round(time.time() * 1000), services=services,
                      summary=summary([s["status"]["state"] for s in services]),
                      # Logged in from a browser (auth.py let the request in on its session).
                      key=facts(request.scope).key if session_token(
                          request.scope["headers"]) is not None else None,
                      logout=LOGOUT_PATH.decode(),
                      machines=_machines(machines, supervisors),
                      activity=await _activity(events, store))
        headers = {k.decode(): v.decode() for k, v in html_headers(body, "")
                   if k not in (b"content-length", b"x-request-id")}
        return Response(body, headers={**headers, **vary})

    return page


def _link(addressing: Addressing, service: str) -> str:
    """Where a person opens the service: its host name on this request's scheme and port,
    else its path route."""
    host = addressing.host_of(service)
    if host is None:
        return f"/services/{service}/"
    scheme = "https" if is_https(request.scope) else "http"
    _, colon, port = request.host.rpartition(":")  # `[::1]` alone leaves `1]`: no port
    suffix = f":{port}" if colon and port.isdigit() else ""
    return f"{scheme}://{host}{suffix}/"


def _service(sup: Supervisor, route: Route, url: str) -> dict[str, Any]:
    status = service_status(sup)
    since = None
    if sup.state is State.STARTING and sup.history.began is not None:
        since = time.time() - (trio.current_time() - sup.history.began)
    return {"id": sup.name, "service": route.service, "url": url,
            "backend": sup.backend if route.single is None else None,
            "status": status, "since_ms": None if since is None else round(since * 1000),
            "detail": detail(status, since), "machine": machine(status),
            "last_used": when(status["lastUsed"]), "idle": idle(status),
            "log": "\n".join(status["logTail"])}


def _machines(machines: Machines, supervisors: Mapping[str, Supervisor]) -> list[dict[str, Any]]:
    rows = []
    for m in machines.status():
        users = sorted({sup.name for sup in supervisors.values()
                        for p in sup.placements if p.machine == m["machineId"]})
        rows.append({**m, "services": users, "text": machine_state(m)})
    return rows


async def _activity(events: EventBus, store: Store | None) -> list[dict[str, Any]]:
    if store is not None:
        with trio.move_on_after(1):
            await store.flush()  # what was published before this request is on the page
        rows = [(r["at"], r["service"], r["kind"], r.get("detail") or {})
                for r in store.activity(None, ACTIVITY_SHOWN)]
    else:
        rows = [(e.at, e.service, e.kind, e.data) for e in reversed(events.recent)]
    return [{"at": iso_time(at), "clock": time.strftime("%H:%M:%S", time.localtime(at)),
             # The same key dashboard.js makes from an event's `at`, to skip it when it comes
             # again (from `/v1/activity` after a reconnection).
             "key": f"{kind}|{service or ''}|{int(at) * 1000 + int(at % 1 * 1000)}",
             "service": service, "kind": kind, "text": describe(kind, data),
             "minor": kind == "state"} for at, service, kind, data in rows[:ACTIVITY_SHOWN]]


# --- texts (twins in dashboard.js) ---------------------------------------------------------------

def duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def summary(states: list[str]) -> str:
    """`4 services: 1 ready, 1 starting, 2 cold`."""
    counts = [f"{states.count(s)} {s.lower()}"
              for s in ("READY", "STARTING", "STOPPING", "FAILED", "COLD") if s in states]
    n = len(states)
    return f"{n} service{'' if n == 1 else 's'}" + (f": {', '.join(counts)}" if counts else "")


def estimate(ms: float) -> str:
    return f"{ms / 1000:.1f} s" if ms < 10_000 else duration(ms / 1000)


def when(iso: str | None) -> str:
    if iso is None:
        return "never"
    ago = time.time() - _epoch(iso)
    if ago < 5:
        return "just now"
    if ago < 60:
        return f"{int(ago)} s ago"
    if ago < 3600:
        return f"{int(ago) // 60} min ago"
    return f"{duration(ago)} ago"


def detail(st: dict[str, Any], since: float | None = None) -> str:
    """One line on what the backend is doing and what comes next."""
    state = st["state"]
    if state == "COLD":
        wait = st["nextAttemptInS"]
        if wait:
            return (f"Cold after {st['failuresInARow']} failed in a row: next start in "
                    f"{duration(wait)}")
        return "Cold: starts again by itself" if st["keepWarm"] else \
            "Cold: starts on the next request"
    if state == "STARTING":
        expected = (f"usually ready in {estimate(st['expectedStartMs'])}"
                    if st["expectedStartMs"] is not None else "no earlier start to go by")
        if since is None:
            return f"Starting; {expected}"
        return f"Starting for {duration(time.time() - since)}; {expected}"
    if state == "READY":
        ready = st["readySince"]
        return "Ready" if ready is None else f"Ready for {duration(time.time() - _epoch(ready))}"
    if state == "STOPPING":
        return "Stopping"
    reason = (st["lastError"] or {}).get("detail") or "start failed"
    wait = st["cooldownRemainingS"]
    return f"Failed: {reason}" + (f" · requests refused for {duration(wait)} more" if wait else "")


def idle(st: dict[str, Any]) -> str:
    """When the idle timer stops the backend."""
    timeout = st["idleTimeoutS"]
    if st["keepWarm"]:
        return "never (kept warm)"
    if not timeout:
        return "never"
    if st["state"] != "READY":
        return f"after {duration(timeout)} idle"
    if st["inFlight"]:
        return f"paused while {st['inFlight']} in flight"
    since = max(_epoch(st["lastUsed"]), _epoch(st["readySince"]))
    left = since + timeout - time.time()
    return f"in {duration(left)}" if left >= 1 else "now"


def machine(st: dict[str, Any]) -> str:
    if st["machineId"] is not None:
        pid = f", pid {st['pid']}" if st["pid"] is not None else ""
        return f"{st['machineId']} ({st['launcher']}{pid})"
    return " → ".join(f"{p['machine']} ({p['launcher']})" for p in st["placements"])


def machine_state(m: dict[str, Any]) -> str:
    if not m["enabled"]:
        return "disabled"
    return "in rotation" if m["available"] else m["reason"]


def describe(kind: str, d: dict[str, Any]) -> str:
    """An activity entry in words."""
    if kind == "state":
        return f"{d.get('previous')} → {d.get('state')}"
    if kind == "start_attempt":
        took = f" in {estimate(d['duration_ms'])}" if d.get("duration_ms") is not None else ""
        if d.get("ok"):
            return f"attempt {d.get('attempt')} on {d.get('machine')} ready{took}"
        return f"attempt {d.get('attempt')} on {d.get('machine')} failed{took}: {d.get('detail')}"
    if kind == "ready":
        took = f" after {estimate(d['duration_ms'])}" if d.get("duration_ms") is not None else ""
        tries = f" ({d['attempts']} attempts)" if (d.get("attempts") or 1) > 1 else ""
        return f"ready on {d.get('machine')}{took}{tries}"
    if kind == "start_failed":
        if d.get("cancelled"):
            return "start cancelled"
        return f"start failed after {d.get('attempts')} attempt(s): {d.get('detail')}"
    if kind == "stopped":
        return f"stopped ({d.get('reason')})"
    if kind == "crashed":
        return f"crashed: {d.get('detail')} (exit status {d.get('exit_status')})"
    if kind == "queue_overflow":
        return f"queue full ({d.get('queue_max')}) while {d.get('state')}: request refused"
    if kind == "queue_timeout":
        return f"a request gave up after {d.get('waited_s')} s while {d.get('state')}"
    if kind == "semaphore_task":
        return f"Semaphore task {d.get('task_id')} ({d.get('action')}): {d.get('status')}"
    if kind == "config_reloaded":
        parts = [f"{len(d.get(k) or ())} {k}" for k in ("added", "removed", "restarted",
                                                        "updated") if d.get(k)]
        return "configuration reloaded: " + (", ".join(parts) or "no service changed")
    if kind == "config_reload_failed":
        return f"configuration reload refused: {d.get('detail')}"
    if kind == "machine":
        return f"machine {d.get('machine')} {'enabled' if d.get('enabled') else 'disabled'}"
    return kind.replace("_", " ")


def _epoch(iso: str | None) -> float:
    """An API timestamp (`iso_time`) as seconds since the epoch; 0 for None."""
    if iso is None:
        return 0.0
    whole, _, ms = iso.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(ms or 0) / 1000
