"""Reading an API request's JSON body: bounded, drained, and never a 500.

Quart's own size check answers 413 before reading the body, and hypercorn then closes the
connection while the client is still sending: the client sees a dropped connection, not the
answer. So the API takes no `MAX_CONTENT_LENGTH`; `json_body` reads the body itself, and past
`API_MAX_BODY` goes on reading (and dropping) up to `DRAIN_MAX` before it answers 413, so that a
client sending a too-large body still reads the answer on a connection that stays usable.
"""

from __future__ import annotations

import json
from typing import Any

from quart import request
from werkzeug.exceptions import RequestEntityTooLarge

__all__ = ["API_MAX_BODY", "json_body"]

API_MAX_BODY = 1024 * 1024
DRAIN_MAX = 64 * 1024 * 1024


async def json_body() -> Any:
    """The parsed body, or None when it is empty or not JSON (in any encoding). Raises
    `RequestEntityTooLarge` (413) past `API_MAX_BODY`."""
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
    try:
        return json.loads(b"".join(chunks))
    except ValueError:  # also a UnicodeDecodeError: bytes that are no UTF-8/16/32
        return None
