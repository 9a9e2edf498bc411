"""The health watch of a READY backend (`health:` in a service's configuration).

A mixin of `Supervisor` (lifecycle/supervisor.py), like `HoldQueue`: what it reads of its owner
is declared on the class. While READY, `_check_health` runs `readiness.watch_health`; when
`health.failures` probes in a row fail it records why and wakes the supervisor's task, which
calls `_stop_unhealthy`: the backend counts as crashed (stopped, then COLD, restarted after the
crash backoff).
"""

from __future__ import annotations

import trio

from ..config import ServiceConfig
from ..launchers.base import Running
from ..upstream import UpstreamPool
from .leases import State
from .readiness import Probe, watch_health

__all__ = ["HealthWatch"]


class HealthWatch:
    """`_check_health` and `_stop_unhealthy`; `Supervisor` inherits it."""

    # What it reads of its owner, the supervisor:
    name: str
    config: ServiceConfig
    probe: Probe
    pool: UpstreamPool
    _running: Running | None

    def __init__(self) -> None:
        self._unhealthy: str | None = None  # why the health check gave up on the backend

    def _notify(self) -> None: ...

    def _set_state(self, state: State) -> None: ...

    def _end_ready(self, running: Running, reason: str, status: int | None) -> float: ...

    def _restart_after_crash(self, ready_for: float) -> None: ...

    async def _check_health(self) -> None:
        """While READY: `health.failures` failed probes in a row make the backend count as
        crashed (stopped, then COLD)."""
        assert self.config.health is not None
        self._unhealthy = await watch_health(self.name, self.probe, self.config.health)
        self._notify()

    async def _stop_unhealthy(self) -> None:
        """READY → STOPPING → COLD for a backend that failed its health checks: taken off the
        clients in one step (no lease granted while it is being stopped), then stopped like a
        crash."""
        failures = self.config.health.failures if self.config.health else 0
        reason = (f"failed {failures} health checks in a row ({self._unhealthy}) and was "
                  "stopped")
        self._unhealthy = None
        running, self._running = self._running, None
        assert running is not None
        ready_for = self._end_ready(running, reason, None)
        self._set_state(State.STOPPING)
        with trio.CancelScope(shield=True):
            await running.stop()
        pool = self.pool
        self._set_state(State.COLD)
        self._restart_after_crash(ready_for)
        await pool.clear()
