"""`/v1/semaphore/…`: the Semaphore side of a backend, for people and scripts.

- `GET /v1/semaphore/status[?serviceId=ID]`: the `automation` block of one service, or of every
  service that has a `semaphore` placement.
- `POST /v1/semaphore/start` `{"serviceId": ID, "machineId": M?}`: start the service, on machine
  M's placement when given (202; 409 when already starting or running).
- `POST /v1/semaphore/stop` `{"serviceId": ID}`: stop it (202; 409 when there is nothing to stop).

The same `automation` block is part of `GET /v1/services/{id}/status`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from quart import Blueprint, Response, jsonify, request

from ..errors import Conflict, NotAutomated, RequestRejected
from ..lifecycle.supervisor import State, Supervisor
from .body import json_body
from .status import automation_status

__all__ = ["semaphore_blueprint"]


def semaphore_blueprint(supervisor_for: Callable[[str], Supervisor],
                        supervisors: Mapping[str, Supervisor]) -> Blueprint:
    api = Blueprint("semaphore", __name__, url_prefix="/v1/semaphore")

    @api.get("/status")
    async def status() -> Response:
        service_id = request.args.get("serviceId")
        if service_id is not None:
            return jsonify(_view(supervisor_for(service_id)))
        return jsonify(services=[_view(sup) for sup in supervisors.values()
                                 if automation_status(sup)["enabled"]])

    @api.post("/start")
    async def start() -> tuple[Response, int]:
        supervisor, machine = await _target(supervisor_for)
        if not supervisor.request_start(machine):
            raise Conflict(f"{supervisor.name!r} is already {supervisor.state.name}",
                           service=supervisor.name, state=supervisor.state.name)
        return jsonify({**_view(supervisor), "state": State.STARTING.name, "accepted": True,
                        "machineId": machine}), 202

    @api.post("/stop")
    async def stop() -> tuple[Response, int]:
        supervisor, _ = await _target(supervisor_for, machine_allowed=False)
        if not supervisor.request_stop("api"):
            raise Conflict(f"{supervisor.name!r} is {supervisor.state.name}: nothing to stop",
                           service=supervisor.name, state=supervisor.state.name)
        return jsonify({**_view(supervisor), "state": State.STOPPING.name,
                        "accepted": True}), 202

    return api


async def _target(supervisor_for: Callable[[str], Supervisor], machine_allowed: bool = True,
                  ) -> tuple[Supervisor, str | None]:
    """The supervisor and machine a start/stop body names. Raises `RequestRejected` (400),
    `NotAutomated` (400) or `UnknownService` (404)."""
    body = await json_body()
    if not isinstance(body, dict) or not isinstance(body.get("serviceId"), str):
        raise RequestRejected('the body must be JSON: {"serviceId": "…", "machineId": "…"}')
    supervisor = supervisor_for(body["serviceId"])  # 404 for an unknown service
    automated = [p.machine for p in supervisor.placements
                 if getattr(p.launcher, "automation", None) is not None]
    if not automated:
        raise NotAutomated(f"{supervisor.name!r} has no semaphore placement",
                           service=supervisor.name, state=supervisor.state.name)
    machine = body.get("machineId") if machine_allowed else None
    if machine is not None and machine not in automated:
        raise RequestRejected(f"{supervisor.name!r} has no semaphore placement on machine "
                              f"{machine!r} (it has: {', '.join(automated)})",
                              service=supervisor.name, state=supervisor.state.name)
    return supervisor, machine


def _view(supervisor: Supervisor) -> dict[str, Any]:
    return {"serviceId": supervisor.name, "state": supervisor.state.name,
            "automation": automation_status(supervisor)}
