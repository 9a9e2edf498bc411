"""How a supervisor takes a reloaded configuration (the gateway's reload, reloader.py).

A mixin of `Supervisor` (lifecycle/supervisor.py), like `HoldQueue`: what it reads of its owner
is declared on the class. Every method is synchronous: it records what is wanted and wakes the
supervisor's task, which acts on it (`_take_next` runs there, when the backend is COLD).

- `update_policy`: only policy fields changed (reload.py: `SERVICE_FIELDS`); taken in place.
- `replace_launch`: launch fields changed; the backend is drained and stopped (reason
  `reload`), and the next start uses the new placements.
- `retire`: the backend was removed; it is drained, stopped, and its `run()` returns.
"""

from __future__ import annotations

import math
from typing import Any

import structlog
import trio

from ..config import ServiceConfig
from .groups import Group
from .leases import State
from .placement import Placement
from .startup import Backoff, StartSequence

__all__ = ["Reconfiguring"]

log = structlog.get_logger("hestia.supervisor")


class Reconfiguring:
    """`update_policy`, `replace_launch`, `retire`; `Supervisor` inherits it."""

    # What it reads of its owner, the supervisor:
    name: str
    state: State
    config: ServiceConfig
    group: Group | None
    placements: list[Placement]
    placement: Placement
    drain_timeout: float
    _cap: float
    _starting: StartSequence
    _backoff: Backoff
    _auto_start: bool
    _closing: bool
    _start_scope: trio.CancelScope | None
    _stop_requested: str | None
    _failure: Any
    _waiters: Any
    _active: int
    _idle_since: float
    set_schedule: Any  # warmth.py

    def __init__(self) -> None:
        self._closing_detail = "the gateway is shutting down"  # or "…was removed" (retire)
        self._retired = False
        self._next: tuple[ServiceConfig, list[Placement], Group | None] | None = None
        self._health_changed = False  # `health` changed: the watch starts again
        self.closed = trio.Event()  # run() has returned, its backend stopped

    def _notify(self) -> None: ...

    def _grant_waiters(self) -> None: ...

    def _set_state(self, state: State) -> None: ...

    def close(self) -> None: ...

    def update_policy(self, config: ServiceConfig, drain_timeout: float) -> None:
        """A reload changed only policy fields (reload.py: `SERVICE_FIELDS`): taken in place,
        by the next decision. The running backend, its leases and its waiters are untouched;
        a larger `max_connections` lets waiters in at once, and the health watch starts again
        with the new `health`."""
        old, self.config = self.config, config
        self.drain_timeout = drain_timeout
        if self._next is not None:  # an earlier reload's placements, still to be taken
            self._next = (config, *self._next[1:])
        self._cap = config.max_connections or math.inf
        self._starting.startup = self._backoff.startup = config.startup
        if config.keep_warm != old.keep_warm:
            self._auto_start = config.always_warm and not self._closing
            self.set_schedule(config.warm_schedule)
            if old.always_warm and not config.always_warm and not self._active:
                # As when a hold ends: idle from now, not from a request hours ago.
                self._idle_since = max(self._idle_since, trio.current_time())
            if self.group is not None:
                self.group.notify()  # it may be evictable now
        self._health_changed = config.health != old.health
        self._grant_waiters()
        self._notify()

    def replace_launch(self, config: ServiceConfig, placements: list[Placement],
                       group: Group | None, drain_timeout: float) -> None:
        """A reload changed launch fields: the backend is drained (in-flight requests get
        `drain_timeout`) and stopped, and its next start uses `placements` (at once for a
        `keep_warm` backend, else on the next request). Requests waiting for a start under
        way keep waiting, for the new one. COLD or FAILED: taken at once."""
        self.drain_timeout = drain_timeout
        self._next = (config, placements, group)
        if self.state is State.STARTING and self._start_scope is not None:
            self._start_scope.cancel()
        elif self.state is State.READY:
            self._stop_requested = "reload"
        self._notify()

    def _take_next(self) -> None:
        """COLD or FAILED with a launch change pending (`replace_launch`): take it."""
        assert self._next is not None
        config, placements, self.group = self._next
        self._next = None
        self.config = config
        self.placements = placements
        self.placement = placements[0]
        self._cap = config.max_connections or math.inf
        self._starting.startup = config.startup
        self._backoff = Backoff(config.startup)  # the old settings' failures are not these'
        self._auto_start = config.always_warm
        self.set_schedule(config.warm_schedule)
        self._failure = None
        if self.state is State.FAILED:
            self._set_state(State.COLD)
        log.info("backend_reconfigured", service=self.name, machine=self.placement.machine,
                 upstream=self.placement.upstream, waiting=len(self._waiters))

    def retire(self) -> None:
        """Removed from the configuration (a reload): waiters get 503, in-flight requests get
        `drain_timeout` to finish, then the backend is stopped and `run()` returns."""
        self._retired = True
        self._closing_detail = f"{self.name!r} was removed from the configuration"
        self.close()
