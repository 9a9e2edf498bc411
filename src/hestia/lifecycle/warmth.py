"""What keeps a backend up besides requests: `keep_warm`, its schedule, and its dependents.

A mixin of `Supervisor` (lifecycle/supervisor.py), like `HoldQueue`: every step reads and
wakes the supervisor's own state, so it is written on the supervisor's side.

A backend is *held* while something other than a request needs it up: `"schedule"` while its
`keep_warm` schedule is open (from `lead` before each window), and the name of each backend
that `depends_on` it from the moment that one begins to start until it is COLD (or FAILED)
again. A held backend is treated as `keep_warm`: started when COLD, never stopped for idleness
nor evicted from its group, restarted after a crash. When the last hold goes, its idle timer
counts from that moment (or from the end of a request still in flight): a window's close and
a dependent's stop count as its last use.

`Supervisor(…, peers=…, now=…)`: `now` is the wall clock the schedule is read against (POSIX
seconds, default `time.time`; tests map it onto trio's virtual clock). Supervisors find each
other by id, at the time they need to, in `peers`, the mapping the gateway builds
(`build_supervisors`): its entries may be replaced at runtime, so no supervisor holds a
reference to another one.

Dependencies start in the order `depends_on` lists them, each READY before the next begins and
before the backend's own start; one that fails fails this start (`StartFailed`, reason
`dependency_failed`, naming it). A stop goes the other way: a backend that is held by
dependents asks them to stop and waits until they are COLD before it stops itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog
import trio

from ..config import ServiceConfig
from ..errors import GatewayError, StartCancelled, StartFailed
from ..schedule import Schedule
from .groups import Group
from .leases import State

__all__ = ["SCHEDULE", "Peer", "Warmth"]

log = structlog.get_logger("hestia.supervisor")

SCHEDULE = "schedule"  # the hold of an open `keep_warm` window
# A schedule's next change is re-checked at least this often, so that a jump of the wall
# clock (a suspend, a manual change) moves the next start by at most this much.
RECHECK_S = 60.0
# How long a stop waits, beyond its `drain_timeout`, for its dependents to stop first.
DEPENDENTS_STOP_S = 60.0


class Peer(Protocol):
    """What a backend sees of another (a `Supervisor`)."""

    name: str
    state: State
    starts_ended: int

    def hold(self, by: str) -> None: ...

    def unhold(self, by: str) -> None: ...

    def request_stop(self, reason: str = "api") -> bool: ...

    def start_outcome(self, ended_before: int) -> GatewayError | None | bool: ...

    async def wait_change(self) -> None: ...


class Warmth:
    """Holds, the schedule task, and the order of starts and stops between dependencies."""

    # What it reads of its owner, the supervisor:
    name: str
    state: State
    config: ServiceConfig
    group: Group | None
    drain_timeout: float
    _active: int
    _idle_since: float
    _closing: bool
    _stop_requested: str | None
    _failure: GatewayError | None
    _changed: trio.Event

    def _notify(self) -> None: ...

    def _emit(self, kind: str, **data: Any) -> None: ...

    def __init__(self, peers: Mapping[str, Peer] | None,
                 now: Callable[[], float] | None) -> None:
        self.schedule: Schedule | None = self.config.warm_schedule
        self.starts_ended = 0  # starts that ended without READY (failed or cancelled)
        self._last_start_error: GatewayError | None = None
        self._holds: set[str] = set()
        self._holding: list[str] = []  # the dependencies this backend holds up now
        self._peers: Mapping[str, Peer] = peers if peers is not None else {}
        self._now = now or time.time  # wall clock, POSIX seconds: the schedule's time
        self._schedule_open: bool | None = None  # what the schedule task last found
        self._schedule_swapped = trio.Event()  # a reload changed `schedule`

    @property
    def warm(self) -> bool:
        """Kept up whatever its idle timer says: `keep_warm: true`, or held."""
        return self.config.always_warm or bool(self._holds)

    @property
    def held_by(self) -> list[str]:
        """The backends that depend on this one and are up (or starting) now."""
        return sorted(h for h in self._holds if h != SCHEDULE)

    def schedule_status(self) -> dict[str, Any] | None:
        """The schedule, whether it holds the backend now, and its next change (POSIX time)."""
        if self.schedule is None:
            return None
        now = self._now()
        open_now, change = self.schedule.at(now)
        return {"open": open_now, "next_change": change, "lead": self.schedule.lead,
                "next_change_in": None if change is None else change - now}

    def hold(self, by: str) -> None:
        """Keep the backend up for `by` (`SCHEDULE`, or a dependent's name) until `unhold`."""
        if by not in self._holds:
            self._holds.add(by)
            self._notify()

    def unhold(self, by: str) -> None:
        if by not in self._holds:
            return
        self._holds.discard(by)
        if not self._holds and not self._active:
            # The idle timer counts from the end of the hold, not from a request hours ago.
            self._idle_since = max(self._idle_since, trio.current_time())
        self._notify()
        if self.group is not None:
            self.group.notify()  # it may be evictable now

    async def wait_change(self) -> None:
        await self._changed.wait()

    def start_outcome(self, ended_before: int) -> GatewayError | None | bool:
        """For a dependent waiting on this backend: None once it is READY, the error of a
        start that ended without READY after `ended_before` (or of the FAILED cool-down), or
        False while the answer is not known yet."""
        if self.state is State.READY and self._stop_requested is None:
            return None
        if self.state is State.FAILED and self._failure is not None:
            return self._failure
        if self.starts_ended > ended_before:
            return self._last_start_error or StartCancelled(
                f"the start of {self.name!r} ended", service=self.name)
        if self._closing:
            return StartCancelled("the gateway is shutting down", service=self.name)
        return False

    def _start_ended(self, error: GatewayError) -> None:
        self.starts_ended += 1
        self._last_start_error = error

    # --- dependencies ------------------------------------------------------------------------

    async def _start_dependencies(self) -> GatewayError | None:
        """Hold each dependency and wait until it is READY, in order. The error of this start
        when one of them failed (or is gone): it names the dependency."""
        for name in self.config.depends_on:
            peer = self._peers.get(name)
            if peer is None:
                return self._dependency_failed(name, f"{name!r} is not configured", None)
            ended_before = peer.starts_ended
            self._holding.append(name)
            peer.hold(self.name)
            while (outcome := peer.start_outcome(ended_before)) is False:
                await peer.wait_change()
            if outcome is not None:
                assert isinstance(outcome, GatewayError)
                return self._dependency_failed(name, outcome.detail, outcome.retry_after)
        return None

    def _dependency_failed(self, name: str, detail: str,
                           retry_after: float | None) -> GatewayError:
        error = StartFailed(f"{self.name!r} was not started: its dependency {name!r} failed to "
                            f"start: {detail}", service=self.name, reason="dependency_failed",
                            dependency=name, retry_after=max(1.0, retry_after or 1.0))
        log.error("backend_start_failed", service=self.name, detail=error.detail,
                  dependency=name)
        self._emit("start_failed", detail=error.detail, attempts=0, cancelled=False,
                   dependency=name)
        return error

    def _release_dependencies(self) -> None:
        """COLD or FAILED: this backend no longer needs its dependencies up."""
        holding, self._holding = self._holding, []
        for name in holding:
            peer = self._peers.get(name)
            if peer is not None:
                peer.unhold(self.name)

    def _stop_asked(self) -> None:
        """A stop was asked for (the API, an eviction): the schedule lets go until its next
        window opens, and the dependents are asked to stop first."""
        self._holds.discard(SCHEDULE)
        self._stop_dependents_soon()

    def _stop_dependents_soon(self) -> None:
        for name in self.held_by:
            peer = self._peers.get(name)
            if peer is not None:
                peer.request_stop("dependency_stopped")

    async def _stop_dependents(self) -> None:
        """Before this backend stops: its dependents stop first. A hold whose dependent is
        gone or already down (a reload replaced it) is dropped."""
        if not self.held_by:
            return
        log.info("stopping_dependents", service=self.name, dependents=self.held_by)
        self._stop_dependents_soon()
        with trio.move_on_after(self.drain_timeout + DEPENDENTS_STOP_S) as scope:
            while True:
                for name in self.held_by:
                    peer = self._peers.get(name)
                    if peer is None or peer.state in (State.COLD, State.FAILED):
                        self._holds.discard(name)
                if not self.held_by:
                    return
                await self._changed.wait()
        if scope.cancelled_caught:
            log.warning("dependents_not_stopped", service=self.name, dependents=self.held_by)

    # --- the schedule ------------------------------------------------------------------------

    def set_schedule(self, schedule: Schedule | None) -> None:
        """A reload changed `keep_warm`: the schedule task follows the new schedule (or none)
        from now, deciding afresh whether it holds the backend."""
        if schedule != self.schedule:
            self.schedule = schedule
            self._schedule_swapped.set()

    async def _follow_schedule(self) -> None:
        """Hold the backend while its schedule is open. Edge-triggered: a stop through the API
        inside a window lasts until the next window opens. Runs for the supervisor's life;
        without a schedule it waits for one (`set_schedule`)."""
        target: float | None = None  # the change slept until, if the sleep reached it
        while True:
            schedule = self.schedule
            if schedule is None:
                if self._schedule_open:
                    self.unhold(SCHEDULE)
                self._schedule_open = None
                await self._schedule_swapped.wait()
                self._schedule_swapped = trio.Event()
                continue
            at = self._now() if target is None else max(self._now(), target)
            open_now, change = schedule.at(at)
            if open_now != self._schedule_open:
                self._schedule_open = open_now
                if open_now:
                    log.info("schedule_opened", service=self.name, until=change)
                    self.hold(SCHEDULE)
                else:
                    log.info("schedule_closed", service=self.name, next_open=change)
                    self.unhold(SCHEDULE)
            wait = math.inf if change is None else change - at
            with trio.move_on_after(min(wait, RECHECK_S)):
                await self._schedule_swapped.wait()
                # A new schedule: decided afresh, as at start.
                self._schedule_swapped = trio.Event()
                self._schedule_open = None if self.schedule is not None else open_now
                target = None
                continue
            target = change if wait <= RECHECK_S else None
