"""WebSocket proxying at `/services/{id}/{path}`: ASGI on the client side, trio-websocket to the
upstream.

One WebSocket: the handshake waits for a lease like any request (starting a cold backend, in
the hold queue, answered 503 JSON on failure); then the upstream handshake is made with the
client's subprotocols and end-to-end headers; only once the upstream accepted is the client
accepted, with the subprotocol the upstream chose (an upstream that rejects the handshake has
its answer relayed). Then two tasks relay messages, text and binary, each way. Pings are
answered on each leg by its own end (hypercorn towards the client, trio-websocket towards the
upstream), which keeps both connections alive.

Close codes and reasons pass both ways. An upstream connection that is lost without a close
(the backend crashed) closes the client with 1011; a backend that is stopped under the socket
closes it with 1001. The open socket holds a lease, so the backend does not idle-stop under it,
unless the service sets `activity.websockets: ignore`.

Memory is bounded both ways: hypercorn queues at most `max_app_queue_size` client messages and
trio-websocket one upstream message, each at most `limits.max_message_size`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import structlog
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    connect_websocket,
)

from ..errors import (
    BackendStopped,
    GatewayError,
    UnknownService,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_response,
)
from ..lifecycle.supervisor import Lease, Supervisor
from ..observability import request_id_from
from ..routing.router import Route
from .proxy import HOP_BY_HOP, PREFIX, acquire_watching, check_header_size, request_context

__all__ = ["WebSocketProxy"]

log = structlog.get_logger("hestia.proxy")

# The handshake's own headers: the upstream handshake makes its own.
_HANDSHAKE = HOP_BY_HOP | {b"host", b"sec-websocket-key", b"sec-websocket-version",
                           b"sec-websocket-extensions", b"sec-websocket-protocol",
                           b"x-request-id", b"x-forwarded-proto", b"x-forwarded-host"}
# Codes an endpoint may not put in a close frame (RFC 6455 §7.4.1): only ever reported.
_UNSENDABLE = {1004, 1005, 1006, 1015}
_RECEIVE_BUFFER = 64 * 1024


class _Closed(Exception):
    """The client left while its WebSocket waited for the backend."""


class _Relay:
    """What one proxied WebSocket has done (for the log line)."""

    __slots__ = ("messages_in", "messages_out", "closed_by", "code", "reason")

    def __init__(self) -> None:
        self.messages_in = 0   # client → upstream
        self.messages_out = 0  # upstream → client
        self.closed_by: str | None = None
        self.code: int | None = None
        self.reason = ""

    def note(self, closed_by: str, code: int, reason: str) -> None:
        if self.closed_by is None:  # the first close is the one passed on
            self.closed_by, self.code, self.reason = closed_by, code, reason


class WebSocketProxy:
    """ASGI handler for every `websocket` whose path starts with `/services/`."""

    def __init__(self, supervisors: Mapping[str, Supervisor],
                 shutdown: trio.Event | None = None,
                 routes: Mapping[str, Route] | None = None) -> None:
        self.supervisors = supervisors
        self.routes = routes if routes is not None else {
            name: Route(name, [(name, sup)]) for name, sup in supervisors.items()}
        # Set when the gateway shuts down: open sockets are closed with 1001 then, instead of
        # holding up the graceful shutdown for its whole grace period.
        self.shutdown = shutdown if shutdown is not None else trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        began = trio.current_time()
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        service_id, _, rest = raw_path[len(PREFIX):].partition(b"/")
        name = service_id.decode("latin-1")
        if "%" in name:
            name = unquote(name)
        request_id = request_id_from(scope["headers"])
        relay = _Relay()
        outcome: str | None = None
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            route = self.routes.get(name)
            if route is None:
                raise UnknownService(f"no service named {name!r}", service=name,
                                     services=sorted(self.routes))
            supervisor = route.single
            if supervisor is None:  # several backends: the strategy picks (without a body)
                supervisor, _ = route.pick(request_context(scope, rest))
            limits = supervisor.config.limits
            if limits.max_header_size:
                check_header_size(scope, limits.max_header_size)
            lease = supervisor.acquire_nowait() or await _wait_for_lease(supervisor, receive)
            try:
                lease = await self._proxy(supervisor, lease, scope, receive, send, rest,
                                          request_id, relay)
            finally:
                supervisor.release(lease)
        except GatewayError as error:
            error.service = error.service or name
            await _deny(scope, send, error, request_id)
            outcome = error.code
        except _Closed:
            outcome = "client_disconnected"
        log.info("websocket", request_id=request_id, service=name,
                 path=raw_path.decode("latin-1"), messages_in=relay.messages_in,
                 messages_out=relay.messages_out, closed_by=relay.closed_by, code=relay.code,
                 duration_ms=round((trio.current_time() - began) * 1000, 2), error=outcome)

    async def _proxy(self, supervisor: Supervisor, lease: Lease, scope: dict[str, Any],
                     receive: Any, send: Any, rest: bytes, request_id: str,
                     relay: _Relay) -> Lease:
        """Connect upstream, accept the client, relay until either side closes. Returns the
        lease it holds at the end (a passive one under `activity.websockets: ignore`)."""
        placement = supervisor.placement
        config = supervisor.config
        query = scope.get("query_string", b"")
        resource = (placement.prefix + b"/" + rest + (b"?" + query if query else b"")).decode(
            "latin-1")
        async with trio.open_nursery() as nursery:  # trio-websocket's reader task lives here
            upstream = await _connect(nursery, supervisor, resource,
                                      _subprotocols(scope), _headers(scope, request_id))
            await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol,
                        "headers": [(b"x-request-id", request_id.encode())]})
            if config.activity.websockets == "ignore":
                passive = supervisor.acquire_nowait(passive=True)
                if passive is not None:  # READY: it must be, it just accepted
                    supervisor.release(lease)
                    lease = passive
            with trio.CancelScope() as scope_:
                lease.bind(scope_)
                async with trio.open_nursery() as tasks:
                    tasks.start_soon(_going_away, self.shutdown, relay, tasks.cancel_scope)
                    tasks.start_soon(_client_to_upstream, receive, upstream, relay,
                                     tasks.cancel_scope)
                    tasks.start_soon(_upstream_to_client, upstream, send, relay,
                                     tasks.cancel_scope)
            # The relay only noted who closed how: the close is sent here, where nothing can
            # cancel it halfway (which would leave the client with a bare 1006).
            await _close(upstream, send, relay, lease)
            nursery.cancel_scope.cancel()
        return lease


async def _wait_for_lease(supervisor: Supervisor, receive: Any) -> Lease:
    """The lease, waiting in the hold queue while watching for the client leaving."""
    left = False

    async def watch(scope: trio.CancelScope) -> None:
        nonlocal left
        while (await receive())["type"] != "websocket.disconnect":
            pass
        left = True
        scope.cancel()

    lease = await acquire_watching(supervisor, watch)
    if left or lease is None:
        if lease is not None:
            supervisor.release(lease)
        raise _Closed
    return lease


async def _connect(nursery: trio.Nursery, supervisor: Supervisor, resource: str,
                   subprotocols: list[str], headers: list[tuple[bytes, bytes]],
                   ) -> WebSocketConnection:
    """The upstream WebSocket. Raises `UpstreamUnreachable`, `UpstreamTimeout`, or
    `_Rejected` with the upstream's own answer to the handshake."""
    placement = supervisor.placement
    timeout = supervisor.config.timeouts.connect
    try:
        with trio.fail_after(timeout) if timeout > 0 else trio.CancelScope():
            return await connect_websocket(
                nursery, placement.host, placement.port, resource,
                use_ssl=placement.upstream.startswith("https:"), subprotocols=subprotocols,
                extra_headers=headers, max_message_size=supervisor.config.limits.max_message_size,
                receive_buffer_size=_RECEIVE_BUFFER)
    except trio.TooSlowError:
        raise UpstreamTimeout(f"the upstream WebSocket handshake took longer than {timeout}s",
                              phase="connect") from None
    except ConnectionRejected as exc:
        raise _Rejected(exc.status_code, list(exc.headers), exc.body or b"") from None
    except (HandshakeError, OSError) as exc:
        raise UpstreamUnreachable(f"cannot open a WebSocket to the upstream: {exc}") from None


