"""The start sequence of a supervisor: attempts over placements, with backoff, to READY or FAILED.

A mixin of `Supervisor` (lifecycle/supervisor.py), split out to keep both modules readable; its
methods run only in the supervisor's own task and use the supervisor's state freely.

One backoff serves both the attempts within a start and the restarts after failures in a row
(crashes, failed starts of a `keep_warm` backend): `restart_delay`, from `startup`'s `delay`,
`backoff` and `max_delay`.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import structlog
import trio

from ..config import StartupConfig
from ..errors import GatewayError, StartCancelled, StartFailed
from ..launchers.base import LaunchContext, Running
from .leases import State
from .readiness import LOG_TAIL_LINES, probe_once, until_ready

if TYPE_CHECKING:
    from .supervisor import Supervisor

__all__ = ["STABLE_AFTER", "StartSequence", "restart_delay"]

log = structlog.get_logger("hestia.supervisor")

# A backend READY this long has proved itself: its failures in a row are forgotten and its next
# crash restarts it at once. Long enough to catch a crash loop (a backend dying within seconds
# of becoming ready, or on its first requests, even after a start of a few tens of seconds);
# short enough that a backend crashing once an hour is always restarted without delay.
STABLE_AFTER = 60.0


def restart_delay(startup: StartupConfig, failures: int) -> float:
    """The wait after `failures` failures in a row: `delay × backoff^(failures-1)`, at most
    `max_delay` (none for 0). Attempt `n` of a start waits `restart_delay(startup, n - 1)`."""
    if failures <= 0 or startup.delay <= 0:
        return 0.0
    try:
        delay = startup.delay * startup.backoff ** (failures - 1)
    except OverflowError:  # a crash loop left alone for days
        delay = math.inf
    return min(startup.max_delay, delay)


class StartSequence:
    """`_start` and what it needs; `Supervisor` inherits it."""

    async def _start(self: Supervisor, nursery: trio.Nursery) -> None:
        """Try `startup.attempts` times with backoff: READY, or FAILED listing every attempt."""
        self._start_requested = False
        self._auto_start = False
        placements = [p for p in self.placements
                      if self._start_on is None or p.machine == self._start_on
                      ] or self.placements
        self._start_on = None
        self._exit = None
        self.starts += 1
        self._set_state(State.STARTING)
        self.history.begin()
        began = trio.current_time()
        startup = self.config.startup
        attempts: list[dict[str, Any]] = []
        running: Running | None = None
        with trio.CancelScope() as self._start_scope:
            if self.group is not None:
                await self.group.acquire(self)
            for placement in placements:
                skip = self.machines.unavailable(placement.machine)
                if skip is not None:
                    attempts.append({"attempt": 0, "machine": placement.machine,
                                     "launcher": placement.kind, "detail": skip,
                                     "reason": "machine_unavailable", "duration_ms": 0.0})
                    log.warning("placement_skipped", service=self.name,
                                machine=placement.machine, detail=skip)
                    continue
                self.placement = placement
                for number in range(1, startup.attempts + 1):
                    if number > 1:
                        await trio.sleep(restart_delay(startup, number - 1))
                    running = await self._attempt(number, attempts)
                    self.machines.record(placement.machine, ok=running is not None)
                    if running is not None:
                        break
                if running is not None:
                    break
        cancelled = self._start_scope.cancelled_caught
        self._start_scope = None
        duration = trio.current_time() - began
        if running is None or cancelled:
            self.history.end(None)
            await self._start_failed(attempts, duration, cancelled=cancelled)
            return
        self.history.end(duration)
        self.last_start_duration = duration
        self.ready_since = time.time()
        self._idle_since = self._ready_at = trio.current_time()
        nursery.start_soon(self._watch_exit, running)
        self._set_state(State.READY)
        log.info("backend_ready", service=self.name, start_duration_ms=round(duration * 1000, 1),
                 attempt=len(attempts) + 1, waiting=len(self._waiters), pid=running.pid)
        self._emit("ready", machine=self.placement.machine, attempts=len(attempts) + 1,
                   pid=running.pid, launcher=self.launcher_kind,
                   upstream=self.placement.upstream,
                   duration_ms=round(duration * 1000, 1))
        self._grant_waiters()

    async def _attempt(self: Supervisor, number: int,
                       attempts: list[dict[str, Any]]) -> Running | None:
        """One attempt: the started backend, or None with the failure added to `attempts`.
        On cancellation (a stop, the shutdown), `_running` still holds what was started."""
        placement = self.placement
        context = LaunchContext(self.service, self.backend, placement.upstream, placement.port,
                                placement.machine)
        timeout = placement.readiness.timeout
        began = trio.current_time()
        log.info("backend_starting", service=self.name, launcher=self.launcher_kind,
                 machine=placement.machine, attempt=number)
        running: Running | None = None
        try:
            with trio.fail_after(timeout) as deadline:
                if getattr(self.launcher, "times_its_start", False):
                    # A remote job bounds itself; readiness is timed from its end.
                    deadline.deadline = math.inf
                running = self._running = await self.launcher.start(context)
                deadline.deadline = min(deadline.deadline, trio.current_time() + timeout)
                if getattr(self.launcher, "probe_only", False):
                    await probe_once(self.name, self.probe)
                else:
                    await until_ready(self.name, running, self.probe)
            self._emit("start_attempt", attempt=number, machine=placement.machine,
                       launcher=self.launcher_kind, ok=True,
                       duration_ms=round((trio.current_time() - began) * 1000, 1))
            return running
        except trio.TooSlowError:
            failure: GatewayError = StartFailed(
                f"{self.name!r} was not ready after {timeout}s "
                f"(last probe: {self.probe.last_result or 'none'})",
                service=self.name, reason="timeout")
        except StartFailed as exc:
            failure = exc
        if running is not None:
            with trio.CancelScope(shield=True):
                await running.stop()
            failure.extra.setdefault("log_tail", running.log_tail(LOG_TAIL_LINES))
        failure.extra.setdefault("reason", "start_failed")
        self._running = None
        duration = trio.current_time() - began
        attempts.append({"attempt": number, "machine": placement.machine,
                         "launcher": self.launcher_kind, "detail": failure.detail,
                         "duration_ms": round(duration * 1000, 1), **failure.extra})
        log.warning("start_attempt_failed", service=self.name, machine=placement.machine,
                    attempt=number,
                    detail=failure.detail, duration_ms=round(duration * 1000, 1),
                    log_tail=failure.extra.get("log_tail"))
        self._emit("start_attempt", attempt=number, machine=placement.machine,
                   launcher=self.launcher_kind, ok=False, detail=failure.detail,
                   duration_ms=round(duration * 1000, 1))
        return None

    async def _start_failed(self: Supervisor, attempts: list[dict[str, Any]], duration: float, *,
                            cancelled: bool) -> None:
        """Every attempt failed, or the start was cancelled: answer the waiters, in one step
        with the state. A process left by an attempt cut short is stopped after that step,
        in STOPPING: a request arriving meanwhile waits for a fresh start, not for this one's
        error."""
        error: GatewayError
        if cancelled:
            error = StartCancelled(f"the start of {self.name!r} was cancelled",
                                   service=self.name, attempts=attempts)
        else:
            # The summary names the last real failure, not a machine that was skipped.
            last = next((a for a in reversed(attempts) if a["reason"] != "machine_unavailable"),
                        attempts[-1])
            plural = "s" if len(attempts) > 1 else ""
            error = StartFailed(
                f"{self.name!r} failed to start ({len(attempts)} attempt{plural}): "
                f"{last['detail']}", service=self.name, attempts=attempts,
                **{k: last[k] for k in ("reason", "exit_status", "log_tail") if k in last})
        error.retry_after = self.retry_after()
        self.last_error = {"at": time.time(), "error": error.code, "detail": error.detail,
                           **error.extra}
        (log.info if cancelled else log.error)(
            "backend_start_cancelled" if cancelled else "backend_start_failed",
            service=self.name, detail=error.detail, attempts=len(attempts),
            duration_ms=round(duration * 1000, 1))
        self._emit("start_failed", detail=error.detail, attempts=len(attempts),
                   cancelled=cancelled, duration_ms=round(duration * 1000, 1))
        startup = self.config.startup
        retry = not cancelled and not self._closing
        if retry:
            self._failures += 1
        if self.config.keep_warm and retry:
            self._auto_start = True
            self._retry_at = trio.current_time() + max(
                restart_delay(startup, self._failures), startup.cooldown)
        running, self._running = self._running, None
        if running is not None:  # cut short in the middle of an attempt
            self._set_state(State.STOPPING)
            self._fail_waiters(error)
            with trio.CancelScope(shield=True):
                await running.stop()
            self._set_state(State.COLD)
        elif not retry or startup.cooldown <= 0:
            self._set_state(State.COLD)
            self._fail_waiters(error)
        else:
            self._failed_until = trio.current_time() + startup.cooldown
            self._failure = error
            error.retry_after = startup.cooldown
            self._set_state(State.FAILED)
            self._fail_waiters(error)
