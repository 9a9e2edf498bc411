"""A WebSocket upstream for the integration tests (trio-websocket), run as a child process.

    python tests/ws_upstream.py [--events FILE]

Port: env HESTIA_PORT (set by the gateway). Binds 127.0.0.1. Speaks subprotocol `chat.v2` when
the client offers it. Every path echoes messages back (text as text, bytes as bytes), except:

  /close?code=C&reason=R   closes with code C and reason R right after the handshake
  /reject?status=S&body=B  refuses the handshake with status S, the header `X-Why: refused` and
                           the body B (none without `body`)
  /headers                 sends the handshake's request headers (Host first) as one JSON text
                           message first
  any path, message "crash" the process exits with status 3 at once (no close frame)

With --events, one JSON line per finished connection is appended to FILE:
{"path", "subprotocol", "closed_by": "client"|"server", "code", "reason", "messages"}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from urllib.parse import parse_qs, urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

SUPPORTED = "chat.v2"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events")
    args = parser.parse_args()
    port = int(os.environ["HESTIA_PORT"])
    trio.run(serve, port, args.events)


async def serve(port: int, events: str | None) -> None:
    async def handler(request: WebSocketRequest) -> None:
        parts = urlsplit(request.path)
        if parts.path == "/reject":
            query = parse_qs(parts.query)
            body = query["body"][0].encode() if "body" in query else None
            await request.reject(int(query["status"][0]), body=body,
                                 extra_headers=[(b"x-why", b"refused")])
            return
        chosen = SUPPORTED if SUPPORTED in request.proposed_subprotocols else None
        ws = await request.accept(subprotocol=chosen)
        messages = 0
        record = {"path": request.path, "subprotocol": chosen}
        try:
            if parts.path == "/close":
                query = parse_qs(parts.query)
                await ws.aclose(int(query["code"][0]), query.get("reason", [""])[0])
                record.update(closed_by="server", code=int(query["code"][0]))
                return
            if parts.path == "/headers":
                # wsproto keeps `Host` apart from the other headers, and trio-websocket shows
                # only those: it is read from the handshake event itself.
                headers = [["host", request._event.host]]
                headers += [[k.decode(), v.decode()] for k, v in request.headers]
                await ws.send_message(json.dumps(headers))
            while True:
                message = await ws.get_message()
                if message == "crash":
                    os._exit(3)
                messages += 1
                await ws.send_message(message)
        except ConnectionClosed as exc:
            record.update(closed_by="client", code=exc.reason.code, reason=exc.reason.reason)
        finally:
            record["messages"] = messages
            if events:
                async with await trio.open_file(events, "a") as f:
                    await f.write(json.dumps(record) + "\n")

    print(f"listening {port} {os.getpid()}", flush=True)
    await serve_websocket(handler, "127.0.0.1", port, ssl_context=None,
                          max_message_size=64 * 1024 * 1024)


if __name__ == "__main__":
    sys.exit(main())
