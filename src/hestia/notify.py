"""Webhooks: lifecycle events POSTed to the URLs under `notify`.

Each webhook has a task of its own with its own subscription to the event bus, so a slow or
failing receiver delays only itself, and its events arrive in order. An event is tried
`attempts` times, 1 s, 2 s, 4 s … apart, each try bounded by `timeout`; a 2xx answer is a
delivery. After the last failed try the event is dropped and `webhook_failed` is logged: a
receiver that is down never makes Hestia hold events without bound (the subscription itself is
bounded, and cut off when the receiver falls 1,000 events behind).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx
import structlog
import trio

from .config import NotifyConfig
from .events import Event, EventBus

__all__ = ["Notifier"]

log = structlog.get_logger("hestia.notify")


class Notifier:
    def __init__(self, hooks: Sequence[NotifyConfig], events: EventBus, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.hooks = list(hooks)
        self.events = events
        self.transport = transport
        self.delivered = 0
        self.dropped = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        async with httpx.AsyncClient(transport=self.transport) as http, \
                trio.open_nursery() as nursery:
            for hook in self.hooks:
                await nursery.start(self._serve, hook, http)
            task_status.started()

    async def _serve(self, hook: NotifyConfig, http: httpx.AsyncClient, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.events.subscribe() as channel:
            task_status.started()
            async for event in channel:
                if (hook.events and event.kind not in hook.events) or \
                        (hook.services and event.service not in hook.services):
                    continue
                await self._deliver(hook, http, event)

    async def _deliver(self, hook: NotifyConfig, http: httpx.AsyncClient, event: Event) -> None:
        body = event.as_dict()
        problem = ""
        for attempt in range(1, hook.attempts + 1):
            if attempt > 1:
                await trio.sleep(2.0 ** (attempt - 2))
            try:
                with trio.fail_after(hook.timeout):
                    response = await http.post(hook.url, json=body)
            except trio.TooSlowError:
                problem = f"no answer within {hook.timeout:g}s"
                continue
            except httpx.HTTPError as exc:
                problem = str(exc) or type(exc).__name__
                continue
            if 200 <= response.status_code < 300:
                self.delivered += 1
                return
            problem = f"answered {response.status_code}"
        self.dropped += 1
        log.warning("webhook_failed", url=_origin(hook.url), kind=event.kind, service=event.service,
                    seq=event.seq, attempts=hook.attempts, detail=problem)


def _origin(url: str) -> str:
    # A webhook URL often carries its secret in the path or query (Slack, ntfy): log the origin.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
