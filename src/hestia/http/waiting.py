"""The waiting page: what a browser sees while a service starts, and the gateway's static files.

A browser navigation to a service that is not READY (and whose `waiting_page` is on) gets, at
once, `waiting_response`: a page naming the service, its state, the time elapsed since the start
began and the expected start time (the median of its recent starts). `waiting.js` follows the
service over `/__hestia/events/<backend>` and reloads the same URL the moment it is READY;
without JavaScript a `<noscript>` refresh reloads it every few seconds. A failed start is told in
words (attempts, exit status, the log's last lines) with a Retry button, which works without
JavaScript too (a form POST answered by a redirect back to the page).

Status and caching: **503 with `Retry-After` and `Cache-Control: no-store`**. The app is not
there yet, and saying so keeps everything that is not a person honest: a crawler, a link preview
or a monitor that sends `Accept: text/html` sees an unavailable service, not a 200 it could
store or index as the app's page. `no-store` keeps every cache (the browser's, back/forward, a
proxy) from ever standing the page in for the app; `Retry-After` is the expected time left.

Endpoints (on every host; on a service's host name only that service's ids are known):

- `GET /__hestia/static/<name>`: a file of `web/static` (plain names only, nothing else on
  disk), `Cache-Control: no-cache` with an `ETag`, so an upgraded gateway is never served a stale
  script, yet an unchanged one costs a 304.
- `GET /__hestia/events/<backend>`: server-sent events for one backend: its status at once, then
  after each of its lifecycle events, ending after the one that says READY. Each is the JSON of
  `service_status` plus `page`, the words the page shows (so the script words nothing itself).
- `POST /__hestia/retry/<backend>`: asks for a start (202; 409 when starting or ready). A form
  post with a local `next` path is answered 303 to it, for the page without JavaScript.

`<backend>` is the supervisor's id: the service's own, or `<service>@<backend>` for a service
with several backends (the page is for the one the strategy picked).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from functools import cache
from typing import Any
from urllib.parse import parse_qs, quote

import trio
from quart import Blueprint, Response, jsonify, request

from ..errors import Conflict, UnknownService
from ..events import EventBus
from ..lifecycle.supervisor import State, Supervisor
from ..routing.router import Route
from .addressing import Address, Addressing
from .body import read_body
from .browser import STATIC_DIR, html_headers, render
from .status import service_status

__all__ = ["not_found_response", "service_links", "waiting_blueprint", "waiting_response"]

KEEP_ALIVE_S = 15.0
NOSCRIPT_REFRESH_S = 3  # without JavaScript: how often the page reloads while the start runs
CONTENT_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".png": "image/png", ".svg": "image/svg+xml", ".ico": "image/x-icon",
                 ".json": "application/json", ".txt": "text/plain; charset=utf-8"}
# A plain file name: no separator, no leading dot (so neither `..` nor a hidden file).
_STATIC_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


# --- the pages ------------------------------------------------------------------------------


def waiting_response(supervisor: Supervisor, address: Address, request_id: str, *,
                     query: bytes = b"", starting: bool = True) -> Answer:
    """The waiting page for a navigation to `supervisor`'s service while it is not READY, as
    `(status, headers, body)`: 503, `Retry-After`, `no-store` (see the module's docstring).
    `query` is the request's query string, for the Retry form's way back to this very URL.

    It asks for nothing itself: the caller has asked for the start (as the proxy does for a
    navigation), so a COLD backend is shown as starting even when its last start failed;
    `starting=False` shows that failure instead. A FAILED one is best left to its cool-down and
    the page's Retry button, so that the page can say why it failed.
    """
    view = page_view(supervisor, starting=starting)
    here = (address.prefix + address.path).decode("latin-1")
    if query:
        here += "?" + query.decode("latin-1")
    body = render("waiting.html", view=view, here=here,
                  events_url=f"/__hestia/events/{quote(supervisor.name, safe='@')}",
                  retry_url=f"/__hestia/retry/{quote(supervisor.name, safe='@')}",
                  refresh=NOSCRIPT_REFRESH_S if view["phase"] != "failed" else None)
    # While FAILED, nothing starts it before the cool-down ends (but the Retry button).
    wait = supervisor.cooldown_remaining or supervisor.retry_after()
    headers = html_headers(body, request_id)
    headers.append((b"retry-after", str(max(1, math.ceil(wait))).encode()))
    return 503, headers, body


def not_found_response(services: Iterable[str], request_id: str, host: str | None = None, *,
                       links: Mapping[str, str] | None = None) -> Answer:
    """An HTML 404 for a navigation to an unknown service (or, with `host`, an unknown host
    name under `service_domain`), listing the services: each links to `links[id]` when given
    (`service_links`), else to `/services/<id>/`."""
    links = links or {}
    listed = [(sid, links.get(sid) or f"/services/{quote(sid, safe='@')}/")
              for sid in sorted(services)]
    body = render("not_found.html", services=listed, host=host)
    return 404, html_headers(body, request_id), body


def service_links(addressing: Addressing, headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Where each service lives, for links from a page answered to a request with `headers`:
    its host name (with the request's port and scheme) when it has one, else its path route."""
    port = ""
    for name, value in headers:
        if name == b"host":
            host = value.decode("latin-1")
            tail = host.rpartition("]")[2] if host.startswith("[") else host
            if ":" in tail:
                port = ":" + tail.rpartition(":")[2]
            break
    links = {}
    for sid in addressing.services:
        name = addressing.host_of(sid)
        links[sid] = f"//{name}{port}/" if name else f"/services/{quote(sid, safe='@')}/"
    return links


# --- what the page says ---------------------------------------------------------------------


def page_view(sup: Supervisor, *, starting: bool = False) -> dict[str, Any]:
    """Everything the page shows, in words, from the supervisor's state now (the template
    renders it; the events stream sends it as `page` so that the script shows the same)."""
    state = sup.state
    failure = sup.last_error if sup.failures_in_a_row else None
    if state is State.FAILED or (state is State.COLD and failure and not starting):
        phase = "failed"
    elif state is State.STOPPING:
        phase = "stopping"
    elif state is State.READY:
        phase = "ready"
    else:
        phase = "starting"
    shown = "STARTING" if state is State.COLD and phase == "starting" else state.name
    began = sup.history.began
    elapsed = (trio.current_time() - began) if state is State.STARTING and began is not None \
        else 0.0
    expected = sup.history.expected()
    service = sup.service
    headline = {
        "starting": f"Starting {service}. The app opens here by itself as soon as it is ready.",
        "failed": f"{service} could not be started.",
        "stopping": f"{service} is stopping. It starts again right after, and the app opens "
                    "here by itself.",
        "ready": f"{service} is ready. Opening it…",
    }[phase]
    count = len(sup.history.durations)
    if expected is None:
        expected_text = "not known yet: no start of it has finished here so far"
    else:
        expected_text = (f"about {duration_text(expected)} (the median of its last "
                         f"{count} start{'s' if count != 1 else ''})")
    return {
        "service": service,
        "backend": sup.name if sup.name != service else None,
        "state": shown,
        "phase": phase,
        "headline": headline,
        "machine": sup.placement.machine,
        "elapsedMs": round(elapsed * 1000),
        "elapsedText": duration_text(elapsed),
        "expectedMs": None if expected is None else round(expected * 1000),
        "expectedText": expected_text,
        "failure": failure_view(sup) if failure else None,
    }


def failure_view(sup: Supervisor) -> dict[str, Any]:
    """The last failure, in sentences: what failed, how often, how it ended, what comes next."""
    error = sup.last_error or {}
    attempts = [a for a in error.get("attempts", []) if a.get("attempt")]
    skipped = [a for a in error.get("attempts", []) if not a.get("attempt")]
    sentences = []
    if error.get("error") == "backend_crashed":
        sentences.append("It stopped by itself while it was serving.")
    elif attempts:
        n = len(attempts)
        sentences.append(f"Hestia tried {n} time{'s' if n != 1 else ''} to start it, "
                         "and every attempt failed.")
    status = error.get("exit_status")
    if status is not None:
        sentences.append(f"The process exited with status {status}.")
    elif error.get("reason") == "timeout":
        sentences.append("It did not become ready in time.")
    for skip in skipped:
        sentences.append(f"Machine {skip.get('machine')} was skipped: {skip.get('detail')}.")
    cooldown = sup.cooldown_remaining
    if sup.state is State.FAILED and cooldown:
        sentences.append(f"Requests start it again in {duration_text(cooldown)}, or Retry "
                         "does now.")
    return {
        "summary": " ".join(sentences),
        "detail": error.get("detail", ""),
        "logTail": list(error.get("log_tail") or []),
        "attempts": [f"Attempt {a['attempt']} on {a.get('machine')} ({a.get('launcher')}), "
                     f"{duration_text(a.get('duration_ms', 0) / 1000)}: {a.get('detail')}"
                     for a in attempts],
    }


def duration_text(seconds: float) -> str:
    """`0.4 s`, `12 s`, `3 min 5 s`, `2 h 10 min`: as a person reads a wait."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def stream_status(sup: Supervisor) -> dict[str, Any]:
    """One message of the events stream: the API's status, and the page's words."""
    return {**service_status(sup), "page": page_view(sup)}


# --- the endpoints --------------------------------------------------------------------------


@cache
def _static_names() -> frozenset[str]:
    # Listed once: the files ship with the package, and a request names one of them or nothing.
    return frozenset(p.name for p in STATIC_DIR.iterdir()
                     if p.is_file() and p.suffix in CONTENT_TYPES)


def _local_path(target: str) -> bool:
    """A path on this origin (never `//host/…` or `/\\host`, which browsers take as a host)."""
    return (target.startswith("/") and not target.startswith(("//", "/\\"))
            and target.isprintable() and "\\" not in target)


def waiting_blueprint(supervisors: Mapping[str, Supervisor], routes: Mapping[str, Route],
                      addressing: Addressing, events: EventBus) -> Blueprint:
    """`/__hestia/static/…`, and each backend's waiting-page endpoints (see the module)."""
    pages = Blueprint("waiting", __name__)

    def backend(backend_id: str) -> Supervisor:
        """The backend named in the path, if this host may name it; raises `UnknownService`."""
        address = addressing.resolve(request.scope)
        sup = supervisors.get(backend_id)
        if (sup is None or address.unknown_host is not None
                or (address.service is not None and sup.service != address.service)):
            known = sorted(routes) if address.service is None else [address.service]
            raise UnknownService(f"no service named {backend_id!r}", service=backend_id,
                                 services=known if address.unknown_host is None else [])
        return sup

    @pages.get("/__hestia/static/<name>")
    async def static_file(name: str) -> Response:
        if not _STATIC_NAME.fullmatch(name) or name not in _static_names():
            return Response(b"not found\n", 404, content_type="text/plain; charset=utf-8")
        path = STATIC_DIR / name
        body = await trio.Path(path).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        headers = {"Cache-Control": "no-cache", "ETag": etag,
                   "X-Content-Type-Options": "nosniff"}
        if etag in (tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")):
            return Response(b"", 304, headers=headers)
        return Response(body, 200, content_type=CONTENT_TYPES[path.suffix], headers=headers)

    @pages.get("/__hestia/events/<backend_id>")
    async def follow(backend_id: str) -> Response:
        sup = backend(backend_id)

        async def stream() -> AsyncIterator[bytes]:
            # Subscribed before the first status is taken: no event can fall in between.
            with events.subscribe() as channel:
                yield _frame(stream_status(sup))
                while sup.state is not State.READY:
                    with trio.move_on_after(KEEP_ALIVE_S) as idle:
                        try:
                            event = await channel.receive()
                        except trio.EndOfChannel:
                            return  # lagged or shutting down: the browser reconnects
                    if idle.cancelled_caught:
                        yield b": keep-alive\n\n"
                    elif event.service == sup.name:
                        yield _frame(stream_status(sup))

        response = Response(stream(), mimetype="text/event-stream",
                            headers={"X-Accel-Buffering": "no", "Cache-Control": "no-store"})
        response.timeout = None  # a stream, not a slow answer
        return response

    @pages.post("/__hestia/retry/<backend_id>")
    async def retry(backend_id: str) -> Response | tuple[Response, int]:
        sup = backend(backend_id)
        accepted = sup.request_start()
        target = await _form_next()
        if target and _local_path(target):
            return Response(b"", 303, headers={"Location": target})
        if not accepted:
            raise Conflict(f"{sup.name!r} is already {sup.state.name}", service=sup.name,
                           state=sup.state.name)
        return jsonify(serviceId=sup.name, state=State.STARTING.name, accepted=True), 202

    return pages


async def _form_next() -> str:
    """The `next` field of a form post (the page's Retry without JavaScript), else ""."""
    if request.mimetype != "application/x-www-form-urlencoded":
        return ""
    # The body was read (and bounded) before the route, by `read_body`.
    fields = parse_qs((await read_body()).decode("utf-8", "replace"))
    return fields.get("next", [""])[0]


def _frame(status: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(status)}\n\n".encode()
