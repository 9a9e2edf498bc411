"""The status of a service as the API shows it (`GET /v1/services/{id}/status` and friends)."""

from __future__ import annotations

import time
from typing import Any

from ..lifecycle.readiness import LOG_TAIL_LINES
from ..lifecycle.supervisor import State, Supervisor
from ..observability import iso_time

__all__ = ["automation_status", "service_status"]


def service_status(sup: Supervisor) -> dict[str, Any]:
    running = sup.running
    cooldown = sup.cooldown_remaining
    next_in = sup.next_attempt_in
    return {
        "serviceId": sup.name,
        "state": sup.state.name,
        "machineId": sup.placement.machine if running is not None else None,
        "launcher": sup.launcher_kind,
        "upstream": sup.placement.upstream,
        "placements": [{"machine": p.machine, "upstream": p.upstream, "launcher": p.kind}
                       for p in sup.placements],
        "readiness": {"probe": sup.probe.describe(), "ready": sup.state is State.READY,
                      "lastResult": sup.probe.last_result},
        "queuePending": sup.queue_pending,
        "inFlight": sup.in_flight,
        "connectionsInUse": sup.connections_in_use,
        "maxConnections": sup.config.max_connections,
        "lastUsed": iso_time(sup.last_used),
        "readySince": iso_time(sup.ready_since),
        "lastStartDurationMs": (None if sup.last_start_duration is None
                                else round(sup.last_start_duration * 1000, 1)),
        "expectedStartMs": (None if (expected := sup.history.expected()) is None
                            else round(expected * 1000)),
        "estimatedWaitMs": (None if (wait := sup.history.remaining()) is None
                            else round(wait * 1000)),
        "lastError": sup.last_error and {**sup.last_error, "at": iso_time(sup.last_error["at"])},
        "cooldownRemainingS": None if cooldown is None else round(cooldown, 3),
        "failuresInARow": sup.failures_in_a_row,
        "nextAttemptAt": None if next_in is None else iso_time(time.time() + next_in),
        "nextAttemptInS": None if next_in is None else round(next_in, 3),
        "group": sup.group.name if sup.group is not None else None,
        "idleTimeoutS": sup.config.idle_timeout,
        "keepWarm": sup.warm,
        "keepWarmSchedule": _schedule_status(sup),
        "dependsOn": list(sup.config.depends_on),
        "heldBy": sup.held_by,
        "pid": running.pid if running is not None else None,
        "starts": sup.starts,
        "logTail": running.log_tail(LOG_TAIL_LINES) if running is not None else
        (sup.last_error or {}).get("log_tail", []),
        "automation": automation_status(sup),
    }


def _schedule_status(sup: Supervisor) -> dict[str, Any] | None:
    """`keep_warm`'s schedule as written, whether it holds the backend up now (`lead` before
    a window included), and when that changes next (null: never)."""
    keep_warm = sup.config.keep_warm
    now = sup.schedule_status()
    if now is None or isinstance(keep_warm, bool):
        return None
    change = now["next_change"]
    return {"schedule": list(keep_warm.schedule), "timezone": keep_warm.timezone,
            "leadS": now["lead"], "open": now["open"], "nextChangeAt": iso_time(change),
            "nextChangeInS": None if change is None else round(now["next_change_in"], 3)}


def automation_status(sup: Supervisor) -> dict[str, Any]:
    """The `automation` block: the backend's Semaphore tasks, or `enabled: false`."""
    automated = [p for p in sup.placements if _automation(p.launcher) is not None]
    if not automated:
        return {"enabled": False, "provider": None, "machine_id": None, "current_task": None,
                "last_task": None, "tasks": []}
    placement = sup.placement if sup.placement in automated else automated[0]
    return _automation(placement.launcher).status(placement.machine)


def _automation(launcher: object) -> Any:
    return getattr(launcher, "automation", None)
