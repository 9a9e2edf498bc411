"""The waiting page: what a browser sees while a service starts, and the gateway's static files.

- `GET /__hestia/static/<name>`: a file of `web/static` (plain names only, nothing else on
  disk), `Cache-Control: no-cache` with an `ETag`, so an upgraded gateway is never served a stale
  script, yet an unchanged one costs a 304.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from functools import cache

import trio
from quart import Blueprint, Response, request

from ..events import EventBus
from ..lifecycle.supervisor import Supervisor
from ..routing.router import Route
from .addressing import Addressing
from .browser import STATIC_DIR

__all__ = ["waiting_blueprint"]

CONTENT_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".png": "image/png", ".svg": "image/svg+xml", ".ico": "image/x-icon",
                 ".json": "application/json", ".txt": "text/plain; charset=utf-8"}
# A plain file name: no separator, no leading dot (so neither `..` nor a hidden file).
_STATIC_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


@cache
def _static_names() -> frozenset[str]:
    # Listed once: the files ship with the package, and a request names one of them or nothing.
    return frozenset(p.name for p in STATIC_DIR.iterdir()
                     if p.is_file() and p.suffix in CONTENT_TYPES)


def waiting_blueprint(supervisors: Mapping[str, Supervisor], routes: Mapping[str, Route],
                      addressing: Addressing, events: EventBus) -> Blueprint:
    """`/__hestia/static/…`, and each service's waiting-page endpoints (see the module)."""
    pages = Blueprint("waiting", __name__)

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

    return pages
