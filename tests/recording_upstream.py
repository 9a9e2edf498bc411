"""An upstream that records every byte it receives, per connection, and parses them as a strict
HTTP/1.1 server would (h11). The framing tests read what really went over the wire: the bytes,
and how many requests a server makes of them.

Every request is answered `200` with a JSON body naming the request's method and target and the
connection's number, on a kept-alive connection, so that a desync shows: a request the gateway
never forwarded appears in `requests`, or a client reads an answer meant for another target.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

__all__ = ["Received", "RecordingUpstream"]


@dataclass
class Received:
    """One request as an upstream server parsed it."""

    connection: int
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


@dataclass
class RecordingUpstream:
    port: int = 0
    raw: list[bytearray] = field(default_factory=list)     # bytes received, per connection
    requests: list[Received] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)         # what h11 refused, per connection

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._serve, listeners)

    def reset(self) -> None:
        self.raw.clear()
        self.requests.clear()
        self.errors.clear()

    @property
    def data_connections(self) -> list[bytes]:
        """What each connection that carried anything received (a TCP readiness probe carries
        nothing)."""
        return [bytes(r) for r in self.raw if r]

    async def _serve(self, stream: trio.SocketStream) -> None:
        number = len(self.raw)
        raw = bytearray()
        self.raw.append(raw)
        conn = h11.Connection(h11.SERVER)
        current: Received | None = None
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    raw += data
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    current = Received(number, event.method, event.target,
                                       [(k.lower(), v) for k, v in event.headers.raw_items()])
                    self.requests.append(current)
                elif isinstance(event, h11.Data) and current is not None:
                    current.body += event.data
                elif isinstance(event, h11.EndOfMessage) and current is not None:
                    body = json.dumps({"method": current.method.decode(),
                                       "target": current.target.decode(),
                                       "connection": number,
                                       "body_length": len(current.body)}).encode()
                    await stream.send_all(conn.send(h11.Response(
                        status_code=200, headers=[("content-type", "application/json"),
                                                  ("content-length", str(len(body)))])))
                    await stream.send_all(conn.send(h11.Data(data=body)))
                    await stream.send_all(conn.send(h11.EndOfMessage()))
                    current = None
                    if conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except h11.RemoteProtocolError as exc:
            self.errors.append(f"connection {number}: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()
