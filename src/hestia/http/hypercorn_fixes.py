"""Two narrow changes to hypercorn, applied when the gateway starts serving.

Hypercorn (0.18 and before; upstream issue pgjones/hypercorn#127) loses the close code and
reason a WebSocket *client* sends: its `websocket.disconnect` event always says 1006 (or 1000),
so a proxy cannot pass the client's close on to the upstream. The client's close frame is
answered by echoing it (`CloseConnection.response()`, same code and reason) while the connection
is in `REMOTE_CLOSING`; the fix notes that code and reason there, and reports them in the
`websocket.disconnect` event that follows, as the ASGI specification asks.

The fix is applied only when hypercorn still has the shape it was written against, and a test
(tests/integration/test_websocket.py) checks that a client's close code reaches the upstream.
"""

from __future__ import annotations

from typing import Any

from hypercorn.protocol import ws_stream
from hypercorn.protocol.events import StreamClosed
from hypercorn.trio import tcp_server
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection

__all__ = ["apply"]

_applied = False


# Hypercorn reads a client's socket 64 KiB at a time, and each read becomes one ASGI body
# message: an upload crosses Hestia in that many pieces, each with its own scheduling and
# syscalls. Larger reads make fewer, larger messages; memory stays bounded by hypercorn's
# queue of `max_app_queue_size` messages per request.
CLIENT_READ_SIZE = 256 * 1024


def apply() -> None:
    global _applied
    if getattr(tcp_server, "MAX_RECV", None) == 2**16:
        tcp_server.MAX_RECV = CLIENT_READ_SIZE
    stream = ws_stream.WSStream
    if _applied or not all(hasattr(stream, name) for name in ("handle", "_send_wsproto_event")):
        return
    original_send = stream._send_wsproto_event
    original_handle = stream.handle

    async def _send_wsproto_event(self: Any, event: Any) -> None:
        connection = getattr(self, "connection", None)
        if isinstance(event, CloseConnection) and connection is not None and \
                connection.state is ConnectionState.REMOTE_CLOSING:
            self._hestia_client_close = (event.code, event.reason)
        await original_send(self, event)

    async def handle(self: Any, event: Any) -> None:
        close = getattr(self, "_hestia_client_close", None)
        if isinstance(event, StreamClosed) and close is not None and not self.closed \
                and self.app_put is not None:
            self.closed = True
            code, reason = close
            await self.app_put({"type": "websocket.disconnect", "code": int(code),
                                "reason": reason or ""})
            return
        await original_handle(self, event)

    stream._send_wsproto_event = _send_wsproto_event  # type: ignore[method-assign]
    stream.handle = handle  # type: ignore[method-assign]
    _applied = True
