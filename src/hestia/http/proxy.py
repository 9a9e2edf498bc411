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
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import unquote

import structlog
import trio

from ..config import ActivityIgnoreConfig
from ..errors import (
    BackendCrashed,
    BackendSleeping,
    BadFraming,
    BodyTooLarge,
    GatewayError,
    HeadersTooLarge,
    UnknownService,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_response,
)
from ..lifecycle.supervisor import Lease, Supervisor
from ..metrics import Metrics
from ..observability import request_id_from
from ..routing.router import Route
from ..routing.strategy import LocalAnswer, NoRoute, RequestContext
from .forwarding import (
    CONNECTION_CLOSE,
    FRAMING,
    HOP_BY_HOP,
    carries_key,
    forwarded_headers,
    request_framing,
    response_headers,
)
from .upstream import (
    LAST_CHUNK,
    BodyReader,
    Connection,
    ResponseHead,
    encode_chunk,
    request_head,
)

__all__ = ["HOP_BY_HOP", "PREFIX", "ProxyHandler", "acquire_watching", "check_header_size",
           "request_context"]

log = structlog.get_logger("hestia.proxy")

PREFIX = b"/services/"
# Methods a request may be sent again for, when a kept-alive connection turns out closed.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
# The fast path: a response complete within this long is answered without a second task.
QUICK = 0.05
# While a request waits for its backend, this much of its body is read ahead so that a client
# going away is noticed; past it, reading stops until the upstream takes the body (backpressure).
WAIT_READ_AHEAD = 64 * 1024
# Reading what is left of a request body after an early answer: at most this much, this long.
DRAIN_MAX = 16 * 1024 * 1024
DRAIN_S = 5.0

Scope = dict[str, Any]
Receive = Any
Send = Any


class _ClientGone(Exception):
    """The client disconnected; nothing more can be answered."""


class _ClientBody:
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
        """The body, chunk by chunk. Raises `_ClientGone`, `BodyTooLarge` past `limit` (a
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
        `_ClientGone`."""
        message = await self.receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
            raise _ClientGone
        if not message.get("more_body", False):
            self.done = True
        return message.get("body", b"")

    async def prefetch(self, limit: int) -> bytes:
        """Read the whole body ahead, for a strategy that routes by it, keeping it to forward
        unchanged. Raises `BodyTooLarge` past `limit` (`strategy.max_body`), `_ClientGone`."""
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


class _Exchange:
    """What one proxied request has done so far (for the error path and the log line)."""

    __slots__ = ("request_id", "service", "status", "response_started", "finished", "body_bytes",
                 "total_deadline", "first_byte_deadline", "sent_at", "backend", "route",
                 "reuse_connection")

    def __init__(self, request_id: str, service: str | None) -> None:
        self.request_id = request_id
        self.service = service
        self.status = 0
        self.response_started = False
        self.finished = False  # the upstream's response was read to its end
        self.body_bytes = 0
        self.total_deadline = math.inf
        self.first_byte_deadline = math.inf
        self.sent_at = 0.0
        self.backend = service  # the backend's id (`<service>@<backend>` with several)
        self.route: str | None = None  # why the strategy chose it (several backends only)
        # The request's head and whole body went upstream as framed, by Content-Length. Only
        # then, and once the response was read to its end, may the connection serve another.
        self.reuse_connection = False


