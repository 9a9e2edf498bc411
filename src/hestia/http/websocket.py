"""WebSocket proxying at `/services/{id}/{path}`: ASGI on the client side, trio-websocket to the
upstream.

One WebSocket: the handshake waits for a lease like any request (starting a cold backend, in
the hold queue, answered 503 JSON on failure); then the upstream handshake is made with the
client's subprotocols and end-to-end headers; only once the upstream accepted is the client
accepted, with the subprotocol the upstream chose. An upstream that refuses the handshake has
its answer relayed; one that fails it otherwise (closes the connection, answers something that
is no handshake, takes longer than `timeouts.connect`) is answered with the JSON error, and its
connection closed. Then two tasks relay messages, text and binary, each way. Pings are
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
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import h11
import structlog
import trio
import wsproto.utilities
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    connect_websocket,
)

from ..config import LimitsConfig
from ..errors import (
    BackendStopped,
    GatewayError,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamUnreachable,
    WebSocketRefused,
    error_response,
)
from ..lifecycle.supervisor import Lease, Supervisor
from ..observability import request_id_from
from ..routing.router import Route
from .addressing import Addressing
from .forwarding import HOP_BY_HOP, forwarded_headers
from .request import check_header_size, request_context, unknown

__all__ = ["WebSocketProxy"]

log = structlog.get_logger("hestia.proxy")

# The handshake's own headers: the upstream handshake makes its own.
_HANDSHAKE = HOP_BY_HOP | {b"host", b"sec-websocket-key", b"sec-websocket-version",
                           b"sec-websocket-extensions", b"sec-websocket-protocol",
                           b"x-request-id", b"x-forwarded-proto", b"x-forwarded-host"}
# Dropped from a refusal the upstream sent, which is passed on with a framing of Hestia's own.
_REFRAMED = HOP_BY_HOP | {b"content-length", b"x-request-id"}
# Codes an endpoint may not put in a close frame (RFC 6455 §7.4.1): only ever reported.
_UNSENDABLE = {1004, 1005, 1006, 1015}
_RECEIVE_BUFFER = 64 * 1024


class _Closed(Exception):
    """The client left while its WebSocket waited for the backend."""


class _Relay:
    """What one proxied WebSocket has done (for the log line)."""

    __slots__ = ("status", "messages_in", "messages_out", "closed_by", "code", "reason")

    def __init__(self) -> None:
        self.status: int | None = None  # the handshake's answer: 101, or the refusal's status
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
                 routes: Mapping[str, Route] | None = None,
                 addressing: Addressing | None = None) -> None:
        self.supervisors = supervisors
        self.routes = routes if routes is not None else {
            name: Route(name, [(name, sup)]) for name, sup in supervisors.items()}
        self.addressing = addressing or Addressing(self.routes)
        # Set when the gateway shuts down: open sockets are closed with 1001 then, instead of
        # holding up the graceful shutdown for its whole grace period.
        self.shutdown = shutdown if shutdown is not None else trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        began = trio.current_time()
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        address = self.addressing.resolve(scope)
        name = address.service
        request_id = request_id_from(scope["headers"])
        relay = _Relay()
        outcome: str | None = None
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            route = self.routes.get(name) if name is not None else None
            if route is None:
                raise unknown(address, self.routes)
            supervisor = route.single
            if supervisor is None:  # several backends: the strategy picks (without a body)
                supervisor, _ = route.pick(request_context(scope, address.path))
            limits = supervisor.config.limits
            if limits.max_header_size:
                check_header_size(scope, limits.max_header_size)
            lease = supervisor.acquire_nowait() or await _wait_for_lease(supervisor, receive)
            try:
                lease = await self._proxy(supervisor, lease, scope, receive, send,
                                          address.path, request_id, relay)
            finally:
                supervisor.release(lease)
        except GatewayError as error:
            error.service = error.service or name
            relay.status = await _deny(scope, send, error, request_id)
            outcome = error.code
        except _Closed:
            outcome = "client_disconnected"
        log.info("websocket", request_id=request_id, service=name,
                 path=raw_path.decode("latin-1"), status=relay.status,
                 messages_in=relay.messages_in,
                 messages_out=relay.messages_out, closed_by=relay.closed_by, code=relay.code,
                 duration_ms=round((trio.current_time() - began) * 1000, 2), error=outcome)

    async def _proxy(self, supervisor: Supervisor, lease: Lease, scope: dict[str, Any],
                     receive: Any, send: Any, path: bytes, request_id: str,
                     relay: _Relay) -> Lease:
        """Connect upstream, accept the client, relay until either side closes. Returns the
        lease it holds at the end (a passive one under `activity.websockets: ignore`)."""
        placement = lease.placement
        query = scope.get("query_string", b"")
        resource = (placement.prefix + path + (b"?" + query if query else b"")).decode(
            "latin-1")
        host = None
        if supervisor.config.preserve_host:
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        refused: GatewayError | None = None
        async with trio.open_nursery() as nursery:  # trio-websocket's reader task lives here
            try:
                headers = _headers(scope, request_id)
                prefix = self.addressing.resolve(scope).prefix
                if prefix:
                    headers.append((b"x-forwarded-prefix", prefix))
                upstream = await _connect(nursery, lease, supervisor.config.limits, resource,
                                          _subprotocols(scope), headers, host)
            except GatewayError as error:
                # Raised in here, it would leave the nursery inside an ExceptionGroup, which
                # `__call__` cannot answer: it is raised once the nursery is closed.
                refused = error
            else:
                lease = await self._relay(supervisor, lease, upstream, receive, send,
                                          request_id, relay)
            nursery.cancel_scope.cancel()
        if refused is not None:
            raise refused
        return lease

    async def _relay(self, supervisor: Supervisor, lease: Lease, upstream: WebSocketConnection,
                     receive: Any, send: Any, request_id: str, relay: _Relay) -> Lease:
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol,
                    "headers": [(b"x-request-id", request_id.encode())]})
        relay.status = 101
        # Once open, a socket keeps the backend busy but leaves its max_connections slot: a
        # long-lived, mostly idle socket must not starve plain requests.
        supervisor.free_slot(lease)
        if supervisor.config.activity.websockets == "ignore":
            passive = supervisor.acquire_nowait(passive=True)
            if passive is not None:  # READY: it must be, it just accepted
                supervisor.release(lease)
                lease = passive
        with trio.CancelScope() as scope:
            lease.bind(scope)
            async with trio.open_nursery() as tasks:
                tasks.start_soon(_going_away, self.shutdown, relay, tasks.cancel_scope)
                tasks.start_soon(_client_to_upstream, receive, upstream, relay,
                                 tasks.cancel_scope)
                tasks.start_soon(_upstream_to_client, upstream, send, relay,
                                 tasks.cancel_scope)
        # The relay only noted who closed how: the close is sent here, where nothing can
        # cancel it halfway (which would leave the client with a bare 1006).
        await _close(upstream, send, relay, lease)
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

    lease = await supervisor.acquire_watching(watch)
    if left or lease is None:
        if lease is not None:
            supervisor.release(lease)
        raise _Closed
    return lease


async def _connect(nursery: trio.Nursery, lease: Lease, limits: LimitsConfig, resource: str,
                   subprotocols: list[str], headers: list[tuple[bytes, bytes]],
                   host: str | None = None) -> WebSocketConnection:
    """The upstream WebSocket, its reader task started in `nursery`. Raises
    `UpstreamUnreachable`, `UpstreamTimeout` (the whole handshake is bounded by
    `timeouts.connect`), `UpstreamReset` (the upstream closed the connection or answered
    something that is no handshake), or `WebSocketRefused` with the upstream's own refusal."""
    placement = lease.placement
    timeout = lease.timeouts.connect
    handshake = _Handshake(nursery, host)
    upstream: WebSocketConnection | None = None
    try:
        with trio.fail_after(timeout) if timeout > 0 else trio.CancelScope(), \
                handshake.waiting:
            upstream = await connect_websocket(
                handshake, placement.host, placement.port, resource,  # type: ignore[arg-type]
                use_ssl=placement.upstream.startswith("https:"), subprotocols=subprotocols,
                extra_headers=headers, max_message_size=limits.max_message_size,
                receive_buffer_size=_RECEIVE_BUFFER)
    except trio.TooSlowError:
        raise UpstreamTimeout(f"the upstream WebSocket handshake took longer than {timeout}s",
                              phase="connect") from None
    except OSError as exc:  # raised by the TCP connect, before the reader task starts
        raise UpstreamUnreachable(f"cannot open a WebSocket to the upstream: {exc}") from None
    finally:
        if upstream is None:
            await handshake.discard()
    # Taken out of `handshake`: the error's traceback holds the reader's frames, which hold
    # `handshake`, and that cycle would keep the connection for the garbage collector.
    error, handshake.error = handshake.error, None
    if upstream is None:
        raise _handshake_error(error)
    handshake.done = True
    if error is not None:
        # The reader failed just after the handshake, before this task resumed: not an answer
        # of the upstream's but a fault, and it is raised as such.
        raise error
    return upstream


