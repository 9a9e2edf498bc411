"""`POST /v1/requests`: one proxied request described as JSON, for callers that cannot change a
base URL (scripts, workflow tools).

Request (`GatewayRequest`): `{"serviceId", "method" (GET), "path" ("/", with its query),
"headers" ({name: value}), "body" (text, or base64 with "bodyEncoding": "base64")}`.

It goes through the proxy exactly as `/services/{serviceId}{path}` would: the backend is started
if needed, the request held, limits and deadlines apply. The answer:

- the upstream answered (whatever its status): `200` with `GatewayResponse` `{"status",
  "headers" ([[name, value]…], in order), "body", "bodyEncoding" ("utf-8" or "base64")}`;
- Hestia could not get an answer (unknown service 404, start failed 503, upstream 502/504…):
  that real status, with the usual JSON error body;
- a bad `GatewayRequest`: `400 bad_request`.

The response body is collected in memory, so it is capped at `MAX_RESPONSE` (16 MiB); a larger
one is `502 response_too_large`. Streams belong on `/services/…`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

import trio
from quart import Blueprint, Response, g, jsonify, request

from ..errors import RequestRejected, ResponseTooLarge
from .addressing import PREFIX, Address
from .body import json_body
from .context import facts
from .proxy import ProxyHandler

__all__ = ["MAX_RESPONSE", "dispatch_blueprint"]

MAX_RESPONSE = 16 * 1024 * 1024


class _TooLarge(Exception):
    """The answer outgrew `MAX_RESPONSE` while being collected (raised through the proxy, which
    has begun the response by then, and turned into `ResponseTooLarge` here)."""


def dispatch_blueprint(proxy: ProxyHandler) -> Blueprint:
    api = Blueprint("dispatch", __name__)

    @api.post("/v1/requests")
    async def dispatch() -> tuple[Response, int] | Response:
        spec = await json_body()
        problem, scope, body = _scope(spec, g.get("request_id", ""), request.remote_addr)
        if problem is not None:
            raise RequestRejected(problem)
        start: dict[str, Any] = {}
        chunks: list[bytes] = []
        size = 0
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await trio.sleep_forever()  # the caller of the API stays for the whole answer
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            nonlocal size
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
                if size > MAX_RESPONSE:
                    raise _TooLarge
                chunks.append(message.get("body", b""))

        try:
            # Hestia's own errors are raised here and answered as such by the app's handler.
            await proxy.forward(scope, receive, send, answer_errors=False)
        except _TooLarge:
            raise ResponseTooLarge(
                f"the response is larger than {MAX_RESPONSE} bytes; use "
                f"/services/{spec['serviceId']}{spec.get('path', '/')}",
                service=spec["serviceId"]) from None
        data = b"".join(chunks)
        try:
            text, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(data).decode(), "base64"
        return jsonify(status=start.get("status", 502),
                       headers=[[k.decode("latin-1"), v.decode("latin-1")]
                                for k, v in start.get("headers", [])],
                       body=text, bodyEncoding=encoding)

    return api


_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # a header name (RFC 9110)
_SERVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _header_value_ok(value: str) -> bool:
    # What HTTP/1.1 can carry: Latin-1, no control characters but tab. CR or LF here would
    # write lines of the caller's choosing into the upstream request.
    return all(c == "\t" or (" " <= c <= "\xff" and c != "\x7f") for c in value)


def _scope(spec: Any, request_id: str, remote: str | None,
           ) -> tuple[str | None, dict[str, Any], bytes]:
    """The ASGI scope of the described request, or what is wrong with the description."""
    if not isinstance(spec, dict) or not isinstance(spec.get("serviceId"), str) \
            or not _SERVICE_ID.match(spec["serviceId"]):
        return 'the body must be a JSON object with a "serviceId" (a service id)', {}, b""
    method = spec.get("method", "GET")
    path = spec.get("path", "/")
    headers = spec.get("headers", {})
    body = spec.get("body")
    if not isinstance(method, str) or not (method.isascii() and method.isalpha()):
        return '"method" must be an HTTP method such as "GET"', {}, b""
    if not isinstance(path, str) or not path.startswith("/") or \
            not all("!" <= c <= "~" for c in path):
        return ('"path" must start with "/" and be printable ASCII without spaces '
                '(percent-encode the rest)'), {}, b""
    if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and _TOKEN.match(k)
            and _header_value_ok(v) for k, v in headers.items()):
        return ('"headers" must map header names to values HTTP can carry (Latin-1, no '
                'control characters)'), {}, b""
    if body is not None and not isinstance(body, str):
        return '"body" must be a string (or base64 with "bodyEncoding": "base64")', {}, b""
    raw = (body or "").encode()
    if spec.get("bodyEncoding") == "base64":
        try:
            raw = base64.b64decode(body or "", validate=True)
        except (binascii.Error, ValueError):
            return '"body" is not valid base64', {}, b""
    target, _, query = path.partition("?")
    sent = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
            if k.lower() not in ("content-length", "transfer-encoding", "host")]
    if raw or method.upper() in ("POST", "PUT", "PATCH"):
        sent.append((b"content-length", str(len(raw)).encode()))
    # The id this API answers with is the request's, upstream and in the log line too.
    sent = [(k, v) for k, v in sent if k != b"x-request-id"]
    if request_id:
        sent.append((b"x-request-id", request_id.encode("latin-1")))
    sent.append((b"host", b"hestia"))
    raw_path = PREFIX + spec["serviceId"].encode() + target.encode()
    scope = {"type": "http", "method": method.upper(), "path": raw_path.decode("latin-1"),
             "raw_path": raw_path, "query_string": query.encode(), "headers": sent,
             "http_version": "1.1", "scheme": "http",
             "client": (remote or "127.0.0.1", 0)}
    # The service is the one named, whatever a host name would say.
    facts(scope).address = Address(spec["serviceId"], target.encode(),
                                   prefix=PREFIX + spec["serviceId"].encode())
    return None, scope, raw
