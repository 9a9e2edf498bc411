"""A proxied request's body, as the client sends it: read with backpressure, bounded, and never
one byte more or fewer than the framing sent upstream announces.

Hypercorn hands the app a bounded queue of body messages, so reading one message per chunk
forwarded upstream is real backpressure: a 1 GiB upload never sits in memory. While the request
waits for its backend, `watch` reads ahead a little so that a client going away is noticed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import trio

from ..errors import BadFraming, BodyTooLarge

__all__ = ["DRAIN_MAX", "DRAIN_S", "WAIT_READ_AHEAD", "ClientBody", "ClientGone", "drain"]

# While a request waits for its backend, this much of its body is read ahead so that a client
# going away is noticed; past it, reading stops until the upstream takes the body (backpressure).
WAIT_READ_AHEAD = 64 * 1024
# Reading what is left of a request body after an early answer: at most this much, this long.
DRAIN_MAX = 16 * 1024 * 1024
DRAIN_S = 5.0

Receive = Any


class ClientGone(Exception):
    """The client disconnected; nothing more can be answered."""


class ClientBody:
    """The request body as ASGI messages, plus the client's disconnect."""

    __slots__ = ("receive", "buffered", "buffered_bytes", "done", "disconnected", "pulled",
                 "limit", "sent", "length")

    def __init__(self, receive: Receive, length: int | None, limit: int = 0) -> None:
        self.receive = receive
        self.buffered: list[bytes] = []
        self.buffered_bytes = 0
        self.length = length  # what the framing sent upstream announces; None: chunked
        self.done = length == 0
        self.disconnected = False
        self.pulled = False
        self.limit = limit  # bytes; 0: none
        self.sent = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk. Raises `ClientGone`, `BodyTooLarge` past `limit` (a
        chunked body announces no length, so it is counted as it goes), or `BadFraming` when
        the body is not as long as its `Content-Length` says: not one byte more is handed out
        than the framing sent upstream announced."""
        buffered, self.buffered = self.buffered, []
        for chunk in buffered:
            self._count(chunk)
            yield chunk
        while not self.done:
            chunk = await self._next()
            if chunk:
                self._count(chunk)
                yield chunk
        if self.length is not None and self.sent != self.length:
            raise BadFraming(f"the request body is {self.sent} bytes, not the {self.length} "
                             "its Content-Length announced")

    async def _next(self) -> bytes:
        """The next piece of the body (possibly empty); sets `done` with the last one. Raises
        `ClientGone`."""
        message = await self.receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
            raise ClientGone
        if not message.get("more_body", False):
            self.done = True
        return message.get("body", b"")

    async def prefetch(self, limit: int) -> bytes:
        """Read the whole body ahead, for a strategy that routes by it, keeping it to forward
        unchanged. Raises `BodyTooLarge` past `limit` (`strategy.max_body`), `ClientGone`."""
        while not self.done:
            chunk = await self._next()
            if chunk:
                self.buffered.append(chunk)
                self.buffered_bytes += len(chunk)
                if self.buffered_bytes > limit:
                    raise BodyTooLarge(f"the request body is larger than the {limit} bytes "
                                       "this service's strategy reads to route it "
                                       "(strategy.max_body)", limit=limit)
        return b"".join(self.buffered)

    def _count(self, chunk: bytes) -> None:
        self.pulled = True
        self.sent += len(chunk)
        if self.length is not None and self.sent > self.length:
            raise BadFraming(f"the request body is longer than the {self.length} bytes its "
                             "Content-Length announced")
        if self.limit and self.sent > self.limit:
            raise BodyTooLarge(f"the request body is larger than this service's limit of "
                               f"{self.limit} bytes (limits.max_body_size)", limit=self.limit)

    async def watch(self, scope: trio.CancelScope) -> None:
        """Read ahead while waiting, and cancel `scope` when the client goes away."""
        while self.done or self.buffered_bytes < WAIT_READ_AHEAD:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                scope.cancel()
                return
            if self.done:
                continue  # an empty body message of a request without a body
            chunk = message.get("body", b"")
            if chunk:
                self.buffered.append(chunk)
                self.buffered_bytes += len(chunk)
            if not message.get("more_body", False):
                self.done = True


async def drain(receive: Receive) -> None:
    """Before an early answer (413, 503 …), read and drop what is left of the request body, so
    that a client still sending it gets to read the answer instead of a reset connection.
    Bounded in bytes and time; past either, the answer goes out and the connection closes."""
    drained = 0
    with trio.move_on_after(DRAIN_S):
        while drained <= DRAIN_MAX:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            drained += len(message.get("body", b""))