class _Rejected(GatewayError):
    """The upstream refused the WebSocket handshake: its answer goes to the client."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        super().__init__(f"the upstream refused the WebSocket with {status}")
        self.status = status
        self.code = "websocket_rejected"
        self.headers = headers
        self.body = body


async def _going_away(shutdown: trio.Event, relay: _Relay, done: trio.CancelScope) -> None:
    await shutdown.wait()
    relay.note("gateway", 1001, "the gateway is shutting down")
    done.cancel()


async def _client_to_upstream(receive: Any, upstream: WebSocketConnection, relay: _Relay,
                              done: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.receive":
            data = message.get("bytes")
            try:
                await upstream.send_message(data if data is not None else message["text"])
            except ConnectionClosed:
                return  # the upstream closed: the other task notes how
            relay.messages_in += 1
        elif message["type"] == "websocket.disconnect":
            relay.note("client", int(message.get("code", 1000)), message.get("reason") or "")
            done.cancel()
            return


async def _upstream_to_client(upstream: WebSocketConnection, send: Any, relay: _Relay,
                              done: trio.CancelScope) -> None:
    try:
        while True:
            data = await upstream.get_message()
            key = "bytes" if isinstance(data, bytes) else "text"
            await send({"type": "websocket.send", key: data})
            relay.messages_out += 1
    except ConnectionClosed as exc:
        relay.note("upstream", exc.reason.code, exc.reason.reason or "")
        done.cancel()


async def _close(upstream: WebSocketConnection, send: Any, relay: _Relay, lease: Lease) -> None:
    """Pass the close on to the side that did not close (both, when the gateway closes)."""
    if lease.error is not None and relay.closed_by != "client":
        # Revoked: the backend crashed (1011) or was stopped (1001) under the socket.
        error = copy.copy(lease.error)
        relay.closed_by = None
        relay.note("gateway", 1001 if isinstance(error, BackendStopped) else 1011, error.detail)
    code, reason = relay.code or 1000, relay.reason
    if relay.closed_by != "client":
        if relay.closed_by == "upstream" and code == 1006:
            code, reason = 1011, "the upstream connection was lost"  # it died under us
        await send({"type": "websocket.close", "code": 1000 if code in _UNSENDABLE else code,
                    "reason": _reason(reason)})
    if relay.closed_by != "upstream":
        with trio.move_on_after(5):
            await upstream.aclose(1000 if code in _UNSENDABLE else code, reason or None)


def _subprotocols(scope: dict[str, Any]) -> list[str]:
    return list(scope.get("subprotocols") or [])


def _headers(scope: dict[str, Any], request_id: str) -> list[tuple[bytes, bytes]]:
    """The client's end-to-end headers (cookies, authorization, origin …), plus forwarding."""
    out: list[tuple[bytes, bytes]] = []
    host = forwarded_for = None
    for name, value in scope["headers"]:
        if name == b"host":
            host = value
        elif name == b"x-forwarded-for":
            forwarded_for = value
        elif name not in _HANDSHAKE:
            out.append((name, value))
    client = scope.get("client")
    if client:
        ip = client[0].encode()
        out.append((b"x-forwarded-for", forwarded_for + b", " + ip if forwarded_for else ip))
    out.append((b"x-forwarded-proto", b"wss" if scope.get("scheme") == "wss" else b"ws"))
    if host:
        out.append((b"x-forwarded-host", host))
    out.append((b"x-request-id", request_id.encode()))
    return out


def _reason(text: str) -> str:
    # A close frame's reason is at most 123 bytes of UTF-8.
    return text.encode()[:123].decode(errors="ignore")


async def _deny(scope: dict[str, Any], send: Any, error: GatewayError,
                request_id: str) -> None:
    """Refuse the handshake with an HTTP answer: the JSON error (or the upstream's own
    rejection). Without the ASGI extension for that, a plain refusal (403) is all there is."""
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    if isinstance(error, _Rejected):
        status, headers, body = error.status, error.headers, error.body
        headers = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
    else:
        status, headers, body = error_response(error, request_id)
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})
