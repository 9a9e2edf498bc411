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

from quart import Blueprint, Response, g, jsonify, request

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
        supervisor, machine, problem = await _target(supervisor_for)
        if problem is not None:
            return problem
        if not supervisor.request_start(machine):
            return _error(409, "conflict", f"{supervisor.name!r} is already "
                          f"{supervisor.state.name}", supervisor)
        return jsonify({**_view(supervisor), "state": State.STARTING.name, "accepted": True,
                        "machineId": machine}), 202

    @api.post("/stop")
    async def stop() -> tuple[Response, int]:
        supervisor, _, problem = await _target(supervisor_for, machine_allowed=False)
        if problem is not None:
            return problem
        if not supervisor.request_stop("api"):
            return _error(409, "conflict", f"{supervisor.name!r} is {supervisor.state.name}: "
                          "nothing to stop", supervisor)
        return jsonify({**_view(supervisor), "state": State.STOPPING.name,
                        "accepted": True}), 202

    return api


async def _target(supervisor_for: Callable[[str], Supervisor], machine_allowed: bool = True,
                  ) -> tuple[Any, str | None, tuple[Response, int] | None]:
    """The supervisor and machine a start/stop body names, or the 400 answer to give."""
    body = await json_body()
    if not isinstance(body, dict) or not isinstance(body.get("serviceId"), str):
        return None, None, _error(400, "bad_request",
                                  'the body must be JSON: {"serviceId": "…", "machineId": "…"}')
    supervisor = supervisor_for(body["serviceId"])  # 404 for an unknown service
    automated = [p.machine for p in supervisor.placements
                 if getattr(p.launcher, "automation", None) is not None]
    if not automated:
        return None, None, _error(400, "not_automated", f"{supervisor.name!r} has no "
                                  "semaphore placement", supervisor)
    machine = body.get("machineId") if machine_allowed else None
    if machine is not None and machine not in automated:
        return None, None, _error(400, "bad_request", f"{supervisor.name!r} has no semaphore "
                                  f"placement on machine {machine!r} (it has: "
                                  f"{', '.join(automated)})", supervisor)
    return supervisor, machine, None


def _view(supervisor: Supervisor) -> dict[str, Any]:
    return {"serviceId": supervisor.name, "state": supervisor.state.name,
            "automation": automation_status(supervisor)}


def _error(status: int, error: str, detail: str,
           supervisor: Supervisor | None = None) -> tuple[Response, int]:
    body: dict[str, Any] = {"error": error, "detail": detail,
                            "service": supervisor.name if supervisor is not None else None,
                            "request_id": g.get("request_id", "")}
    if supervisor is not None:
        body["state"] = supervisor.state.name
    return jsonify(body), status
