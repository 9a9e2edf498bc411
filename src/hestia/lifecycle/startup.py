"""How a supervisor starts its backend: attempts over placements, and the restart backoff.

Two collaborators of `Supervisor` (lifecycle/supervisor.py), which owns one of each, calls them
from its own task only, and keeps the backend's state to itself:

- `StartSequence` tries the placements in order, each `startup.attempts` times with backoff,
  and hands back the started backend, ready, or the failure that lists every attempt;
- `Backoff` counts failures in a row (failed starts, crashes) and says when the next start may
  begin, and how long FAILED lasts.

One backoff serves both the attempts within a start and the restarts after failures in a row
(crashes, failed starts of a `keep_warm` backend): `restart_delay`, from `startup`'s `delay`,
`backoff` and `max_delay`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import structlog
import trio

from ..config import StartupConfig
from ..errors import GatewayError, StartCancelled, StartFailed
from ..launchers.base import LaunchContext, Running
from .placement import Machines, Placement
from .readiness import LOG_TAIL_LINES, probe_once, until_ready

__all__ = ["STABLE_AFTER", "Backoff", "StartSequence", "restart_delay"]

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


class Backoff:
    """Failures in a row, and when the next start may begin (trio clock). It decides; the
    supervisor acts on what it says."""

    __slots__ = ("startup", "failures", "retry_at", "failed_until")

    def __init__(self, startup: StartupConfig) -> None:
        self.startup = startup
        self.failures = 0  # failed starts and crashes since it last stayed READY long enough
        self.retry_at = -math.inf  # no start but a person's before this
        self.failed_until = 0.0  # the end of FAILED's cool-down

    def __repr__(self) -> str:
        wait = self.next_attempt_in()
        return (f"<Backoff failures={self.failures}"
                f"{'' if wait is None else f' next_in={wait:.1f}s'}>")

    def next_attempt_in(self) -> float | None:
        """Seconds until the next start may begin; None: it may begin at once."""
        left = self.retry_at - trio.current_time()
        return left if left > 0 else None

    def cooldown_remaining(self) -> float:
        return max(0.0, self.failed_until - trio.current_time())

    def failures_now(self, ready_for: float | None) -> int:
        """The failures in a row, for a backend READY for `ready_for` seconds (None: not
        READY): one READY `STABLE_AFTER` has proved itself (the count is reset when READY
        ends)."""
        return 0 if ready_for is not None and ready_for >= STABLE_AFTER else self.failures

    def reset(self) -> None:
        """Stopped on purpose, or proved itself: what failed before is no longer in a row."""
        self.failures = 0
        self.retry_at = -math.inf

    def crashed(self, ready_for: float) -> float | None:
        """A backend READY for `ready_for` seconds crashed (or failed its health checks). One
        that stayed `STABLE_AFTER` may start again at once (None); one that crashed sooner is
        in a crash loop: the delay its next start waits, for the failures in a row so far."""
        if ready_for >= STABLE_AFTER:
            self.reset()
            return None
        self.failures += 1
        delay = restart_delay(self.startup, self.failures)
        self.retry_at = trio.current_time() + delay
        return delay

    def start_failed(self, *, keep_warm: bool) -> bool:
        """Every attempt of a start failed (it was not cancelled). A `keep_warm` backend's next
        start waits for the backoff, and at least the cool-down. Whether to be FAILED for the
        cool-down (else COLD at once)."""
        startup = self.startup
        self.failures += 1
        if keep_warm:
            self.retry_at = trio.current_time() + max(
                restart_delay(startup, self.failures), startup.cooldown)
        if startup.cooldown <= 0:
            return False
        self.failed_until = trio.current_time() + startup.cooldown
        return True


class StartSequence:
    """The attempts of one backend's starts: `begin`, then `run`, then `failure` if it failed.

    `attempts` lists the current (or last) start's attempts, each a dict for the status API;
    `running` is what the attempt under way has started, until the supervisor takes it over."""

    def __init__(self, name: str, service: str, backend: str, startup: StartupConfig,
                 machines: Machines, emit: Callable[..., None]) -> None:
        self.name = name
        self.service = service
        self.backend = backend
        self.startup = startup
        self.machines = machines
        self.emit = emit  # the supervisor's events, with its name
        self.attempts: list[dict[str, Any]] = []
        self.running: Running | None = None

    def __repr__(self) -> str:
        running = "" if self.running is None else f" running={self.running!r}"
        return f"<StartSequence {self.name} attempts={len(self.attempts)}{running}>"

    def begin(self) -> None:
        """A new start (its attempts are listed afresh: a new list, since an error of the last
        start may still hold the old one)."""
        self.attempts = []
        self.running = None

    async def run(self, placements: Sequence[Placement],
                  use: Callable[[Placement], None]) -> Running | None:
        """Try each placement in turn, `startup.attempts` times with backoff, skipping one whose
        machine is out of rotation; `use(placement)` before its first attempt. The started
        backend, ready, or None when every attempt failed. When cancelled (a stop, the
        shutdown), `running` holds what an attempt cut short had started."""
        startup = self.startup
        for placement in placements:
            skip = self.machines.unavailable(placement.machine)
            if skip is not None:
                self.attempts.append({"attempt": 0, "machine": placement.machine,
                                      "launcher": placement.kind, "detail": skip,
                                      "reason": "machine_unavailable", "duration_ms": 0.0})
                log.warning("placement_skipped", service=self.name, machine=placement.machine,
                            detail=skip)
                continue
            use(placement)
            for number in range(1, startup.attempts + 1):
                if number > 1:
                    await trio.sleep(restart_delay(startup, number - 1))
                running = await self._attempt(placement, number)
                self.machines.record(placement.machine, ok=running is not None)
                if running is not None:
                    return running
        return None

    async def _attempt(self, placement: Placement, number: int) -> Running | None:
        """One attempt: the started backend, or None with the failure added to `attempts`.
        On cancellation, `running` still holds what was started."""
        context = LaunchContext(self.service, self.backend, placement.upstream, placement.port,
                                placement.machine)
        launcher, probe, kind = placement.launcher, placement.probe, placement.kind
        timeout = placement.readiness.timeout
        began = trio.current_time()
        log.info("backend_starting", service=self.name, launcher=kind,
                 machine=placement.machine, attempt=number)
        running: Running | None = None
        try:
            with trio.fail_after(timeout) as deadline:
                if launcher.times_its_start:
                    # A remote job bounds itself; readiness is timed from its end.
                    deadline.deadline = math.inf
                running = self.running = await launcher.start(context)
                deadline.deadline = min(deadline.deadline, trio.current_time() + timeout)
                if launcher.probe_only:
                    await probe_once(self.name, probe)
                else:
                    await until_ready(self.name, running, probe)
            self.emit("start_attempt", attempt=number, machine=placement.machine,
                      launcher=kind, ok=True,
                      duration_ms=round((trio.current_time() - began) * 1000, 1))
            return running
        except trio.TooSlowError:
            failure: GatewayError = StartFailed(
                f"{self.name!r} was not ready after {timeout}s "
                f"(last probe: {probe.last_result or 'none'})",
                service=self.name, reason="timeout")
        except StartFailed as exc:
            failure = exc
        if running is not None:
            with trio.CancelScope(shield=True):
                await running.stop()
            failure.extra.setdefault("log_tail", running.log_tail(LOG_TAIL_LINES))
        failure.extra.setdefault("reason", "start_failed")
        self.running = None
        duration = trio.current_time() - began
        self.attempts.append({"attempt": number, "machine": placement.machine,
                              "launcher": kind, "detail": failure.detail,
                              "duration_ms": round(duration * 1000, 1), **failure.extra})
        log.warning("start_attempt_failed", service=self.name, machine=placement.machine,
                    attempt=number,
                    detail=failure.detail, duration_ms=round(duration * 1000, 1),
                    log_tail=failure.extra.get("log_tail"))
        self.emit("start_attempt", attempt=number, machine=placement.machine,
                  launcher=kind, ok=False, detail=failure.detail,
                  duration_ms=round(duration * 1000, 1))
        return None

    def failure(self, duration: float, *, cancelled: bool, retry_after: float) -> GatewayError:
        """The error that answers the waiters of a start that failed, or was cancelled, after
        `duration` seconds: every attempt listed, the last real failure in the summary (not a
        machine that was skipped). Logged, and published as `start_failed`."""
        attempts = self.attempts
        error: GatewayError
        if cancelled:
            error = StartCancelled(f"the start of {self.name!r} was cancelled",
                                   service=self.name, attempts=attempts)
        else:
            last = next((a for a in reversed(attempts) if a["reason"] != "machine_unavailable"),
                        attempts[-1])
            plural = "s" if len(attempts) > 1 else ""
            error = StartFailed(
                f"{self.name!r} failed to start ({len(attempts)} attempt{plural}): "
                f"{last['detail']}", service=self.name, attempts=attempts,
                **{k: last[k] for k in ("reason", "exit_status", "log_tail") if k in last})
        error.retry_after = retry_after
        (log.info if cancelled else log.error)(
            "backend_start_cancelled" if cancelled else "backend_start_failed",
            service=self.name, detail=error.detail, attempts=len(attempts),
            duration_ms=round(duration * 1000, 1))
        self.emit("start_failed", detail=error.detail, attempts=len(attempts),
                  cancelled=cancelled, duration_ms=round(duration * 1000, 1))
        return error
