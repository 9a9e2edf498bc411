"""The transparent proxy at `/services/{id}/{path}`, as a plain ASGI handler.

It sits in front of the Quart app's routing (`app.asgi_app`), because the data plane needs what
a framework request object hides: the raw path, and the request body as ASGI messages. Hypercorn
hands the app a bounded queue of body messages, so reading one message per chunk forwarded
upstream is real backpressure: a 1 GiB upload never sits in memory, and neither does a download,
since each `send` waits for the client's socket.

One exchange: take a lease (at once when READY, else in the hold queue, watching for the client
going away meanwhile), open or reuse a connection to the upstream, stream the request, stream the
response chunk by chunk as it arrives, release the lease. A client that disconnects mid-response
cancels the exchange at once; an upstream that dies mid-response truncates the client's response
(the connection is closed without the end of the message), never a clean, complete body.
"""

from __future__ import annotations

import copy
import math
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import unquote

import h11
import structlog
import trio

from ..errors import GatewayError, UnknownService, UpstreamReset, UpstreamTimeout, error_response
from ..lifecycle.supervisor import Lease, Supervisor
from ..observability import request_id_from
from .upstream import Connection

__all__ = ["PREFIX", "ProxyHandler"]

log = structlog.get_logger("hestia.proxy")

PREFIX = b"/services/"
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"expect",
})
# While a request waits for its backend, this much of its body is read ahead so that a client
# going away is noticed; past it, reading stops until the upstream takes the body (backpressure).
WAIT_READ_AHEAD = 64 * 1024

Scope = dict[str, Any]
Receive = Any
Send = Any


class _ClientGone(Exception):
    """The client disconnected; nothing more can be answered."""


class _ClientBody:
    """The request body as ASGI messages, plus the client's disconnect."""

    __slots__ = ("receive", "buffered", "buffered_bytes", "done", "disconnected", "pulled")

    def __init__(self, receive: Receive, has_body: bool) -> None:
        self.receive = receive
        self.buffered: list[bytes] = []
        self.buffered_bytes = 0
        self.done = not has_body
        self.disconnected = False
        self.pulled = False

    async def chunks(self) -> AsyncIterator[bytes]:
        buffered, self.buffered = self.buffered, []
        for chunk in buffered:
            self.pulled = True
            yield chunk
        while not self.done:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                raise _ClientGone
            if not message.get("more_body", False):
                self.done = True
            chunk = message.get("body", b"")
            if chunk:
                self.pulled = True
                yield chunk

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


class _Exchange:
    """What one proxied request has done so far (for the error path and the log line)."""

    __slots__ = ("request_id", "service", "status", "response_started", "finished", "body_bytes")

    def __init__(self, request_id: str, service: str | None) -> None:
        self.request_id = request_id
        self.service = service
        self.status = 0
        self.response_started = False
        self.finished = False  # the upstream's response was read to its end
        self.body_bytes = 0


