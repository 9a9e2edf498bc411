"""Lifecycle events: what the supervisors and launchers did, for everyone who wants to know.

The supervisor of each backend publishes an `Event` for every state change, start attempt,
start, stop, crash and queue overflow; the Semaphore launcher one for every task. Publishing is
synchronous and never blocks (a plain method, safe to call from the supervisor's decisions):

- *listeners* (metrics, the store) are called inline, in the order they were added; they must be
  cheap and must not raise (an exception is logged and swallowed, so a broken listener never
  breaks a supervisor);
- *subscribers* (`GET /v1/events`, webhooks) each get a bounded channel; a subscriber that falls
  `maxsize` events behind is cut off (its channel is closed) instead of making the gateway hold
  ever more events for it.

Event kinds and their fields (besides `seq`, `at`, `kind`, `service`):

| kind | fields |
|---|---|
| `state` | `state`, `previous` |
| `start_attempt` | `attempt`, `machine`, `launcher`, `ok`, `duration_ms`, `detail` (on failure) |
| `ready` | `machine`, `duration_ms` (the whole start), `attempts` |
| `start_failed` | `detail`, `attempts`, `cancelled`, `duration_ms` |
| `stopped` | `reason` (`idle`, `api`, `shutdown`, `reload`, `removed`), `duration_ms` |
| `crashed` | `detail`, `exit_status` |
| `queue_overflow` | `queue_max`, `state` |
| `queue_timeout` | `waited_s`, `state` |
| `semaphore_task` | `action`, `task_id`, `template_id`, `status`, `machine_id`, `duration_ms`,
  `error` |
| `machine` | `machine`, `enabled` (a person enabled or disabled it) |
| `config_reloaded` | `source`, `added`, `removed`, `restarted`, `updated`, `unchanged`,
  `topLevel` |
| `config_reload_failed` | `source`, `error`, `detail`, `errors` |
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from .observability import iso_time

__all__ = ["Event", "EventBus"]

log = structlog.get_logger("hestia.events")


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    kind: str
    service: str | None
    data: dict[str, Any]
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": iso_time(self.at), "kind": self.kind,
                "service": self.service, **self.data}


class EventBus:
    """One per gateway. `publish` from anywhere; `add_listener` or `subscribe` to hear."""

    def __init__(self, history: int = 256) -> None:
        self._seq = itertools.count(1)
        self._listeners: list[Callable[[Event], None]] = []
        self._subscribers: set[trio.MemorySendChannel[Event]] = set()
        self.recent: deque[Event] = deque(maxlen=history)
        self._closed = False

    def __repr__(self) -> str:
        return (f"<EventBus listeners={len(self._listeners)} "
                f"subscribers={len(self._subscribers)}>")

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    def publish(self, kind: str, service: str | None = None, **data: Any) -> Event:
        event = Event(next(self._seq), kind, service, data)
        self.recent.append(event)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event_listener_failed", listener=repr(listener), kind=kind)
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                log.warning("event_subscriber_lagging", detail="fell too far behind; cut off")
                self._subscribers.discard(channel)
                channel.close()
            except trio.BrokenResourceError:
                self._subscribers.discard(channel)
        return event

    def close(self) -> None:
        """End every subscription (the gateway is shutting down); later ones end at once.
        Listeners still hear what is published."""
        self._closed = True
        for channel in self._subscribers:
            channel.close()
        self._subscribers.clear()

    @contextmanager
    def subscribe(self, maxsize: int = 1000) -> Iterator[trio.MemoryReceiveChannel[Event]]:
        """Events from now on, until the block ends (or the subscriber lags `maxsize` behind,
        or the bus is closed: then the channel ends early)."""
        send, receive = trio.open_memory_channel[Event](maxsize)
        if self._closed:
            send.close()
        else:
            self._subscribers.add(send)
        try:
            yield receive
        finally:
            self._subscribers.discard(send)
            send.close()
            receive.close()
