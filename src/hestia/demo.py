"""The built-in demo upstream: a tiny HTTP service that Hestia starts on demand.

`hestia serve` with no configuration file runs one service, `demo`, backed by this program
(`python -m hestia.demo`). It takes a moment to start (so the hold queue is visible), then
answers on the port Hestia gives it in `HESTIA_PORT`:

- `GET /` — a greeting with the process id and how long it has been up;
- `GET /stream?n=5&gap_ms=300` — NDJSON lines, one every `gap_ms`, each sent as it is made;
- anything else under `/echo` — the request echoed back as JSON.

Standard library only, so it runs wherever Hestia runs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

STARTED = time.monotonic()


class DemoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hestia-demo/1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        sys.stdout.write("demo: " + format % args + "\n")
        sys.stdout.flush()

    def _json(self, status: int, payload: object) -> None:
        body = (json.dumps(payload, indent=2) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        if url.path == "/":
            self._json(200, {"hello": "from the demo service", "pid": os.getpid(),
                             "uptime_s": round(time.monotonic() - STARTED, 3),
                             "try": ["/stream?n=5&gap_ms=300", "/echo/anything?x=1"]})
        elif url.path == "/health":
            self._json(200, {"ok": True})
        elif url.path == "/stream":
            query = parse_qs(url.query)
            count = int(query.get("n", ["5"])[0])
            gap = int(query.get("gap_ms", ["300"])[0]) / 1000
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(count):
                line = json.dumps({"i": i, "at_s": round(time.monotonic() - STARTED, 3)}) + "\n"
                self.wfile.write(f"{len(line):x}\r\n{line}\r\n".encode())
                self.wfile.flush()
                time.sleep(gap)
            self.wfile.write(b"0\r\n\r\n")
        elif url.path.startswith("/echo"):
            self._echo()
        else:
            self._json(404, {"error": "not found", "path": url.path})

    def _echo(self) -> None:
        body = self._body()
        self._json(200, {"method": self.command, "path": self.path,
                         "headers": dict(self.headers.items()),
                         "body": body.decode("utf-8", errors="replace")})

    def _body(self) -> bytes:
        """The request body, by Content-Length or chunked: a server that ignored chunked
        framing would read the chunks as requests of their own."""
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailer fields
        return b"".join(chunks)

    do_POST = do_PUT = do_DELETE = do_PATCH = _echo  # noqa: N815


def main() -> None:
    port = int(os.environ.get("HESTIA_PORT", "8081"))
    delay = float(os.environ.get("DEMO_START_DELAY", "1.5"))
    print(f"demo: warming up for {delay}s (pretend this is a model loading)", flush=True)
    time.sleep(delay)
    server = ThreadingHTTPServer(("127.0.0.1", port), DemoHandler)
    server.daemon_threads = True
    print(f"demo: listening on 127.0.0.1:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
