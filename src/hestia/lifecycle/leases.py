"""What a supervisor hands out and tracks: its states, leases, and hold-queue waiters."""

from __future__ import annotations

import enum
import itertools
from typing import TYPE_CHECKING

import trio

from ..errors import GatewayError

if TYPE_CHECKING:
    from ..config import TimeoutsConfig
    from .placement import Placement

__all__ = ["Lease", "State"]


class State(enum.Enum):
    COLD = "COLD"
    STARTING = "STARTING"
    READY = "READY"
    STOPPING = "STOPPING"
    FAILED = "FAILED"


_serials = itertools.count(1)


class Lease:
    """Held by a request while it uses the backend. The supervisor can revoke it (the backend
    crashed or was stopped): `error` says why, and `scope`, the cancel scope its holder runs the
    work in, is cancelled. `serial` grows with every lease granted, so grant order can be seen.
    `counted`: it holds one of the backend's `max_connections` slots.

    It carries what its holder needs to use the backend: the `placement` it was granted on (the
    upstream, its pool, prefix and Host), which cannot change while a lease is held, and the
    backend's `timeouts`."""

    __slots__ = ("placement", "timeouts", "scope", "error", "serial", "passive", "counted")

    def __init__(self, placement: Placement, timeouts: TimeoutsConfig,
                 passive: bool = False) -> None:
        self.placement = placement
        self.timeouts = timeouts
        self.scope: trio.CancelScope | None = None
        self.error: GatewayError | None = None
        self.serial = next(_serials)
        self.passive = passive  # an ignored request (health checker): not use, not activity
        self.counted = False  # set by the supervisor that grants it

    def __repr__(self) -> str:
        # counted: holds a slot; active: in use without one (an open WebSocket); passive: not
        # use at all (an ignored request).
        kind = "passive" if self.passive else "counted" if self.counted else "active"
        ended = "" if self.error is None else f" revoked ({self.error.code})"
        return f"<Lease #{self.serial} {kind}{ended}>"

    def bind(self, scope: trio.CancelScope) -> None:
        """Run the holder's work in `scope`: a revocation, even an earlier one, cancels it."""
        self.scope = scope
        if self.error is not None:
            scope.cancel()

    def revoke(self, error: GatewayError) -> None:
        self.error = error
        if self.scope is not None:
            self.scope.cancel()


class _Waiter:
    __slots__ = ("event", "lease", "error")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.lease: Lease | None = None
        self.error: GatewayError | None = None

    def __repr__(self) -> str:
        outcome = (self.lease if self.lease is not None else
                   self.error.code if self.error is not None else "waiting")
        return f"<_Waiter {outcome}>"
