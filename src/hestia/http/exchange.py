"""The proxy's side of one exchange with an upstream, below routing: sending the request on a
pooled or fresh connection, telling what cut an exchange short, and giving the connection back
only when nothing of this exchange can leak into the next one."""

from __future__ import annotations

import copy

import trio

from ..errors import UpstreamReset, UpstreamTimeout
from ..lifecycle.leases import Lease
from ..upstream import LAST_CHUNK, Connection, encode_chunk
from .client_body import ClientGone
from .request import ProxyRequest

__all__ = ["cut_short", "give_back", "send_request", "watch_disconnect"]


async def watch_disconnect(req: ProxyRequest, scope: trio.CancelScope) -> None:
    assert req.body is not None
    while True:
        message = await req.body.receive()
        if message["type"] == "http.disconnect":
            # Hypercorn also reports a disconnect once the response is complete.
            if not req.finished:
                req.body.disconnected = True
                scope.cancel()
            return


async def give_back(lease: Lease, conn: Connection, req: ProxyRequest) -> None:
    """After a response read to its end: the connection goes back to the pool only when the
    request also went out whole, framed by its length. Bytes of a request body still owed would
    otherwise be read by the upstream as the start of the next client's request."""
    if req.reuse_connection:
        await lease.placement.pool.release(conn)
    else:
        await conn.aclose()


def cut_short(lease: Lease, req: ProxyRequest, *, quick_ok: bool) -> None:
    """Raise what cancelled the exchange; return when it was only the fast path's end."""
    timeouts = lease.timeouts
    if lease.error is not None:
        raise copy.copy(lease.error)  # one error revokes many leases: one copy each
    assert req.body is not None
    if req.body.disconnected:
        raise ClientGone
    now = trio.current_time()
    if not req.response_started and now >= req.first_byte_deadline and \
            req.first_byte_deadline <= req.total_deadline:
        raise UpstreamTimeout(
            f"no response from the upstream within {timeouts.first_byte}s",
            phase="first_byte")
    if now >= req.total_deadline or not quick_ok:
        raise UpstreamTimeout(
            f"the upstream exchange took longer than {timeouts.total}s", phase="total")


async def send_request(lease: Lease, request: bytes, req: ProxyRequest, *, retryable: bool,
                        fresh: bool = False) -> Connection:
    """A connection on which the request (head and body) has been sent, or as much of it
    as the upstream took before it answered early (`req.reuse_connection` is set only
    when the whole body went out, framed by its length).
    Raises `UpstreamUnreachable`, `UpstreamTimeout`, `UpstreamReset`, `BadFraming`,
    `BodyTooLarge` or `ClientGone`, having closed the connection."""
    req.reuse_connection = False
    body = req.body
    assert body is not None
    chunked = body.length is None
    connect_timeout = lease.timeouts.connect
    pool = lease.placement.pool
    conn = await (pool.connect(connect_timeout) if fresh else
                  pool.acquire(connect_timeout, check=not retryable))
    try:
        try:
            await conn.send(request)
        except (trio.BrokenResourceError, OSError):
            if not conn.reused:
                raise UpstreamReset("the upstream closed the connection") from None
            # A kept-alive connection the upstream closed just now: once more, fresh.
            await conn.aclose()
            conn = await pool.connect(connect_timeout)
            try:
                await conn.send(request)
            except (trio.BrokenResourceError, OSError) as exc:
                raise UpstreamReset(f"cannot send to the upstream: {exc}") from None
        try:
            async for data in body.chunks():
                await conn.send(encode_chunk(data) if chunked else data)
            if chunked:
                await conn.send(LAST_CHUNK)
            # A chunked request never leaves its connection to another one: an upstream
            # that ignores Transfer-Encoding (http.server-based ones do) reads the chunks
            # as requests of their own, whose answers would go to the next client.
            req.reuse_connection = not chunked
        except (trio.BrokenResourceError, OSError):
            pass  # the upstream may have answered early (413, 401) and closed: read that
    except BaseException:
        await conn.aclose()
        raise
    return conn
