"""A small HTTP/1.1 upstream like Python's `http.server` and Hestia's demo: a thread per
connection and the default listen backlog of 5. It counts the requests it serves at once.

    python tests/backlog_upstream.py        (port: env HESTIA_PORT)

  GET /health        200 {"ok": true}
  GET /work?ms=M     200 {"ok": true} after M ms (counted)
  GET /stats         200 {"max_in_flight": n, "served": n}: the most /work requests in
                     progress at once, and how many were answered
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

lock = threading.Lock()
in_flight = 0
max_in_flight = 0
served = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _json(self, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        global in_flight, max_in_flight, served
        url = urlsplit(self.path)
        if url.path == "/stats":
            with lock:
                self._json({"max_in_flight": max_in_flight, "served": served})
            return
        if url.path != "/work":
            self._json({"ok": True})
            return
        with lock:
            in_flight += 1
            max_in_flight = max(max_in_flight, in_flight)
        try:
            time.sleep(int(parse_qs(url.query).get("ms", ["0"])[0]) / 1000)
            self._json({"ok": True})
        finally:
            with lock:
                in_flight -= 1
                served += 1


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["HESTIA_PORT"])), Handler)
    server.daemon_threads = True
    assert server.request_queue_size == 5  # the listen backlog this upstream stands for
    print(f"listening {server.server_address[1]} {os.getpid()}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
