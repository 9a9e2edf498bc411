"""What Hestia is doing, in the formats people already use.

- `GET /v1/events[?service=ID]`: server-sent events, one per lifecycle event (`event:` is its
  kind, `id:` its sequence number, `data:` the JSON of `Event.as_dict`). A client reconnecting
  with `Last-Event-ID` first gets the events it missed that are still in the recent history.
  A comment line every 15 s keeps idle connections open through proxies.
- `GET /metrics`: Prometheus text; `GET /v1/metrics`: the same samples as JSON.
- `GET /v1/activity[?serviceId=ID&limit=N]`: the stored history of lifecycle events, newest
  first (it survives restarts; `limit` defaults to 100, at most 1,000).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import trio
from quart import Blueprint, Response, jsonify, request

from ..events import Event, EventBus
from ..metrics import Metrics
from ..store import Store

__all__ = ["observe_blueprint"]

KEEP_ALIVE_S = 15.0


def observe_blueprint(events: EventBus, metrics: Metrics, store: Store | None = None,
                      ) -> Blueprint:
    api = Blueprint("observe", __name__)

    @api.get("/v1/activity")
    async def activity() -> Response:
        limit = request.args.get("limit", "100")
        count = min(1000, int(limit)) if limit.isascii() and limit.isdigit() else 100
        service = request.args.get("serviceId")
        if store is not None:
            with trio.move_on_after(1):
                await store.flush()  # what was published before this request is in the answer
        rows = store.activity(service, count) if store is not None else [
            e.as_dict() for e in reversed(events.recent)
            if service is None or e.service == service][:count]
        return jsonify(activity=rows)

    @api.get("/v1/events")
    async def stream_events() -> Response:
        service = request.args.get("service")
        last = request.headers.get("Last-Event-ID", "")
        after = int(last) if last.isascii() and last.isdigit() else None

        def wanted(event: Event) -> bool:
            return service is None or event.service == service

        async def body() -> AsyncIterator[bytes]:
            with events.subscribe() as channel:
                yield b": hestia events\n\n"
                if after is not None:
                    for event in list(events.recent):
                        if event.seq > after and wanted(event):
                            yield _frame(event)
                while True:
                    with trio.move_on_after(KEEP_ALIVE_S) as idle:
                        try:
                            event = await channel.receive()
                        except trio.EndOfChannel:
                            return  # this subscriber lagged too far behind and was cut off
                    if idle.cancelled_caught:
                        yield b": keep-alive\n\n"
                    elif wanted(event):
                        yield _frame(event)

        response = Response(body(), mimetype="text/event-stream",
                            headers={"X-Accel-Buffering": "no"})
        response.timeout = None  # a stream, not a slow answer
        return response

    @api.get("/metrics")
    async def prometheus() -> Response:
        text, content_type = metrics.render()
        return Response(text, content_type=content_type)

    @api.get("/v1/metrics")
    async def metrics_json() -> Response:
        return jsonify(metrics.as_json())

    return api


def _frame(event: Event) -> bytes:
    return (f"id: {event.seq}\nevent: {event.kind}\n"
            f"data: {json.dumps(event.as_dict())}\n\n").encode()
