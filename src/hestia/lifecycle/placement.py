"""Placements (where a backend can run) and machines (which of them are in rotation).

A backend has an ordered list of placements: the primary (the service's own `upstream`,
`launcher`, `machine`) and its `fallbacks`. A start tries each in order, each `startup.attempts`
times, skipping a placement whose machine is out of rotation: disabled by a person
(`POST /v1/machines/{id}/disable`), or skipped for `skip_for` after `max_failures` failed
attempts in a row on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import trio

from ..config import Config, MachineConfig, ReadinessConfig, ServiceConfig
from ..launchers.base import Launcher
from ..upstream import UpstreamPool
from .readiness import Probe

__all__ = ["Machines", "Placement"]


@dataclass(eq=False)
class Placement:
    machine: str
    upstream: str
    host: str
    port: int
    prefix: bytes
    launcher: Launcher
    probe: Probe
    readiness: ReadinessConfig
    pool: UpstreamPool = field(init=False)
    host_header: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.pool = UpstreamPool(self.host, self.port, tls=self.upstream.startswith("https:"))
        self.host_header = f"{self.host}:{self.port}".encode()

    def __repr__(self) -> str:
        return f"<Placement {self.machine} {self.kind} {self.upstream} {self.pool!r}>"

    @property
    def kind(self) -> str:
        """The launcher's kind: `process`, `semaphore`, …"""
        return self.launcher.kind

    @classmethod
    def primary(cls, service: ServiceConfig, launcher: Launcher, probe: Probe) -> Placement:
        return cls(service.machine, service.upstream, service.upstream_host,
                   service.upstream_port, service.upstream_prefix.encode(), launcher, probe,
                   service.readiness)


class _Machine:
    __slots__ = ("id", "config", "skips", "enabled", "failures", "skip_until", "last_failure")

    def __init__(self, machine_id: str, config: MachineConfig, skips: bool = True) -> None:
        self.id = machine_id
        self.config = config
        self.skips = skips  # the implicit `local` is never skipped: it is often the only one
        self.enabled = True
        self.failures = 0          # failed attempts in a row
        self.skip_until = 0.0      # trio clock
        self.last_failure: float | None = None  # wall clock


class Machines:
    """The machines of a configuration, and whether each is in rotation."""

    def __init__(self, config: Config | None = None) -> None:
        machines = dict(config.machines) if config is not None else {}
        self._machines = {mid: _Machine(mid, mc) for mid, mc in machines.items()}
        if "local" not in self._machines:
            self._machines["local"] = _Machine("local", MachineConfig(), skips=False)

    def __repr__(self) -> str:
        shown = []
        for machine in self._machines.values():
            why = self.unavailable(machine.id)
            shown.append(machine.id if why is None else
                         f"{machine.id}({'disabled' if not machine.enabled else 'skipped'})")
        return f"<Machines {' '.join(shown)}>"

    def __contains__(self, machine_id: str) -> bool:
        return machine_id in self._machines

    def unavailable(self, machine_id: str) -> str | None:
        """Why a start must not be tried on this machine now, or None."""
        machine = self._machines.get(machine_id)
        if machine is None:  # a reload removed it; a backend not yet moved off it asks
            return f"machine {machine_id!r} was removed from the configuration"
        if not machine.enabled:
            return f"machine {machine_id!r} is disabled"
        remaining = machine.skip_until - trio.current_time()
        if remaining > 0:
            return (f"machine {machine_id!r} is skipped for {remaining:.0f}s more after "
                    f"{machine.config.max_failures} failed starts in a row")
        return None

    def record(self, machine_id: str, *, ok: bool) -> None:
        machine = self._machines.get(machine_id)
        if machine is None:  # removed by a reload meanwhile: nothing to count
            return
        if ok:
            machine.failures = 0
            return
        machine.failures += 1
        machine.last_failure = time.time()
        if machine.skips and machine.failures >= machine.config.max_failures:
            machine.skip_until = trio.current_time() + machine.config.skip_for
            machine.failures = 0

    def reconfigure(self, config: Config) -> None:
        """A reloaded configuration's machines: a machine kept keeps whether a person disabled
        it and its failures in a row, with its new settings; new ones are added, gone ones
        removed (no backend names them any more: checked at load)."""
        current = self._machines
        self._machines = {}
        for mid, mc in config.machines.items():
            machine = current.get(mid) or _Machine(mid, mc)
            machine.config = mc
            self._machines[mid] = machine
        if "local" not in self._machines:
            local = current.get("local")
            if local is None or local.skips:  # it was declared: now implicit again
                local = _Machine("local", MachineConfig(), skips=False)
            self._machines["local"] = local

    def set_enabled(self, machine_id: str, enabled: bool) -> bool:
        """False when the machine was already so."""
        machine = self._machines[machine_id]
        if machine.enabled == enabled:
            return False
        machine.enabled = enabled
        if enabled:
            machine.skip_until = 0.0
        return True

    def status(self) -> list[dict[str, Any]]:
        return [{"machineId": m.id, "enabled": m.enabled, "available": self.unavailable(m.id)
                 is None, "reason": self.unavailable(m.id), "failuresInARow": m.failures,
                 "maxFailures": m.config.max_failures, "skipForS": m.config.skip_for}
                for m in self._machines.values()]
