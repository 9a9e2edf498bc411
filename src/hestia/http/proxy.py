"""The transparent proxy: every `http` request for a service (`/services/{id}/{path}`, or any
path on a service's host name), as a plain ASGI handler: routing and failover, the lease, and the
exchange with the upstream.

It sits in front of the Quart app's routing (`app.asgi_app`), because the data plane needs what
a framework request object hides: the raw path, and the request body as ASGI messages (read with
backpressure: http/client_body.py). Each `send` waits for the client's socket, so a download
never sits in memory either. What crosses and how it is framed is http/forwarding.py's; what the
upstream's answer says of its own address is rewritten by http/rewrite.py.

One exchange: take a lease (at once when READY, else in the hold queue, watching for the client
going away meanwhile; a browser navigation gets the waiting page instead), open or reuse a
connection to the upstream, stream the request, stream the response chunk by chunk as it
arrives, release the lease. A client that disconnects mid-response cancels the exchange at once;
an upstream that dies mid-response truncates the client's response (the connection is closed
without the end of the message), never a clean, complete body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import structlog
import trio

from ..errors import (
    BackendCrashed,
    BackendSleeping,
    GatewayError,
    NoRoute,
    UnknownService,
    UpstreamReset,
    UpstreamUnreachable,
    error_response,
)
from ..lifecycle.leases import State
from ..lifecycle.supervisor import Lease, Supervisor
from ..metrics import Metrics
from ..observability import request_id_from
from ..routing.router import Route
from ..routing.strategy import LocalAnswer
from ..upstream import (
    BodyReader,
    Connection,
    ResponseHead,
    request_head,
)
from . import waiting
from .addressing import PREFIX, Addressing
from .browser import is_navigation
from .client_body import ClientBody, ClientGone, drain
from .context import facts
from .exchange import cut_short, give_back, send_request, watch_disconnect
from .forwarding import (
    CONNECTION_CLOSE,
    FRAMING,
    HOP_BY_HOP,
    forwarded_headers,
    request_framing,
    response_headers,
)
from .request import IgnoreRules, ProxyRequest, check_header_size, request_context, unknown
from .rewrite import Rewrite

__all__ = ["HOP_BY_HOP", "PREFIX", "ProxyHandler", "check_header_size", "request_context"]

log = structlog.get_logger("hestia.proxy")

# Methods a request may be sent again for, when a kept-alive connection turns out closed.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
# The fast path: a response complete within this long is answered without a second task.
QUICK = 0.05
# A navigation to a backend in one of these states gets the waiting page (READY ones are held:
# they are only busy, or draining before a stop).
_WAITING = frozenset({State.COLD, State.STARTING, State.STOPPING, State.FAILED})

Scope = dict[str, Any]
Receive = Any
Send = Any


class ProxyHandler:
    """ASGI handler for every `http` request addressed to a service."""

    def __init__(self, supervisors: Mapping[str, Supervisor],
                 metrics: Metrics | None = None, routes: Mapping[str, Route] | None = None,
                 addressing: Addressing | None = None) -> None:
        self.supervisors = supervisors
        self.metrics = metrics
        self.routes = routes if routes is not None else {
            name: Route(name, [(name, sup)]) for name, sup in supervisors.items()}
        self.addressing = addressing or Addressing(self.routes)
        # By backend, with the settings they were made from: a reload may change them.
        self._ignore: dict[str, tuple[object, IgnoreRules | None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.forward(scope, receive, send)

    def _ignore_rules(self, supervisor: Supervisor) -> IgnoreRules | None:
        """`activity.ignore` of the backend, compiled once per configuration it has had."""
        settings = supervisor.config.activity.ignore
        known = self._ignore.get(supervisor.name)
        if known is None or known[0] is not settings:
            known = self._ignore[supervisor.name] = (settings, IgnoreRules.of(settings))
        return known[1]

    async def forward(self, scope: Scope, receive: Receive, send: Send, *,
                      answer_errors: bool = True) -> None:
        """Serve one request. Hestia's own errors are answered as JSON (or a page), unless
        `answer_errors` is off: then one that comes before the response began is raised, for
        a caller with an answer of its own to make (`POST /v1/requests`)."""
        began = trio.current_time()
        address = self.addressing.resolve(scope)
        req = ProxyRequest(scope, address, send, request_id_from(scope["headers"]))
        name = req.service
        outcome: str | None = None
        try:
            await self._handle(req, receive)
        except GatewayError as error:
            outcome = error.code
            if error.service is None:
                error.service = name
            if not req.response_started:
                if not answer_errors:
                    raise
                body = req.body
                if body is None or not (body.done or body.disconnected):
                    # Hypercorn closes the connection as soon as an answer is complete while
                    # the request is not: drain first, so the client gets to read it.
                    await drain(receive)
                await self._send_error(req, error)
        except ClientGone:
            outcome = "client_disconnected"
        finally:
            if self.metrics is not None:
                self.metrics.request(req.backend, req.status, trio.current_time() - began)
            log.info("request", request_id=req.request_id, service=name,
                     method=scope["method"],
                     path=(scope.get("raw_path") or b"").decode("latin-1"), status=req.status,
                     bytes=req.body_bytes,
                     duration_ms=round((trio.current_time() - began) * 1000, 2),
                     error=outcome, key=facts(scope).key, backend=req.backend, route=req.route)

    async def _handle(self, req: ProxyRequest, receive: Receive) -> None:
        scope, address, name = req.scope, req.address, req.service
        route = self.routes.get(name) if name is not None else None
        if route is None:
            raise unknown(address, self.routes)
        limits = route.first.config.limits
        if limits.max_header_size:
            check_header_size(scope, limits.max_header_size)
        framing = request_framing(scope, limits.max_body_size)
        headers = req.headers = forwarded_headers(
            scope, req.request_id, drop=FRAMING, proto=scope.get("scheme", "http").encode())
        if address.prefix:
            headers.append((b"x-forwarded-prefix", address.prefix))
        if framing.header is not None:
            headers.append(framing.header)
            if framing.length is None:
                headers.append(CONNECTION_CLOSE)  # see `exchange.send_request`
        req.body = ClientBody(receive, framing.length, limits.max_body_size)
        supervisor = route.single
        if supervisor is not None:  # the hot path: no strategy, no extra call
            await self._serve(supervisor, req)
        else:
            await self._route(route, req)

    async def _route(self, route: Route, req: ProxyRequest) -> None:
        """Several backends: the strategy answers (a model listing) or picks one. A backend
        whose upstream refused the connection, or that died under a request nothing of whose
        answer had come yet, is marked unhealthy, and the request goes once to another: for a
        refused connection always (nothing was sent), for a crash or reset only when sending it
        again is safe (an idempotent method, none of whose body has been sent)."""
        body = req.body
        assert body is not None
        parsed = None
        if route.needs_body and not body.done:
            try:
                parsed = json.loads(await body.prefetch(route.config.max_body))
            except ValueError:
                parsed = None  # not JSON: the strategy routes without it
        ctx = request_context(req.scope, req.address.path, parsed)
        local = route.answer(ctx)
        if local is not None:
            req.route = "local"
            await self._send_local(req, local)
            return
        supervisor, decision = route.pick(ctx)
        req.route = decision.reason
        if self.metrics is not None:
            self.metrics.routed(route.service, decision.backend, decision.reason)
        try:
            req.backend = supervisor.name
            await self._serve(supervisor, req)
        except (UpstreamUnreachable, UpstreamReset, BackendCrashed) as exc:
            safe = isinstance(exc, UpstreamUnreachable) or req.method in IDEMPOTENT
            if body.pulled or req.response_started or not safe:
                raise
            route.mark_unhealthy(decision.backend, exc.detail)
            try:
                supervisor, decision = route.pick(ctx, frozenset({decision.backend}))
            except NoRoute:
                raise exc from None
            req.route = decision.reason
            if self.metrics is not None:
                self.metrics.routed(route.service, decision.backend, decision.reason)
            log.info("request_failover", request_id=req.request_id,
                     service=route.service, backend=decision.backend, detail=exc.detail)
            req.backend = supervisor.name
            await self._serve(supervisor, req)
        if req.status >= 500:
            route.mark_unhealthy(decision.backend, f"answered {req.status}")

    async def _send_local(self, req: ProxyRequest, answer: LocalAnswer) -> None:
        req.status = answer.status
        req.response_started = req.finished = True
        req.body_bytes = len(answer.body)
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                   for k, v in answer.headers]
        headers += [(b"content-length", str(len(answer.body)).encode()),
                    (b"x-request-id", req.request_id.encode())]
        await self._respond(req, answer.status, headers, answer.body)

    async def _send_error(self, req: ProxyRequest, error: GatewayError) -> None:
        if isinstance(error, UnknownService) and is_navigation(req.scope["method"],
                                                               req.scope["headers"]):
            page = waiting.not_found_response(
                sorted(self.routes), req.request_id, req.address.unknown_host,
                links=waiting.service_links(self.addressing, req.scope["headers"]))
            await self._respond(req, *page)
            return
        await self._respond(req, *error_response(error, req.request_id))

    @staticmethod
    async def _respond(req: ProxyRequest, status: int, headers: list[tuple[bytes, bytes]],
                       body: bytes) -> None:
        """A whole answer of the gateway's own."""
        req.status = status
        req.response_started = True
        await req.send({"type": "http.response.start", "status": status, "headers": headers})
        await req.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _serve(self, supervisor: Supervisor, req: ProxyRequest) -> None:
        rules = self._ignore_rules(supervisor)
        passive = rules is not None and rules.match(req.address.path, req.scope["headers"])
        lease = supervisor.acquire_nowait(passive=passive)
        if lease is None:
            if passive:
                # An uptime monitor or health checker must not wake what sleeps.
                raise BackendSleeping(
                    f"{supervisor.name!r} is not running, and this request does not wake it "
                    "(activity.ignore)", service=supervisor.name,
                    retry_after=supervisor.retry_after(), state="sleeping")
            if supervisor.state in _WAITING and supervisor.config.waiting_page and \
                    is_navigation(req.scope["method"], req.scope["headers"]):
                await self._waiting_page(supervisor, req)
                return
            waited = trio.current_time()
            lease = await self._wait_for_lease(supervisor, req)
            if self.metrics is not None:
                self.metrics.queue_wait(supervisor.name, trio.current_time() - waited)
        # Where the backend runs is known only now (a fallback placement has its own upstream).
        placement = lease.placement
        host = placement.host_header
        if supervisor.config.preserve_host:
            host = next((v for k, v in req.scope["headers"] if k == b"host"), host)
        request = request_head(req.method, placement.prefix + req.target,
                               [*req.headers, (b"host", host)])
        rewrite = Rewrite(placement.host_header.lower(), placement.prefix, req.address.prefix,
                          supervisor.config.rewrite_cookie_path)
        try:
            await self._exchange(supervisor, lease, req, request, rewrite)
        finally:
            supervisor.release(lease)

    async def _waiting_page(self, supervisor: Supervisor, req: ProxyRequest) -> None:
        """A browser opening a backend that is not READY: the page that follows its start and
        reloads into the app. The navigation starts it (unless its last start failed: the page
        says why and offers to try again)."""
        if supervisor.state is not State.FAILED:
            supervisor.request_start()
        body = req.body
        assert body is not None
        if not body.done:
            await drain(body.receive)
        await self._respond(req, *waiting.waiting_response(
            supervisor, req.address, req.request_id, query=req.scope.get("query_string", b"")))
        req.finished = True

    async def _wait_for_lease(self, supervisor: Supervisor, req: ProxyRequest) -> Lease:
        body = req.body
        assert body is not None
        lease = await supervisor.acquire_watching(body.watch)
        if body.disconnected or lease is None:
            if lease is not None:
                supervisor.release(lease)
            raise ClientGone
        return lease

    async def _exchange(self, supervisor: Supervisor, lease: Lease, req: ProxyRequest,
                        request: bytes, rewrite: Rewrite) -> None:
        """Send the request; then, when the whole response is there within `QUICK`, answer it
        at once (the fast path); else stream it while watching the client (`_stream`).

        The fast path exists because it runs in one cancel scope and no extra task: a task and
        its nursery per request cost more than the rest of Hestia's own work together
        (docs/performance.md). A client that goes away is seen within `QUICK` at the latest.
        """
        timeouts = lease.timeouts
        body = req.body
        assert body is not None
        method = req.method
        if timeouts.total > 0:
            req.total_deadline = trio.current_time() + timeouts.total
        conn: Connection | None = None
        head: ResponseHead | None = None
        reader: BodyReader | None = None
        data = b""
        quick = False  # whether the fast path's own deadline is armed
        try:
            # One cancel scope serves the deadlines and the lease's revocation; the cause of a
            # cancellation is told apart afterwards, in `cut_short`.
            with trio.CancelScope(deadline=req.total_deadline) as cancel:
                lease.bind(cancel)
                retryable = method in IDEMPOTENT
                conn = await send_request(lease, request, req, retryable=retryable)
                now = req.sent_at = trio.current_time()
                if timeouts.first_byte > 0:
                    req.first_byte_deadline = now + timeouts.first_byte
                cancel.deadline = min(req.total_deadline, req.first_byte_deadline, now + QUICK)
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
                    cancel.deadline = min(req.total_deadline, req.first_byte_deadline)
                    await conn.aclose()
                    conn = None
                    conn = await send_request(lease, request, req, retryable=True,
                                               fresh=True)
                    head = await conn.read_head(method)
                reader = BodyReader(conn, head)
                data = reader.take()
                self._first_byte(supervisor, req)
            if cancel.cancelled_caught:
                cut_short(lease, req, quick_ok=quick)
            assert conn is not None
            if reader is None or not reader.done:
                await self._stream(supervisor, lease, conn, reader, data, req, rewrite)
                return
            assert head is not None
            req.status = head.status
            req.body_bytes = len(data)
            req.finished = req.response_started = True
            await give_back(lease, conn, req)
        except BaseException:
            if conn is not None and not req.finished:
                await conn.aclose()
            raise
        await req.send({"type": "http.response.start", "status": head.status,
                        "headers": response_headers(head.headers, req.request_id, rewrite)})
        await req.send({"type": "http.response.body", "body": data, "more_body": False})

    async def _stream(self, supervisor: Supervisor, lease: Lease, conn: Connection,
                      reader: BodyReader | None, data: bytes, req: ProxyRequest,
                      rewrite: Rewrite) -> None:
        """The slow path: wait for the head if it is not there yet, then relay the body as it
        arrives, while a second task watches for the client going away."""
        body = req.body
        assert body is not None
        send = req.send
        failure: GatewayError | ClientGone | None = None
        async with trio.open_nursery() as nursery:
            cancel = nursery.cancel_scope
            cancel.deadline = (req.total_deadline if reader is not None else
                               min(req.total_deadline, req.first_byte_deadline))
            lease.bind(cancel)
            try:
                if body.done:
                    nursery.start_soon(watch_disconnect, req, cancel)
                if reader is None:
                    reader = BodyReader(conn, await conn.read_head(req.method))
                    self._first_byte(supervisor, req)
                    cancel.deadline = req.total_deadline
                    data = reader.take()
                head = reader.head
                req.status = head.status
                req.response_started = True
                await send({"type": "http.response.start", "status": head.status,
                            "headers": response_headers(head.headers, req.request_id,
                                                        rewrite)})
                req.body_bytes += len(data)
                # `read` returns all that has arrived and says when that was the end, so the
                # last bytes go out with the end of the message and nothing waits on them.
                while not reader.done:
                    if data:
                        await send({"type": "http.response.body", "body": data,
                                    "more_body": True})
                    data = await reader.read()
                    req.body_bytes += len(data)
                req.finished = True
                await give_back(lease, conn, req)
            except (GatewayError, ClientGone) as exc:
                failure = exc  # raised below, outside the nursery's exception group
            finally:
                cancel.cancel()
                if not req.finished:
                    await conn.aclose()
        if failure is not None:
            raise failure
        if not req.finished:
            cut_short(lease, req, quick_ok=False)
        await send({"type": "http.response.body", "body": data, "more_body": False})

    def _first_byte(self, supervisor: Supervisor, req: ProxyRequest) -> None:
        if self.metrics is not None:
            self.metrics.first_byte(supervisor.name, trio.current_time() - req.sent_at)