class _IgnoreRules:
    """`activity.ignore` of one service, ready to match raw request paths and user agents."""

    __slots__ = ("exact", "prefixes", "agents")

    def __init__(self, config: ActivityIgnoreConfig) -> None:
        self.exact = {p.encode() for p in config.paths if not p.endswith("*")}
        self.prefixes = tuple(p[:-1].encode() for p in config.paths if p.endswith("*"))
        self.agents = tuple(a.lower().encode() for a in config.user_agents)

    def match(self, path: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
        if path in self.exact or (self.prefixes and path.startswith(self.prefixes)):
            return True
        if self.agents:
            for name, value in headers:
                if name == b"user-agent":
                    agent = value.lower()
                    return any(a in agent for a in self.agents)
        return False


class ProxyHandler:
    """ASGI handler for every `http` request whose path starts with `/services/`."""

    def __init__(self, supervisors: Mapping[str, Supervisor],
                 metrics: Metrics | None = None, routes: Mapping[str, Route] | None = None,
                 ) -> None:
        self.supervisors = supervisors
        self.metrics = metrics
        self.routes = routes if routes is not None else {
            name: Route(name, [(name, sup)]) for name, sup in supervisors.items()}
        self._ignore = {name: _IgnoreRules(sup.config.activity.ignore)
                        for name, sup in supervisors.items()
                        if sup.config.activity.ignore.paths
                        or sup.config.activity.ignore.user_agents}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        began = trio.current_time()
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        service_id, _, rest = raw_path[len(PREFIX):].partition(b"/")
        name = service_id.decode("latin-1")
        if "%" in name:
            name = unquote(name)
        exchange = _Exchange(request_id_from(headers), name)
        body: _ClientBody | None = None
        try:
            route = self.routes.get(name)
            if route is None:
                raise UnknownService(f"no service named {name!r}", service=name,
                                     services=sorted(self.routes))
            target = b"/" + rest
            query = scope.get("query_string", b"")
            if query:
                target += b"?" + query
            limits = route.first.config.limits
            if limits.max_header_size:
                check_header_size(scope, limits.max_header_size)
            framing = request_framing(scope, limits.max_body_size)
            upstream_headers = forwarded_headers(
                scope, exchange.request_id, drop=FRAMING,
                proto=scope.get("scheme", "http").encode())
            if framing.header is not None:
                upstream_headers.append(framing.header)
                if framing.length is None:
                    upstream_headers.append(CONNECTION_CLOSE)  # see `_send_request`
            body = _ClientBody(receive, framing.length, limits.max_body_size)
            supervisor = route.single
            if supervisor is not None:  # the hot path: no strategy, no extra call
                rules = self._ignore.get(name)
                passive = rules is not None and rules.match(b"/" + rest, headers)
                await self._serve(supervisor, scope, body, send, target, upstream_headers,
                                  exchange, passive)
            else:
                await self._route(route, scope, body, send, target, rest, upstream_headers,
                                  exchange)
        except GatewayError as error:
            if error.service is None:
                error.service = name
            if not exchange.response_started:
                # `POST /v1/requests` answers Hestia's own errors as such (see dispatch.py).
                scope.get("hestia.errors", []).append(error)
                if body is None or not (body.done or body.disconnected):
                    # Hypercorn closes the connection as soon as an answer is complete while
                    # the request is not: drain first, so the client gets to read it.
                    await _drain(receive)
                await self._send_error(send, error, exchange)
            outcome = error.code
        except _ClientGone:
            outcome = "client_disconnected"
        else:
            outcome = None
        if self.metrics is not None:
            self.metrics.request(exchange.backend, exchange.status,
                                 trio.current_time() - began)
        log.info("request", request_id=exchange.request_id, service=name,
                 method=scope["method"], path=raw_path.decode("latin-1"),
                 status=exchange.status, bytes=exchange.body_bytes,
                 duration_ms=round((trio.current_time() - began) * 1000, 2), error=outcome,
                 key=scope.get("hestia.key"), backend=exchange.backend, route=exchange.route)

    async def _forward(self, supervisor: Supervisor, scope: Scope, body: _ClientBody,
                       send: Send, target: bytes, rest: bytes,
                       headers: list[tuple[bytes, bytes]],
                       exchange: _Exchange) -> None:
        exchange.backend = supervisor.name
        rules = self._ignore.get(supervisor.name)
        passive = rules is not None and rules.match(b"/" + rest, scope["headers"])
        await self._serve(supervisor, scope, body, send, target, headers, exchange,
                          passive)

    async def _route(self, route: Route, scope: Scope, body: _ClientBody, send: Send,
                     target: bytes, rest: bytes, headers: list[tuple[bytes, bytes]],
                     exchange: _Exchange) -> None:
        """Several backends: the strategy answers (a model listing) or picks one. A backend
        whose upstream refused the connection, or that died under a request nothing of whose
        answer had come yet, is marked unhealthy, and the request goes once to another: for a
        refused connection always (nothing was sent), for a crash or reset only when sending it
        again is safe (an idempotent method, none of whose body has been sent)."""
        parsed = None
        if route.needs_body and not body.done:
            try:
                parsed = json.loads(await body.prefetch(route.config.max_body))
            except ValueError:
                parsed = None  # not JSON: the strategy routes without it
        ctx = request_context(scope, rest, parsed)
        local = route.answer(ctx)
        if local is not None:
            exchange.route = "local"
            await self._send_local(send, local, exchange)
            return
        supervisor, decision = route.pick(ctx)
        exchange.route = decision.reason
        if self.metrics is not None:
            self.metrics.routed(route.service, decision.backend, decision.reason)
        try:
            await self._forward(supervisor, scope, body, send, target, rest, headers,
                                exchange)
        except (UpstreamUnreachable, UpstreamReset, BackendCrashed) as exc:
            safe = isinstance(exc, UpstreamUnreachable) or (
                scope["method"].encode() in IDEMPOTENT)
            if body.pulled or exchange.response_started or not safe:
                raise
            route.mark_unhealthy(decision.backend, exc.detail)
            try:
                supervisor, decision = route.pick(ctx, frozenset({decision.backend}))
            except NoRoute:
                raise exc from None
            exchange.route = decision.reason
            if self.metrics is not None:
                self.metrics.routed(route.service, decision.backend, decision.reason)
            log.info("request_failover", request_id=exchange.request_id,
                     service=route.service, backend=decision.backend, detail=exc.detail)
            await self._forward(supervisor, scope, body, send, target, rest, headers,
                                exchange)
        if exchange.status >= 500:
            route.mark_unhealthy(decision.backend, f"answered {exchange.status}")

    async def _send_local(self, send: Send, answer: LocalAnswer, exchange: _Exchange) -> None:
        exchange.status = answer.status
        exchange.response_started = exchange.finished = True
        exchange.body_bytes = len(answer.body)
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                   for k, v in answer.headers]
        headers += [(b"content-length", str(len(answer.body)).encode()),
                    (b"x-request-id", exchange.request_id.encode())]
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": headers})
        await send({"type": "http.response.body", "body": answer.body, "more_body": False})

    async def _send_error(self, send: Send, error: GatewayError, exchange: _Exchange) -> None:
        status, headers, body = error_response(error, exchange.request_id)
        exchange.status = status
        exchange.response_started = True
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _serve(self, supervisor: Supervisor, scope: Scope, body: _ClientBody, send: Send,
                     target: bytes, headers: list[tuple[bytes, bytes]],
                     exchange: _Exchange, passive: bool) -> None:
        lease = supervisor.acquire_nowait(passive=passive)
        if lease is None:
            if passive:
                # An uptime monitor or health checker must not wake what sleeps.
                raise BackendSleeping(
                    f"{supervisor.name!r} is not running, and this request does not wake it "
                    "(activity.ignore)", service=supervisor.name,
                    retry_after=supervisor.retry_after(), state="sleeping")
            waited = trio.current_time()
            lease = await self._wait_for_lease(supervisor, body)
            if self.metrics is not None:
                self.metrics.queue_wait(supervisor.name, trio.current_time() - waited)
        # Where the backend runs is known only now (a fallback placement has its own upstream).
        placement = supervisor.placement
        request = request_head(scope["method"].encode(), placement.prefix + target,
                               [*headers, (b"host", placement.host_header)])
        try:
            await self._exchange(supervisor, lease, scope, body, send, request,
                                 exchange)
        finally:
            supervisor.release(lease)

    async def _wait_for_lease(self, supervisor: Supervisor, body: _ClientBody) -> Lease:
        lease = await acquire_watching(supervisor, body.watch)
        if body.disconnected or lease is None:
            if lease is not None:
                supervisor.release(lease)
            raise _ClientGone
        return lease

    async def _exchange(self, supervisor: Supervisor, lease: Lease, scope: Scope,
                        body: _ClientBody, send: Send, request: bytes,
                        exchange: _Exchange) -> None:
        """Send the request; then, when the whole response is there within `QUICK`, answer it
        at once (the fast path); else stream it while watching the client (`_stream`).

        The fast path exists because it runs in one cancel scope and no extra task: a task and
        its nursery per request cost more than the rest of Hestia's own work together
        (docs/performance.md). A client that goes away is seen within `QUICK` at the latest.
        """
        timeouts = supervisor.config.timeouts
        method = scope["method"].encode()
        if timeouts.total > 0:
            exchange.total_deadline = trio.current_time() + timeouts.total
        conn: Connection | None = None
        head: ResponseHead | None = None
        reader: BodyReader | None = None
        data = b""
        quick = False  # whether the fast path's own deadline is armed
        try:
            # One cancel scope serves the deadlines and the lease's revocation; the cause of a
            # cancellation is told apart afterwards, in `_cut_short`.
            with trio.CancelScope(deadline=exchange.total_deadline) as cancel:
                lease.bind(cancel)
                retryable = method in IDEMPOTENT
                conn = await self._send_request(supervisor, request, body, exchange,
                                                retryable=retryable)
                now = exchange.sent_at = trio.current_time()
                if timeouts.first_byte > 0:
                    exchange.first_byte_deadline = now + timeouts.first_byte
                cancel.deadline = min(exchange.total_deadline, exchange.first_byte_deadline,
                                      now + QUICK)
                quick = True
                try:
                    head = await conn.read_head(method)
                except UpstreamReset:
                    if not (retryable and conn.reused and not conn.received
                            and not body.pulled):
                        raise
                    # The upstream had closed this kept-alive connection just before the
                    # request went out; it never saw the request. Once more, fresh, and to
                    # the end in this scope (this rare request does without the watcher).
                    quick = False
                    cancel.deadline = min(exchange.total_deadline,
                                          exchange.first_byte_deadline)
                    await conn.aclose()
                    conn = None
                    conn = await self._send_request(supervisor, request, body,
                                                    exchange, retryable=True, fresh=True)
                    head = await conn.read_head(method)
                reader = BodyReader(conn, head)
                data = reader.take()
                self._first_byte(supervisor, exchange)
            if cancel.cancelled_caught:
                self._cut_short(lease, body, exchange, timeouts, quick_ok=quick)
            assert conn is not None
            if reader is None or not reader.done:
                await self._stream(supervisor, lease, conn, method, reader, data, body, send,
                                   exchange)
                return
            assert head is not None
            exchange.status = head.status
            exchange.body_bytes = len(data)
            exchange.finished = exchange.response_started = True
            await _give_back(supervisor, conn, exchange)
        except BaseException:
            if conn is not None and not exchange.finished:
                await conn.aclose()
            raise
        await send({"type": "http.response.start", "status": head.status,
                    "headers": response_headers(head.headers, exchange.request_id)})
        await send({"type": "http.response.body", "body": data, "more_body": False})

    async def _stream(self, supervisor: Supervisor, lease: Lease, conn: Connection,
                      method: bytes, reader: BodyReader | None, data: bytes, body: _ClientBody,
                      send: Send, exchange: _Exchange) -> None:
        """The slow path: wait for the head if it is not there yet, then relay the body as it
        arrives, while a second task watches for the client going away."""
        failure: GatewayError | _ClientGone | None = None
        async with trio.open_nursery() as nursery:
            cancel = nursery.cancel_scope
            cancel.deadline = (exchange.total_deadline if reader is not None else
                               min(exchange.total_deadline, exchange.first_byte_deadline))
            lease.bind(cancel)
            try:
                if body.done:
                    nursery.start_soon(self._watch_disconnect, body, exchange, cancel)
                if reader is None:
                    reader = BodyReader(conn, await conn.read_head(method))
                    self._first_byte(supervisor, exchange)
                    cancel.deadline = exchange.total_deadline
                    data = reader.take()
                head = reader.head
                exchange.status = head.status
                exchange.response_started = True
                await send({"type": "http.response.start", "status": head.status,
                            "headers": response_headers(head.headers, exchange.request_id)})
                exchange.body_bytes += len(data)
                # `read` returns all that has arrived and says when that was the end, so the
                # last bytes go out with the end of the message and nothing waits on them.
                while not reader.done:
                    if data:
                        await send({"type": "http.response.body", "body": data,
                                    "more_body": True})
                    data = await reader.read()
                    exchange.body_bytes += len(data)
                exchange.finished = True
                await _give_back(supervisor, conn, exchange)
            except (GatewayError, _ClientGone) as exc:
                failure = exc  # raised below, outside the nursery's exception group
            finally:
                cancel.cancel()
                if not exchange.finished:
                    await conn.aclose()
        if failure is not None:
            raise failure
        if not exchange.finished:
            self._cut_short(lease, body, exchange, supervisor.config.timeouts, quick_ok=False)
        await send({"type": "http.response.body", "body": data, "more_body": False})

    def _first_byte(self, supervisor: Supervisor, exchange: _Exchange) -> None:
        if self.metrics is not None:
            self.metrics.first_byte(supervisor.name, trio.current_time() - exchange.sent_at)

    @staticmethod
    def _cut_short(lease: Lease, body: _ClientBody, exchange: _Exchange, timeouts: Any, *,
                   quick_ok: bool) -> None:
        """Raise what cancelled the exchange; return when it was only the fast path's end."""
        if lease.error is not None:
            raise copy.copy(lease.error)  # one error revokes many leases: one copy each
        if body.disconnected:
            raise _ClientGone
        now = trio.current_time()
        if not exchange.response_started and now >= exchange.first_byte_deadline and \
                exchange.first_byte_deadline <= exchange.total_deadline:
            raise UpstreamTimeout(
                f"no response from the upstream within {timeouts.first_byte}s",
                phase="first_byte")
        if now >= exchange.total_deadline or not quick_ok:
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

    async def _send_request(self, supervisor: Supervisor, request: bytes, body: _ClientBody,
                            exchange: _Exchange, *, retryable: bool, fresh: bool = False,
                            ) -> Connection:
        """A connection on which the request (head and body) has been sent, or as much of it
        as the upstream took before it answered early (`exchange.reuse_connection` is set only
        when the whole body went out, framed by its length).
        Raises `UpstreamUnreachable`, `UpstreamTimeout`, `UpstreamReset`, `BadFraming`,
        `BodyTooLarge` or `_ClientGone`, having closed the connection."""
        exchange.reuse_connection = False
        chunked = body.length is None
        connect_timeout = supervisor.config.timeouts.connect
        pool = supervisor.pool
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
                conn = await supervisor.pool.connect(connect_timeout)
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
                exchange.reuse_connection = not chunked
            except (trio.BrokenResourceError, OSError):
                pass  # the upstream may have answered early (413, 401) and closed: read that
        except BaseException:
            await conn.aclose()
            raise
        return conn


