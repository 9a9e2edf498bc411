"""API keys: who may use what, when `auth.enabled` is on.

A key is `hestia_` plus 43 random URL-safe characters (256 bits). Only its SHA-256 is stored
(`auth_keys` in the store); a fast hash is right here because the key is random, not a
password: there is nothing to guess. The key a client presents is hashed, looked up by its hash,
and the stored hash is compared again with `hmac.compare_digest`, in constant time.

A key is accepted as `X-API-Key: KEY` or `Authorization: Bearer KEY`. Scopes:

| scope | may use |
|---|---|
| `proxy` | `/services/…` |
| `read` | `GET`/`HEAD` on `/`, `/v1/…` and `/metrics` |
| `admin` | everything |

`/__health` needs no key, nor does a service with `auth: none`. Missing or unknown key: 401;
a key whose scope does not cover the request: 403; both JSON with the request id. No header
holding a key is proxied, whatever the service's `auth` (http/forwarding.py), unless
`forward_authorization` is on and the service required the key.
Refusals are logged (`auth_denied`, with the key's name when there was one), and a proxied
request's `request` line names the key that let it in (`key`); keys themselves never are.
Lookups are cached for `CACHE_S` seconds, so a revoked key stops working within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import structlog

from ..config import Config
from ..observability import request_id_from
from ..store import Store
from .proxy import PREFIX, _drain

__all__ = ["SCOPES", "AuthGate", "hash_key", "new_key"]

log = structlog.get_logger("hestia.auth")

SCOPES = ("admin", "read", "proxy")
KEY_PREFIX = "hestia_"
CACHE_S = 5.0
TOUCH_EVERY_S = 60.0


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class AuthGate:
    """ASGI middleware in front of the whole app."""

    def __init__(self, app: Any, config: Config, store: Store) -> None:
        self.app = app
        self.store = store
        self.forward = config.auth.forward_authorization
        self.open_services = {sid.encode() for sid, route in config.routes.items()
                              if all(config.services[b].auth == "none" for b in route.backends)}
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._touched: dict[str, float] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: bytes = scope.get("raw_path") or scope["path"].encode()
        needed = self._needed(scope, path)
        if needed is None:
            await self.app(scope, receive, send)
            return
        key = _presented(scope["headers"])
        row = self._lookup(key) if key is not None else None
        if row is None:
            reason = "no API key" if key is None else "unknown or revoked API key"
            await self._deny(scope, receive, send, 401, "unauthorized", reason, path, None)
            return
        if row["scope"] != "admin" and row["scope"] != needed:
            await self._deny(scope, receive, send, 403, "forbidden",
                             f"the key {row['name']!r} has scope {row['scope']!r}; this "
                             f"needs {needed!r}", path, row["name"])
            return
        self._touch(row["name"])
        scope = {**scope, "hestia.key": row["name"]}  # the request's log line names the key
        if self.forward and needed == "proxy":
            # Only a service that required the key may see it (http/forwarding.py strips every
            # header holding a key from everything else that goes upstream).
            scope["hestia.forward_key"] = True
        await self.app(scope, receive, send)

    def _needed(self, scope: dict[str, Any], path: bytes) -> str | None:
        if path == b"/__health":
            return None
        if path.startswith(PREFIX):
            service = path[len(PREFIX):].partition(b"/")[0]
            return None if service in self.open_services else "proxy"
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and (
                path in (b"/", b"/metrics") or path.startswith(b"/v1/")):
            return "read"
        return "admin"

    def _lookup(self, key: str) -> dict[str, Any] | None:
        digest = hash_key(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            row = cached[1]
        else:
            row = self.store.find_key(digest)  # one indexed read of a small table
            if len(self._cache) > 1024:
                self._cache.clear()  # bounded: unknown keys cannot grow it without limit
            self._cache[digest] = (now + CACHE_S, row)
        if row is None or not hmac.compare_digest(row["key_hash"], digest):
            return None
        return row

    def _touch(self, name: str) -> None:
        now = time.monotonic()
        if now - self._touched.get(name, -TOUCH_EVERY_S) >= TOUCH_EVERY_S:
            self._touched[name] = now
            self.store.touch_key(name)

    async def _deny(self, scope: dict[str, Any], receive: Any, send: Any, status: int,
                    error: str, detail: str, path: bytes, key_name: str | None) -> None:
        request_id = request_id_from(scope["headers"])
        client = scope.get("client")
        log.warning("auth_denied", request_id=request_id, status=status, detail=detail,
                    path=path.decode("latin-1"), key=key_name,
                    client=client[0] if client else None)
        body = json.dumps({"error": error, "detail": detail, "service": None,
                           "request_id": request_id}).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode()),
                   (b"x-request-id", request_id.encode()), (b"cache-control", b"no-store")]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="hestia"'))
        if scope["type"] == "websocket":
            if "websocket.http.response" in (scope.get("extensions") or {}):
                await send({"type": "websocket.http.response.start", "status": status,
                            "headers": headers})
                await send({"type": "websocket.http.response.body", "body": body})
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        # Read what the client is still sending first, or the answer would meet a connection
        # the client cannot finish writing to (and the kept-alive connection would be lost).
        await _drain(receive)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _presented(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key the request carries."""
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None