class _Handshake:
    """Stands in for the nursery given to `connect_websocket`, which only starts its reader
    task in it. Until the handshake is done, the reader's end is `_connect`'s to answer: raised
    in the nursery (trio-websocket raises `ConnectionRejected` there), it would leave the
    request's nursery as an ExceptionGroup, a 500 with a traceback; ended quietly (the upstream
    closed the connection, a TLS failure), it would leave `connect_websocket` waiting forever.
    So the reader's error is kept here and `waiting` is cancelled, which wakes `_connect`."""

    def __init__(self, nursery: trio.Nursery, host: str | None = None) -> None:
        self._nursery = nursery
        self._host = host  # the `Host` to send (`preserve_host`), else the upstream's
        self.waiting = trio.CancelScope()
        self.done = False  # `connect_websocket` returned: the reader now belongs to the relay
        self.error: Exception | None = None
        self.connection: WebSocketConnection | None = None

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object,
                   name: object = None) -> None:
        # The reader task is a method of the connection: kept to close it if the handshake fails.
        self.connection = getattr(fn, "__self__", None)
        if self._host is not None and self.connection is not None:
            # trio-websocket names the upstream in `Host` and takes no other; the request it
            # is about to send is replaced by the same one with the client's. Private, and
            # guarded by the test that the upstream sees the client's `Host`.
            request = self.connection._initial_request
            if request is not None:
                self.connection._initial_request = dataclasses.replace(request, host=self._host)
        self._nursery.start_soon(self._read, fn, *args, name=name)

    async def _read(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        try:
            await fn(*args)
        except Exception as exc:
            if self.done:
                raise
            self.error = exc
        self.waiting.cancel()  # once `connect_websocket` returned, this changes nothing

    async def discard(self) -> None:
        """Close the TCP connection of a handshake that failed. trio-websocket leaves it open
        (its own `open_websocket` too) and has no public way to close it then: `aclose()` skips
        the stream once a close reason is set, and waits forever in some rejected states. The
        test that the upstream sees its connection closed guards this private call."""
        if self.connection is not None:
            with trio.CancelScope(shield=True):
                await self.connection._close_stream()


def _handshake_error(error: Exception | None) -> GatewayError:
    """What the upstream's end of a handshake that never completed is answered with; raises
    `error` itself when it is no fault of the upstream's."""
    if isinstance(error, ConnectionRejected) and error.status_code >= 200:
        return WebSocketRefused(error.status_code, list(error.headers), error.body or b"")
    if error is None:
        return UpstreamReset("the upstream closed the connection before it answered the "
                             "WebSocket handshake")
    if isinstance(error, ConnectionRejected):  # a 1xx other than 101: no final answer
        return UpstreamReset(f"the upstream answered the WebSocket handshake with "
                             f"{error.status_code}")
    if isinstance(error, (h11.ProtocolError, wsproto.utilities.ProtocolError)):
        # An answer that is no HTTP, or a 101 that is no valid acceptance (trio-websocket
        # then fails on its own attempt to refuse it).
        return UpstreamReset(f"the upstream's answer to the WebSocket handshake is invalid: "
                             f"{error}")
    if isinstance(error, (HandshakeError, OSError, trio.BrokenResourceError)):
        return UpstreamUnreachable(f"cannot open a WebSocket to the upstream: {error}")
    raise error


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
    """The client's end-to-end headers (cookies, origin …), plus forwarding; never a key."""
    return forwarded_headers(scope, request_id, drop=_HANDSHAKE,
                             proto=b"wss" if scope.get("scheme") == "wss" else b"ws")


def _reason(text: str) -> str:
    # A close frame's reason is at most 123 bytes of UTF-8.
    return text.encode()[:123].decode(errors="ignore")


async def _deny(scope: dict[str, Any], send: Any, error: GatewayError,
                request_id: str) -> int:
    """Refuse the handshake with an HTTP answer: the JSON error (or the upstream's own
    refusal). Without the ASGI extension for that, a plain refusal (403) is all there is.
    Returns the status sent."""
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008})
        return 403
    if isinstance(error, WebSocketRefused):
        status, body, relayed = error.status, error.body, error.upstream_headers
        # Framed anew for the body as received, and with the id Hestia logged (as for HTTP).
        dropped = _REFRAMED | {t.strip().lower() for name, value in relayed
                               if name.lower() == b"connection" for t in value.split(b",")}
        headers = [(k, v) for k, v in relayed if k.lower() not in dropped]
        headers += [(b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request_id.encode())]
    else:
        status, headers, body = error_response(error, request_id)
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})
    return status