async def _give_back(supervisor: Supervisor, conn: Connection, exchange: _Exchange) -> None:
    """After a response read to its end: the connection goes back to the pool only when the
    request also went out whole, framed by its length. Bytes of a request body still owed would
    otherwise be read by the upstream as the start of the next client's request."""
    if exchange.reuse_connection:
        await supervisor.pool.release(conn)
    else:
        await conn.aclose()


async def acquire_watching(supervisor: Supervisor,
                           watch: Callable[[trio.CancelScope], Awaitable[None]],
                           ) -> Lease | None:
    """A lease (waiting in the hold queue if need be) while `watch(scope)` looks out for the
    client leaving, and cancels `scope` when it does: then None, or a lease granted in the same
    instant, which the caller gives back. Raises what `acquire` raises."""
    lease: Lease | None = None
    error: GatewayError | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, nursery.cancel_scope)
        try:
            lease = await supervisor.acquire()
        except GatewayError as exc:
            error = exc  # raised outside the nursery, not inside an exception group
        nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    return lease


async def _drain(receive: Receive) -> None:
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


def request_context(scope: Scope, rest: bytes, parsed: Any = None) -> RequestContext:
    """What a strategy may know of a request (`parsed`: its JSON body, when it asked)."""
    client = scope.get("client")
    return RequestContext(
        method=scope.get("method", "GET"), path=(b"/" + rest).decode("latin-1"),
        query=scope.get("query_string", b"").decode("latin-1"),
        headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                 if not carries_key(k, v)},
        client=client[0] if client else None, json=parsed)


def check_header_size(scope: Scope, limit: int) -> None:
    """Raise `HeadersTooLarge` when the request line and headers exceed `limit` bytes."""
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b"")) + 16
    for name, value in scope["headers"]:
        size += len(name) + len(value) + 4
    if size > limit:
        raise HeadersTooLarge(f"the request headers ({size} bytes) are larger than this "
                              f"service's limit of {limit} bytes (limits.max_header_size)",
                              limit=limit)