class ProxyHandler:
    """ASGI handler for every `http` request whose path starts with `/services/`."""

    def __init__(self, supervisors: Mapping[str, Supervisor]) -> None:
        self.supervisors = supervisors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        began = trio.current_time()
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        service_id, _, rest = raw_path[len(PREFIX):].partition(b"/")
        name = unquote(service_id.decode("latin-1"))
        exchange = _Exchange(request_id_from(headers), name)
        try:
            supervisor = self.supervisors.get(name)
            if supervisor is None:
                raise UnknownService(f"no service named {name!r}", service=name,
                                     services=sorted(self.supervisors))
            target = b"/" + rest
            query = scope.get("query_string", b"")
            if query:
                target += b"?" + query
            prefix = supervisor.config.upstream_prefix
            if prefix:
                target = prefix.encode() + target
            has_body = any(n == b"content-length" and v.strip() != b"0"
                           or n == b"transfer-encoding" for n, v in headers)
            body = _ClientBody(receive, has_body)
            await self._serve(supervisor, scope, body, send, target, exchange)
        except GatewayError as error:
            if error.service is None:
                error.service = name
            if not exchange.response_started:
                await self._send_error(send, error, exchange)
            outcome = error.code
        except _ClientGone:
            outcome = "client_disconnected"
        else:
            outcome = None
        log.info("request", request_id=exchange.request_id, service=name,
                 method=scope["method"], path=raw_path.decode("latin-1"),
                 status=exchange.status, bytes=exchange.body_bytes,
                 duration_ms=round((trio.current_time() - began) * 1000, 2), error=outcome)

    async def _send_error(self, send: Send, error: GatewayError, exchange: _Exchange) -> None:
        status, headers, body = error_response(error, exchange.request_id)
        exchange.status = status
        exchange.response_started = True
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _serve(self, supervisor: Supervisor, scope: Scope, body: _ClientBody, send: Send,
                     target: bytes, exchange: _Exchange) -> None:
        lease = supervisor.acquire_nowait()
        if lease is None:
            lease = await self._wait_for_lease(supervisor, body)
        try:
            with lease.scope:
                await self._exchange(supervisor, scope, body, send, target, exchange)
        finally:
            supervisor.release(lease)
        if lease.error is not None:
            raise copy.copy(lease.error)  # one error revokes many leases: one copy each

    async def _wait_for_lease(self, supervisor: Supervisor, body: _ClientBody) -> Lease:
        lease: Lease | None = None
        error: GatewayError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(body.watch, nursery.cancel_scope)
            try:
                lease = await supervisor.acquire()
            except GatewayError as exc:
                error = exc
            nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        if body.disconnected or lease is None:
            if lease is not None:
                supervisor.release(lease)
            raise _ClientGone
        return lease

    async def _exchange(self, supervisor: Supervisor, scope: Scope, body: _ClientBody,
                        send: Send, target: bytes, exchange: _Exchange) -> None:
        timeouts = supervisor.config.timeouts
        request = h11.Request(method=scope["method"], target=target,
                              headers=self._request_headers(scope, supervisor, exchange))
        failure: GatewayError | _ClientGone | None = None
        async with trio.open_nursery() as nursery:
            scope = nursery.cancel_scope  # the total deadline, and the client going away
            if timeouts.total > 0:
                scope.deadline = trio.current_time() + timeouts.total
            try:
                conn = await self._send_request(supervisor, request, body)
                if body.done:
                    nursery.start_soon(self._watch_disconnect, body, exchange, scope)
                await self._relay_response(supervisor, conn, send, exchange, timeouts)
            except (GatewayError, _ClientGone) as exc:
                failure = exc  # raised below, outside the nursery's exception group
            finally:
                scope.cancel()
        if failure is not None:
            raise failure
        if not exchange.finished:
            if body.disconnected:
                raise _ClientGone
            raise UpstreamTimeout(
                f"the upstream exchange took longer than {timeouts.total}s", phase="total")

    @staticmethod
    async def _watch_disconnect(body: _ClientBody, exchange: _Exchange,
                                scope: trio.CancelScope) -> None:
        while True:
            message = await body.receive()
            if message["type"] == "http.disconnect":
                # Hypercorn also reports a disconnect once the response is complete.
                if not exchange.finished:
                    body.disconnected = True
                    scope.cancel()
                return

    async def _send_request(self, supervisor: Supervisor, request: h11.Request,
                            body: _ClientBody) -> Connection:
        connect_timeout = supervisor.config.timeouts.connect
        conn = await supervisor.pool.acquire(connect_timeout)
        try:
            await conn.send(request)
        except (trio.BrokenResourceError, OSError):
            await conn.aclose()
            if not conn.reused:
                raise UpstreamReset("the upstream closed the connection") from None
            # A kept-alive connection the upstream closed just now: once more, fresh.
            conn = await supervisor.pool.connect(connect_timeout)
            await self._send_or_reset(conn, request)
        try:
            async for chunk in body.chunks():
                await conn.send(h11.Data(data=chunk))
            await conn.send(h11.EndOfMessage())
        except (trio.BrokenResourceError, OSError):
            # The upstream may have answered early (413, 401) and closed: read that answer.
            pass
        except BaseException:
            await conn.aclose()
            raise
        return conn

    @staticmethod
    async def _send_or_reset(conn: Connection, event: h11.Event) -> None:
        try:
            await conn.send(event)
        except (trio.BrokenResourceError, OSError) as exc:
            await conn.aclose()
            raise UpstreamReset(f"cannot send to the upstream: {exc}") from None

    async def _relay_response(self, supervisor: Supervisor, conn: Connection, send: Send,
                              exchange: _Exchange, timeouts: Any) -> None:
        try:
            first_byte = timeouts.first_byte
            with trio.move_on_after(first_byte if first_byte > 0 else math.inf) as waited:
                response = await self._response_head(conn)
            if waited.cancelled_caught:
                raise UpstreamTimeout(f"no response from the upstream within {first_byte}s",
                                      phase="first_byte")
            exchange.status = response.status_code
            exchange.response_started = True
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": self._response_headers(response.headers, exchange)})
            # A chunk is held back only while the next event is already parsed: the last chunk
            # then goes out with the end of the message, and nothing waits on the upstream.
            held = b""
            while True:
                event = conn.next_event_nowait()
                if event is h11.NEED_DATA:
                    if held:
                        await send({"type": "http.response.body", "body": held,
                                    "more_body": True})
                        held = b""
                    await conn.receive()
                elif type(event) is h11.Data:
                    if held:
                        await send({"type": "http.response.body", "body": held,
                                    "more_body": True})
                    held = event.data
                    exchange.body_bytes += len(held)
                elif type(event) is h11.EndOfMessage:
                    break
                else:
                    raise UpstreamReset("the upstream closed the connection mid-body")
            exchange.finished = True
            await supervisor.pool.release(conn)
        except BaseException:
            await conn.aclose()
            raise
        await send({"type": "http.response.body", "body": held, "more_body": False})

    @staticmethod
    async def _response_head(conn: Connection) -> h11.Response:
        while True:
            event = await conn.next_event()
            if type(event) is h11.Response:
                return event
            if type(event) is h11.ConnectionClosed:
                raise UpstreamReset("the upstream closed the connection without answering")
            # InformationalResponse (100 Continue, 103): not forwarded over HTTP/1.1.

    @staticmethod
    def _request_headers(scope: Scope, supervisor: Supervisor,
                         exchange: _Exchange) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        dropped = set(HOP_BY_HOP)
        for name, value in headers:
            if name == b"connection":
                dropped.update(t.strip().lower() for t in value.split(b","))
        out: list[tuple[bytes, bytes]] = []
        host = forwarded_for = None
        chunked = has_length = False
        for name, value in headers:
            if name in dropped:
                chunked = chunked or name == b"transfer-encoding"
            elif name == b"host":
                host = value
            elif name == b"x-forwarded-for":
                forwarded_for = value
            elif name not in (b"x-request-id", b"x-forwarded-proto", b"x-forwarded-host"):
                has_length = has_length or name == b"content-length"
                out.append((name, value))
        config = supervisor.config
        out.append((b"host", f"{config.upstream_host}:{config.upstream_port}".encode()))
        client = scope.get("client")
        if client:
            ip = client[0].encode()
            out.append((b"x-forwarded-for", forwarded_for + b", " + ip if forwarded_for else ip))
        out.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
        if host:
            out.append((b"x-forwarded-host", host))
        out.append((b"x-request-id", exchange.request_id.encode()))
        if chunked and not has_length:
            out.append((b"transfer-encoding", b"chunked"))
        return out

    @staticmethod
    def _response_headers(headers: list[tuple[bytes, bytes]],
                          exchange: _Exchange) -> list[tuple[bytes, bytes]]:
        # The client sees the request id Hestia logged, whatever the upstream says.
        dropped = HOP_BY_HOP | {b"x-request-id"}
        for name, value in headers:
            if name == b"connection":
                dropped = dropped | {t.strip().lower() for t in value.split(b",")}
        out = [(name, value) for name, value in headers if name not in dropped]
        out.append((b"x-request-id", exchange.request_id.encode()))
        return out
