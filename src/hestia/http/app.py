"""The Quart-Trio app: the `/v1` API and `/__health`, with the proxy in front of its routing.

`/services/…` requests go straight to `ProxyHandler` (installed as ASGI middleware on
`app.asgi_app`, Quart's documented hook), everything else through Quart's routing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio
from quart import Response, g, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..errors import (
    Conflict,
    GatewayError,
    HTTPProblem,
    NotFound,
    NotReloadable,
    RequestRejected,
    UnknownService,
    error_response,
)
from ..events import EventBus
from ..lifecycle.placement import Machines
from ..lifecycle.supervisor import State, Supervisor
from ..metrics import Metrics
from ..observability import request_id_from
from ..reload import Reloads
from ..routing.registry import Registry, default_registry
from ..routing.router import Route
from ..store import Store
from .addressing import Addressing
from .body import read_body
from .dashboard import dashboard_blueprint
from .dispatch import dispatch_blueprint
from .observe_api import observe_blueprint
from .openapi import openapi_blueprint
from .proxy import ProxyHandler
from .semaphore_api import semaphore_blueprint
from .status import service_status
from .waiting import waiting_blueprint
from .websocket import WebSocketProxy

__all__ = ["create_app"]



def create_app(supervisors: Mapping[str, Supervisor], machines: Machines | None = None, *,
               events: EventBus | None = None, metrics: Metrics | None = None,
               store: Store | None = None, shutdown: trio.Event | None = None,
               routes: Mapping[str, Route] | None = None,
               registry: Registry | None = None,
               addressing: Addressing | None = None,
               reloads: Reloads | None = None) -> QuartTrio:
    """The ASGI app serving the proxy and the API for these supervisors (each its own route
    unless `routes` says which serve which service). `supervisors` and `routes` are read at
    each request: a reload changes them in place. Without `reloads`, `POST /v1/reload` is
    409 `not_reloadable`."""
    machines = machines or Machines()
    if routes is None:
        routes = {name: Route(name, [(name, sup)]) for name, sup in supervisors.items()}
    registry = registry or default_registry()
    addressing = addressing or Addressing(routes)
    events = events or EventBus()
    metrics = metrics or Metrics(supervisors)
    app = QuartTrio("hestia", static_folder=None)
    # Quart's limit answers 413 without reading the body, which hangs the kept-alive
    # connection: API bodies are bounded by `read_body` instead, which drains (body.py).
    app.config["MAX_CONTENT_LENGTH"] = None
    app.json.sort_keys = False  # type: ignore[attr-defined]
    proxy = ProxyHandler(supervisors, metrics, routes, addressing)
    websockets = WebSocketProxy(supervisors, shutdown, routes, addressing)
    quart_asgi = app.asgi_app

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            # A service's (by path or host name), an unknown name under service_domain or a
            # name that is not the gateway's: the proxy's, which answers the last two 404 and
            # 403. The rest (the gateway's own host, and `/__hestia/` on every host) goes
            # through Quart's routing.
            address = addressing.resolve(scope)
            if address.proxied or address.unknown_host or address.foreign_host:
                await (proxy if kind == "http" else websockets)(scope, receive, send)
                return
        await quart_asgi(scope, receive, send)

    app.asgi_app = asgi  # type: ignore[method-assign]

    def supervisor_for(service_id: str) -> Supervisor:
        supervisor = supervisors.get(service_id)
        if supervisor is None:
            route = routes.get(service_id)
            if route is not None:
                ids = [sup.name for sup in route.backends.values()]
                raise RequestRejected(f"{service_id!r} has several backends: address one of "
                                      f"{', '.join(ids)}", service=service_id, backends=ids)
            raise UnknownService(f"no service named {service_id!r}", service=service_id,
                                 services=sorted(routes))
        return supervisor

    app.register_blueprint(semaphore_blueprint(supervisor_for, supervisors))
    app.register_blueprint(observe_blueprint(events, metrics, store))
    app.register_blueprint(dispatch_blueprint(proxy))
    app.register_blueprint(openapi_blueprint())
    app.register_blueprint(waiting_blueprint(supervisors, routes, addressing, events))
    app.register_blueprint(dashboard_blueprint(supervisors, routes, machines, addressing,
                                               events=events, store=store))

    @app.before_request
    async def _request_id() -> None:
        g.request_id = request_id_from(
            [(k.lower().encode("latin-1"), v.encode("latin-1"))
             for k, v in request.headers.items() if k.lower() == "x-request-id"])

    @app.before_request
    async def _bounded_body() -> None:
        # After `_request_id`, so that a 413 carries the id; before any route acts.
        await read_body()

    @app.after_request
    async def _echo_request_id(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.errorhandler(GatewayError)
    async def _gateway_error(error: GatewayError) -> tuple[bytes, int, list[Any]]:
        status, headers, body = error_response(error, g.get("request_id", ""))
        return body, status, [(k.decode(), v.decode()) for k, v in headers
                              if k not in (b"content-length", b"x-request-id")]

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> tuple[bytes, int, list[Any]]:
        # What the routing itself refuses, answered like every other error; `Allow` on a 405
        # is kept.
        headers = tuple((k.lower().encode("latin-1"), v.encode("latin-1"))
                        for k, v in error.get_headers()
                        if k.lower() not in ("content-type", "content-length"))
        return await _gateway_error(HTTPProblem(
            error.code or 500, (error.name or "error").lower().replace(" ", "_"),
            error.description or "", headers))

    @app.get("/__health")
    async def health() -> Response:
        return jsonify(status="ok", services=len(supervisors))

    @app.post("/v1/reload")
    async def reload_config() -> Response:
        """Raises `ConfigInvalid` (422), `RestartRequired` or `NotReloadable` (409)."""
        if reloads is None:
            raise NotReloadable("this app serves no gateway that could reload")
        result = await reloads.reload()
        if result.error is not None:
            raise result.error
        return jsonify(result.as_dict())

    @app.get("/v1/status")
    async def gateway_status() -> Response:
        last = reloads.last if reloads is not None else None
        return jsonify(configFile=reloads.source if reloads is not None else None,
                       services=len(routes), backends=len(supervisors),
                       lastReload=last.as_dict() if last is not None else None)

    @app.get("/v1/machines")
    async def list_machines() -> Response:
        return jsonify(machines=machines.status())

    @app.post("/v1/machines/<machine_id>/<action>")
    async def enable_machine(machine_id: str, action: str) -> tuple[Response, int]:
        if action not in ("enable", "disable") or machine_id not in machines:
            detail = (f"no machine named {machine_id!r}" if machine_id not in machines
                      else f"unknown action {action!r}: enable or disable")
            raise NotFound(detail)
        changed = machines.set_enabled(machine_id, action == "enable")
        if changed:
            events.publish("machine", None, machine=machine_id, enabled=action == "enable")
        status = next(m for m in machines.status() if m["machineId"] == machine_id)
        return jsonify(**status, changed=changed), 200

    @app.get("/v1/services")
    async def list_services() -> Response:
        return jsonify(services=[service_status(sup) for sup in supervisors.values()])

    @app.get("/v1/services/<service_id>/status")
    async def get_status(service_id: str) -> Response:
        route = routes.get(service_id)
        if route is not None and route.single is None:
            return jsonify({**route.status(), "backends": [
                {**b, "status": service_status(route.backends[b["name"]])}
                for b in route.status()["backends"]]})
        return jsonify(service_status(supervisor_for(service_id)))

    @app.get("/v1/strategies")
    async def strategies() -> Response:
        return jsonify(strategies=registry.describe(),
                       services=[r.status() for r in routes.values() if r.single is None])

    @app.post("/v1/services/<service_id>/start")
    async def start_service(service_id: str) -> tuple[Response, int]:
        supervisor = supervisor_for(service_id)
        if not supervisor.request_start():
            raise _conflict(supervisor, f"{service_id!r} is already {supervisor.state.name}")
        return jsonify(serviceId=service_id, state=State.STARTING.name, accepted=True), 202

    @app.post("/v1/services/<service_id>/stop")
    async def stop_service(service_id: str) -> tuple[Response, int]:
        supervisor = supervisor_for(service_id)
        if not supervisor.request_stop("api"):
            raise _conflict(supervisor, f"{service_id!r} is {supervisor.state.name}: "
                                        "nothing to stop")
        return jsonify(serviceId=service_id, state=State.STOPPING.name, accepted=True), 202

    return app


def _conflict(supervisor: Supervisor, detail: str) -> Conflict:
    return Conflict(detail, service=supervisor.name, state=supervisor.state.name)
