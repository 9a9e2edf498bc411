"""Three narrow changes to hypercorn's internals, applied when the gateway starts, before it
serves anything.

1. `WSStream._send_wsproto_event` and 2. `WSStream.handle`: hypercorn (0.18 and before;
   upstream issue pgjones/hypercorn#127) loses the close code and reason a WebSocket *client*
   sends: its `websocket.disconnect` event always says 1006 (or 1000), so a proxy cannot pass
   the client's close on to the upstream. The client's close frame is answered by echoing it
   (`CloseConnection.response()`, same code and reason) while the connection is in
   `REMOTE_CLOSING`; the first change notes that code and reason there, the second reports them
   in the `websocket.disconnect` event that follows, as the ASGI specification asks.
3. `hypercorn.trio.tcp_server.MAX_RECV`: hypercorn reads a client's socket 64 KiB at a time, and
   each read becomes one ASGI body message, so an upload crosses Hestia in that many pieces,
   each with its own scheduling and syscalls. Reads of `CLIENT_READ_SIZE` make fewer, larger
   messages; memory stays bounded by hypercorn's queue of `max_app_queue_size` messages per
   request.

These are private internals, so `pyproject.toml` pins hypercorn to the versions they were
written and tested against (`TESTED`), and `apply` first checks that hypercorn still has the
shape they rely on: if it does not, the gateway refuses to start with `HypercornChanged`, naming
what changed, instead of running without them. tests/unit/test_hypercorn_fixes.py checks that
each change is in force; tests/integration/test_websocket.py that a client's close code reaches
the upstream through a real gateway.
"""

from __future__ import annotations

import inspect
from importlib import metadata
from types import ModuleType
from typing import Any

from ..errors import HestiaError

__all__ = ["CLIENT_READ_SIZE", "TESTED", "HypercornChanged", "apply", "problems"]

TESTED = ">=0.18,<0.19"  # as pinned in pyproject.toml
CLIENT_READ_SIZE = 256 * 1024
_HYPERCORN_READ_SIZE = 2**16

_MARK = "_hestia_original"  # on each replacement method: the hypercorn method it wraps


class HypercornChanged(HestiaError):
    """The installed hypercorn no longer has the internals Hestia's changes rely on."""

    def __init__(self, version: str, found: list[str]) -> None:
        super().__init__(
            f"hypercorn {version} is not a version Hestia can run on ({TESTED}): "
            f"{'; '.join(found)}. Install one that is: pip install 'hypercorn{TESTED}'")
        self.version = version
        self.problems = found


def problems(tcp_server: ModuleType, stream: type) -> list[str]:
    """What no longer fits in hypercorn's `tcp_server` module and `WSStream` class (empty when
    the changes apply, or are applied already)."""
    found = []
    if getattr(tcp_server, "MAX_RECV", None) not in (_HYPERCORN_READ_SIZE, CLIENT_READ_SIZE):
        found.append(f"hypercorn.trio.tcp_server.MAX_RECV is not {_HYPERCORN_READ_SIZE}")
    if "MAX_RECV" not in _names(getattr(getattr(tcp_server, "TCPServer", None), "_read_data",
                                        None)):
        found.append("TCPServer._read_data no longer reads MAX_RECV bytes at a time")
    for name in ("handle", "_send_wsproto_event"):
        method = _original(getattr(stream, name, None))
        if not inspect.iscoroutinefunction(method) or \
                list(inspect.signature(method).parameters) != ["self", "event"]:
            found.append(f"WSStream.{name}(self, event) is gone")
    if not {"StreamClosed", "closed", "app_put"} <= _names(_original(getattr(stream, "handle",
                                                                             None))):
        found.append("WSStream.handle no longer reports the close on StreamClosed")
    if not {"CloseConnection", "REMOTE_CLOSING", "response", "_send_wsproto_event"} <= _names(
            getattr(stream, "_handle_events", None)):
        found.append("WSStream._handle_events no longer echoes a client's close through "
                     "_send_wsproto_event")
    return found


def apply() -> None:
    """Make the three changes (once; later calls change nothing). Raises `HypercornChanged`,
    having changed nothing, when hypercorn no longer has the shape they rely on."""
    try:
        from hypercorn.protocol import events, ws_stream
        from hypercorn.trio import tcp_server
        stream = ws_stream.WSStream
        events.StreamClosed  # noqa: B018 (the event the second change looks for)
    except (ImportError, AttributeError) as exc:
        raise HypercornChanged(metadata.version("hypercorn"), [str(exc)]) from None
    found = problems(tcp_server, stream)
    if found:
        raise HypercornChanged(metadata.version("hypercorn"), found)
    tcp_server.MAX_RECV = CLIENT_READ_SIZE  # type: ignore[attr-defined]
    if not hasattr(stream.handle, _MARK):
        stream._send_wsproto_event = _note_client_close(  # type: ignore[method-assign]
            stream._send_wsproto_event)
        stream.handle = _report_client_close(stream.handle)  # type: ignore[method-assign]


def _note_client_close(original: Any) -> Any:
    from wsproto.connection import ConnectionState
    from wsproto.events import CloseConnection

    async def _send_wsproto_event(self: Any, event: Any) -> None:
        connection = getattr(self, "connection", None)
        if isinstance(event, CloseConnection) and connection is not None and \
                connection.state is ConnectionState.REMOTE_CLOSING:
            self._hestia_client_close = (event.code, event.reason)
        await original(self, event)

    setattr(_send_wsproto_event, _MARK, original)
    return _send_wsproto_event


def _report_client_close(original: Any) -> Any:
    from hypercorn.protocol.events import StreamClosed

    async def handle(self: Any, event: Any) -> None:
        close = getattr(self, "_hestia_client_close", None)
        if isinstance(event, StreamClosed) and close is not None and not self.closed \
                and self.app_put is not None:
            self.closed = True
            code, reason = close
            await self.app_put({"type": "websocket.disconnect", "code": int(code),
                                "reason": reason or ""})
            return
        await original(self, event)

    setattr(handle, _MARK, original)
    return handle


def _original(method: Any) -> Any:
    return getattr(method, _MARK, method)


def _names(function: Any) -> set[str]:
    """The global and attribute names a function's code uses."""
    code = getattr(function, "__code__", None)
    return set(code.co_names) if code is not None else set()
