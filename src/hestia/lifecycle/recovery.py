"""Recovery after a crash: what a killed Hestia left running is stopped, or adopted.

`gateway.run` calls `recover` before any supervisor runs and before the server listens. For each
record in `<data_dir>/run/` (launchers/registry.py), of services still configured or not:

- the record is **stale** when it is from another boot, its process is gone (or has ended and
  waits to be reaped), or its pid now names another process (the start time differs). The record
  is deleted (`recovery_record_stale`) and nothing is signalled.
- it is **in use** when the Hestia that wrote it still runs (two gateways on one `data_dir`):
  left alone (`recovery_record_in_use`), since that Hestia still owns the process.
- otherwise the process group is a leftover. It is **adopted** when its service says
  `on_restart: adopt`, its upstream and launcher configuration are what started it, and the
  readiness probe passes within `ADOPT_PROBE_WINDOW`: the supervisor starts READY with it
  (`backend_adopted_after_restart`). Else it is **stopped** like any backend: its stop signal to
  the group, SIGKILL after its stop timeout (`orphan_stopped`).

Nothing is ever signalled unless the recorded pid still names the recorded process (its start
time matches), or is free: a pid cannot be reused while a process group of that id has members,
so signalling the group right after its leader was seen gone reaches only what it left behind.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import structlog
import trio

from ..config import Config, ServiceConfig
from ..launchers.process import describe_exit, read_tail
from ..launchers.registry import (
    Record,
    boot_id,
    fingerprint,
    forget,
    is_alive,
    proc_stat,
    read_record,
    run_dir,
)
from .placement import Placement
from .readiness import poll_until
from .supervisor import Supervisor

__all__ = ["ADOPT_PROBE_WINDOW", "AdoptedRunning", "recover", "stop_group"]

log = structlog.get_logger("hestia.recovery")

ADOPT_PROBE_WINDOW = 5.0   # a leftover that is not ready this soon is stopped, not adopted
WAIT_POLL = 0.5            # an adopted process is not our child: no exit to wait for, only /proc
STOP_POLL = 0.05           # while stopping, a shorter poll keeps the stop prompt
KILL_WAIT = 5.0            # after SIGKILL; only a process stuck in the kernel takes this long


def _signal_group(record: Record, sig: signal.Signals) -> None:
    """Signal the recorded group, unless its pid now names another process."""
    stat = proc_stat(record.pid)
    if stat is not None and stat.start_time != record.start_time:
        return  # reused: whatever has this pid (and its group) is not ours
    try:
        os.killpg(record.pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_signal(record: Record) -> signal.Signals:
    try:
        return signal.Signals[record.stop_signal]
    except KeyError:  # a record from another platform or a hand-edited one
        return signal.SIGTERM


async def _until_gone(record: Record, timeout: float, poll: float) -> bool:
    """True once the recorded process has ended (or was never this pid's), within `timeout`."""
    with trio.move_on_after(timeout):
        while is_alive(record.pid, record.start_time):
            await trio.sleep(poll)
        return True
    return False


async def stop_group(record: Record) -> bool:
    """Stop a recorded group that is not our child: its stop signal, SIGKILL after its stop
    timeout (`process_kill`, as for our own children), then wait until it is gone. Returns
    whether it is gone. Bounded by the stop timeout plus `KILL_WAIT`; safe to shield.

    A process already gone when this is called is not signalled at all: its number may have
    been free for long, long enough to lead a stranger's group."""
    stat = proc_stat(record.pid)
    if stat is None or stat.start_time != record.start_time:
        return True
    if not stat.ended:
        _signal_group(record, _stop_signal(record))
        if not await _until_gone(record, record.stop_timeout, STOP_POLL):
            log.warning("process_kill", pid=record.pid, after_s=record.stop_timeout)
    # The leader was seen at most one poll ago (or is a zombie, which keeps its pid taken):
    # helpers it left in its group go too.
    _signal_group(record, signal.SIGKILL)
    return await _until_gone(record, KILL_WAIT, STOP_POLL)


class AdoptedRunning:
    """A backend left running by a previous Hestia, now supervised by this one. It is not our
    child: its end is seen by polling `/proc` (so its exit status is unknown), and it is always
    told from a process that reused its pid by its start time."""

    def __init__(self, record: Record, path: Path) -> None:
        self.record = record
        self.path = path
        self.pid: int | None = record.pid
        self.pgid = record.pgid

    def __repr__(self) -> str:
        alive = is_alive(self.record.pid, self.record.start_time)
        return f"<AdoptedRunning pid={self.pid} {'running' if alive else 'ended'}>"

    async def wait(self) -> int | None:
        while is_alive(self.record.pid, self.record.start_time):
            await trio.sleep(WAIT_POLL)
        # The leader is gone, at most one poll ago; whatever it left in its group goes too, as
        # for our own children.
        _signal_group(self.record, signal.SIGKILL)
        forget(self.path, self.record.pid, self.record.start_time)
        return None

    async def stop(self) -> None:
        if await stop_group(self.record):
            forget(self.path, self.record.pid, self.record.start_time)
        else:
            # Kept, so that the next start of Hestia tries again.
            log.warning("orphan_survived", service=self.record.service, pid=self.record.pid)

    def describe_exit(self, status: int | None) -> str:
        return describe_exit(status)

    def log_tail(self, lines: int = 20) -> list[str]:
        return read_tail(Path(self.record.log_path), self.record.log_offset, lines)


async def recover(config: Config, supervisors: dict[str, Supervisor]) -> None:
    """Deal with every record a previous Hestia left under `<data_dir>/run/`: delete stale ones,
    adopt or stop leftovers (see the module docstring). Leftovers are handled concurrently, so
    this takes at most about `ADOPT_PROBE_WINDOW` plus the largest stop timeout. Call it before
    the supervisors run. Never raises for a record or a process (problems are logged)."""
    directory = run_dir(config.data_dir)
    try:
        paths = sorted(directory.glob("*.json"))
        for tmp in directory.glob("*.json.tmp"):  # a write cut short by the crash
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("recovery_failed", path=str(directory), detail=exc.strerror or str(exc))
        return
    current_boot = boot_id()
    async with trio.open_nursery() as nursery:
        for path in paths:
            record = read_record(path)
            if record is None:
                _delete(path, service=path.stem, pid=None, reason="unreadable")
                continue
            reason = _stale(record, current_boot)
            if reason is not None:
                _delete(path, service=record.service, pid=record.pid, reason=reason)
            elif record.owner_start_time is not None and is_alive(record.owner_pid,
                                                                  record.owner_start_time):
                log.warning("recovery_record_in_use", service=record.service, pid=record.pid,
                            owner_pid=record.owner_pid, path=str(path))
            else:
                nursery.start_soon(_leftover, path, record, config.services.get(record.service),
                                   supervisors.get(record.service))


def _stale(record: Record, current_boot: str | None) -> str | None:
    """Why `record` names no process of ours any more, or None when it still does."""
    if record.boot_id is None or record.boot_id != current_boot:
        return "other_boot"
    stat = proc_stat(record.pid)
    if stat is None or stat.ended:
        return "process_gone"
    if stat.start_time != record.start_time:
        return "pid_reused"
    return None


def _delete(path: Path, *, service: str, pid: int | None, reason: str) -> None:
    log.info("recovery_record_stale", service=service, pid=pid, reason=reason)
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("recovery_forget_failed", path=str(path), detail=exc.strerror or str(exc))


async def _leftover(path: Path, record: Record, service: ServiceConfig | None,
                    supervisor: Supervisor | None) -> None:
    placement = (await _adoptable(record, service, supervisor)
                 if service is not None and supervisor is not None else None)
    if placement is not None:
        assert supervisor is not None
        supervisor.adopt(AdoptedRunning(record, path), placement)
        log.info("backend_adopted_after_restart", service=record.service, pid=record.pid,
                 recorded_at=record.recorded_at)
        return
    # Shielded like every stop: it is bounded, and a half-stopped group is worse than a late one.
    with trio.CancelScope(shield=True):
        gone = await stop_group(record)
    if gone:
        forget(path, record.pid, record.start_time)
        log.info("orphan_stopped", service=record.service, pid=record.pid,
                 configured=service is not None)
    else:
        log.warning("orphan_survived", service=record.service, pid=record.pid)


async def _adoptable(record: Record, service: ServiceConfig,
                     supervisor: Supervisor) -> Placement | None:
    """The placement the leftover runs as, when it is to be adopted; else None."""
    if service.on_restart != "adopt":
        return None
    # The leftover must be one of this backend's placements as configured now (primary or a
    # fallback): one of another configuration might pass the probe but is not this backend.
    configs = [service, *service.fallbacks]
    placement = next(
        (p for p, c in zip(supervisor.placements, configs, strict=True)
         if (record.launcher, record.upstream, record.machine, record.config) == (
             c.launcher.kind, c.upstream, c.machine,
             fingerprint(getattr(c.launcher, c.launcher.kind)))), None)
    if placement is None:
        log.info("recovery_not_adopted", service=record.service, pid=record.pid,
                 reason="configuration_changed")
        return None
    with trio.move_on_after(ADOPT_PROBE_WINDOW):
        # The placement's own probe, so that the status shows the result.
        await poll_until(placement.probe.check, cap=0.25)
        return placement if is_alive(record.pid, record.start_time) else None
    log.info("recovery_not_adopted", service=record.service, pid=record.pid,
             reason="not_ready", last_probe=placement.probe.last_result)
    return None
