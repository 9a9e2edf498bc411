"""What Hestia is doing, in the formats people already use.

- `GET /v1/events[?service=ID]`: server-sent events, one per lifecycle event (`event:` is its
  kind, `id:` its sequence number, `data:` the JSON of `Event.as_dict`). A client reconnecting
  with `Last-Event-ID` first gets the events it missed that are still in the recent history.
  A comment line every 15 s keeps idle connections open through proxies.
- `GET /metrics`: Prometheus text; `GET /v1/metrics`: the same samples as JSON.
- `GET /v1/activity[?serviceId=ID&limit=N]`: the stored history of lifecycle events, newest
  first (it survives restarts; `limit` defaults to 100, larger than 1,000 means 1,000, and one
  that is not a whole number ≥ 0 is `400 bad_request`). `at` is ISO 8601 in UTC, like every
  time of the API, though the store keeps Unix seconds (its order and pruning use them).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import trio
from quart import Blueprint, Response, jsonify, request

from ..errors import RequestRejected
from ..events import Event, EventBus
from ..metrics import Metrics
from ..observability import iso_time
from ..store import Store

__all__ = ["observe_blueprint"]

KEEP_ALIVE_S = 15.0


def observe_blueprint(events: EventBus, metrics: Metrics, store: Store | None = None,
                      ) -> Blueprint:
    api = Blueprint("observe", __name__)

    @api.get("/v1/activity")
    async def activity() -> Response:
        """Raises `RequestRejected` (400) for a `limit` that is not a whole number ≥ 0."""
        limit = request.args.get("limit", "100")
        # ASCII digits only: int() takes `-1`, `+5`, ` 7` and `٣`; isdigit() passes `²`, which
        # int() refuses.
        if not (limit.isascii() and limit.isdigit()):
            raise RequestRejected(f"limit must be a whole number of rows, 0 or more (got "
                                  f"{limit!r})")
        count = min(1000, int(limit))
        service = request.args.get("serviceId")
        if store is None:
            return jsonify(activity=[e.as_dict() for e in reversed(events.recent)
                                     if service is None or e.service == service][:count])
        with trio.move_on_after(1):
            await store.flush()  # what was published before this request is in the answer
        return jsonify(activity=[{**row, "at": iso_time(row["at"])}
                                 for row in store.activity(service, count)])

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
