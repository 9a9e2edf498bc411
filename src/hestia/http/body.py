"""Reading an API request's body: bounded, drained, and never a 500.

Quart's own size check (`MAX_CONTENT_LENGTH`, 16 MiB unless set) answers 413 before reading the
body, and hypercorn then stops reading a connection whose client is still sending: the client
hangs, and the kept-alive connection with it. So the app sets no limit of Quart's; instead
`read_body` runs before every `/v1` route (and before every 404 and 405), reads the body itself
and, past `API_MAX_BODY`, goes on reading (and dropping) up to `DRAIN_MAX` before it answers
413, so that a client sending a too-large body reads the answer on a connection that stays
usable. A route that takes no body gets the same: what was sent is read, and a body too large is
refused before the route acts on it.
"""

from __future__ import annotations

import json
from typing import Any

from quart import g, request
from werkzeug.exceptions import RequestEntityTooLarge

__all__ = ["API_MAX_BODY", "DRAIN_MAX", "json_body", "read_body"]

API_MAX_BODY = 1024 * 1024
DRAIN_MAX = 64 * 1024 * 1024


async def read_body() -> bytes:
    """The request's body, read once (later calls return the same bytes). Raises
    `RequestEntityTooLarge` (413) past `API_MAX_BODY`, once the body was read to its end, or
    to `DRAIN_MAX` (then the connection closes after the answer)."""
    body: bytes | None = g.get("_hestia_body")
    if body is not None:
        return body
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.body:
        size += len(chunk)
        if size <= API_MAX_BODY:
            chunks.append(chunk)
        elif size > DRAIN_MAX:
            break  # a client this determined gets the 413 on a closing connection
    if size > API_MAX_BODY:
        raise RequestEntityTooLarge(f"the body is larger than {API_MAX_BODY} bytes")
    g._hestia_body = body = b"".join(chunks)
    return body


async def json_body() -> Any:
    """The parsed body, or None when it is empty or not JSON (in any encoding). Raises
    `RequestEntityTooLarge` (413) past `API_MAX_BODY`."""
    try:
        return json.loads(await read_body())
    except ValueError:  # also a UnicodeDecodeError: bytes that are no UTF-8/16/32
        return None
