"""Exclusive groups: at most `max_running` members of a group hold a slot at once.

A member holds a slot from the moment its start begins until it is COLD (or FAILED) again. A
start in a full group waits for a slot; while it waits, the least recently used member that is
READY, idle (no request in flight) and not kept warm (`keep_warm`, an open schedule window, a
dependent that is up: `Supervisor.warm`) is asked to stop ("evicted"). A member
that is busy is never cut off: the start waits until it is idle, within the waiting requests'
own queue deadlines. Requests for an evicted member wait in its queue and start it again later,
which may in turn evict another: one GPU serving several models in turn.
"""

from __future__ import annotations

from typing import Protocol

import structlog
import trio

from ..config import ServiceConfig
from .leases import State

__all__ = ["Group", "Member"]

log = structlog.get_logger("hestia.groups")


class Member(Protocol):
    """What a group sees of a member (a `Supervisor`)."""

    name: str
    state: State
    config: ServiceConfig
    last_used: float | None

    @property
    def busy(self) -> bool: ...

    @property
    def warm(self) -> bool: ...

    @property
    def stop_pending(self) -> str | None: ...

    def request_stop(self, reason: str = "api") -> bool: ...


class Group:
    def __init__(self, name: str, max_running: int) -> None:
        self.name = name
        self.max_running = max_running
        self.holders: set[Member] = set()
        self._changed = trio.Event()

    def __repr__(self) -> str:
        return f"<Group {self.name} {len(self.holders)}/{self.max_running}>"

    def notify(self) -> None:
        """Something a waiting start cares about changed: a slot freed, a member went idle."""
        self._changed.set()
        self._changed = trio.Event()

    async def acquire(self, member: Member) -> None:
        """Wait for a slot for `member`, evicting an idle member when the group is full."""
        waiting_logged = False
        while len(self.holders) >= self.max_running:
            victim = self._victim()
            if victim is not None:
                log.info("group_evicting", group=self.name, service=member.name,
                         evicted=victim.name)
                victim.request_stop("evicted")
            elif not waiting_logged:
                log.info("group_waiting", group=self.name, service=member.name,
                         busy=sorted(m.name for m in self.holders))
                waiting_logged = True
            await self._changed.wait()
        self.holders.add(member)

    def release(self, member: Member) -> None:
        if member in self.holders:
            self.holders.discard(member)
            self.notify()

    def _victim(self) -> Member | None:
        idle = [m for m in self.holders
                if m.state is State.READY and not m.busy and not m.warm
                and m.stop_pending is None]
        return min(idle, key=lambda m: m.last_used or 0.0, default=None)
