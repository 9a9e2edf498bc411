"""API keys and browser sessions: who may use what, when `auth.enabled` is on.

A key is `hestia_` plus 43 random URL-safe characters (256 bits). Only its SHA-256 is stored
(`auth_keys` in the store); a fast hash is right here because the key is random, not a
password: there is nothing to guess. The key a client presents is hashed, looked up by its hash,
and the stored hash is compared again with `hmac.compare_digest`, in constant time.

A key is accepted as `X-API-Key: KEY` or `Authorization: Bearer KEY`; a browser pastes one on
the login page (http/login.py) and gets a session cookie with the key's scope (sessions.py).
A key header wins over the cookie, unless it holds no Hestia key (an app's own token, say
Open WebUI's `Authorization: Bearer …`, sent along with the cookie). Scopes:

| scope | may use |
|---|---|
| `proxy` | the services: `/services/…` and every host name of `service_domain`/`hosts` |
| `read` | `GET`/`HEAD` on `/`, `/v1/…` and `/metrics` |
| `admin` | everything |

Which service a request is for is decided once (`Addressing`): a service's host name is that
service's, whatever the path (but `/__hestia/…`), and the gateway's own routes are only on its
own host. `/__health`, `/__hestia/login`, `/__hestia/logout` and `/__hestia/static/…` need
nothing, nor does a service with `auth: none`; `/__hestia/events/<id>` and
`/__hestia/retry/<id>` need what service `<id>` needs; a host name under `service_domain` that
names no service needs any credential (its 404 lists the services).

Missing or unknown key: 401; a key whose scope does not cover the request: 403; both JSON with
the request id. A browser navigation with no credential, or with a tampered or expired cookie,
gets the login page instead (401, and the stale cookie is cleared), and one whose session's
scope is too narrow gets it with a 403 and says so.

CSRF: a request the cookie lets in that can change something (a method other than GET, HEAD and
OPTIONS, and every WebSocket) must come from a page of the same origin: its `Origin` is the
request's own (`scheme://host`), or it has no `Origin` and says `Sec-Fetch-Site: same-origin`;
otherwise 403 `csrf`. SameSite=Lax alone is not enough: other ports of the same host, and other
names under the same site, are "same-site". A key header is no ambient credential: no CSRF check.

No header holding a key is proxied, whatever the service's `auth` (http/forwarding.py), unless
`forward_authorization` is on and the service required the key; the session cookie never is.
Refusals are logged (`auth_denied`, with the key's name when there was one), and a proxied
request's `request` line names the key that let it in (`key`); keys and cookies never are.
Lookups of keys and sessions are cached for `CACHE_S` seconds of trio's clock, so a revoked key
(and its sessions) stops working within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import unquote

import structlog
import trio

from ..caching import cached
from ..config import Config
from ..errors import CrossOrigin, Forbidden, GatewayError, Unauthorized, error_response
from ..observability import request_id_from
from ..sessions import Session, Sessions, session_token
from ..store import Store
from .addressing import Address, Addressing
from .browser import BROWSER_PREFIX, is_navigation
from .client_body import drain
from .context import facts
from .login import LOGIN_PATH, LOGOUT_PATH, Login, LoginBackoff, here, same_origin

__all__ = ["SCOPES", "AuthGate", "hash_key", "new_key"]

log = structlog.get_logger("hestia.auth")

SCOPES = ("admin", "read", "proxy")
KEY_PREFIX = "hestia_"
CACHE_S = 5.0
TOUCH_EVERY_S = 60.0
ANY = "any"  # a need that every scope covers
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Under /__hestia/: what needs nothing, and what needs what the service it names needs.
_FREE_PAGES = frozenset({b"login", b"logout", b"static"})
_SERVICE_PAGES = frozenset({b"events", b"retry"})


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class AuthGate:
    """ASGI middleware in front of the whole app."""

    def __init__(self, app: Any, config: Config, store: Store,
                 sessions: Sessions | None = None, addressing: Addressing | None = None,
                 backoff: LoginBackoff | None = None) -> None:
        """Raises `StoreError` when the sessions' table cannot be made. `sessions` and
        `backoff`: a reload's gate keeps the previous one's (the failed logins counted so far
        must not start again at each reload)."""
        self.app = app
        self.store = store
        self.forward = config.auth.forward_authorization
        self.addressing = addressing or Addressing.from_config(config)
        # Services (and, for the waiting page's endpoints, backends) that need no key.
        self.open_ids = {sid for sid, route in config.routes.items()
                         if all(config.services[b].auth == "none" for b in route.backends)}
        self.open_ids |= {b for b, service in config.services.items() if service.auth == "none"}
        self.sessions = sessions or Sessions(store, config.auth.session_ttl)
        self.login = Login(self.sessions, self._lookup, config.service_domain, backoff)
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._touched: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"<AuthGate keys_cached={len(self._cache)} {self.sessions!r} {self.login!r}>"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        address = self.addressing.resolve(scope)
        if (scope["type"] == "http" and not address.proxied
                and address.path in (LOGIN_PATH, LOGOUT_PATH)):
            await self.login(scope, receive, send, address.path)
            return
        needed = self._needed(scope, address)
        if needed is None:
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        key = _presented(headers)
        token = session_token(headers)
        row: dict[str, Any] | None = None
        session: Session | None = None
        if key is not None and (token is None or key.startswith(KEY_PREFIX)):
            row = self._lookup(key)
            if row is None:
                await self._deny(scope, receive, send, Unauthorized("unknown or revoked API key"),
                                 None)
                return
            name, granted = row["name"], row["scope"]
        elif token is not None:
            session = self.sessions.find(token)
            if session is None:
                await self._deny(scope, receive, send, Unauthorized(
                    "the session has expired or is not valid: log in again"), None, page=True,
                    stale=True)
                return
            name, granted = session.key_name, session.scope
        else:
            await self._deny(scope, receive, send, Unauthorized("no API key"), None, page=True)
            return
        if granted != "admin" and needed != ANY and granted != needed:
            what = "session's key" if session is not None else "key"
            await self._deny(scope, receive, send, Forbidden(
                f"the {what} {name!r} has scope {granted!r}; this needs {needed!r}"), name,
                page=session is not None)
            return
        if session is not None and not (
                scope["type"] == "http" and scope["method"] in SAFE_METHODS
        ) and not same_origin(scope, strict=True):
            await self._deny(scope, receive, send, CrossOrigin(
                "a request authenticated by the session cookie that can change something must "
                "come from this origin (Origin, or Sec-Fetch-Site: same-origin); send an API "
                "key header instead"), name)
            return
        self._touch(name)
        known = facts(scope)
        known.key = name  # the request's log line names the key
        if row is not None and self.forward and needed == "proxy":
            # Only a service that required the key may see it (http/forwarding.py strips every
            # header holding a key from everything else that goes upstream).
            known.forward_key = True
        await self.app(scope, receive, send)

    def _needed(self, scope: dict[str, Any], address: Address) -> str | None:
        """The scope this request needs (`ANY`: any credential), or None."""
        if address.proxied:
            return None if address.service in self.open_ids else "proxy"
        path = address.path
        if address.gateway_page:  # /__hestia/… on any host: never proxied
            kind, _, rest = path[len(BROWSER_PREFIX):].partition(b"/")
            if kind in _FREE_PAGES:
                return None
            if kind in _SERVICE_PAGES:
                service = unquote(rest.partition(b"/")[0].decode("latin-1"))
                return None if service in self.open_ids else "proxy"
        elif address.unknown_host is not None:
            return ANY
        elif path == b"/__health":
            return None
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and (
                path in (b"/", b"/metrics") or path.startswith(b"/v1/")
                or address.gateway_page):
            return "read"
        return "admin"

    def _lookup(self, key: str) -> dict[str, Any] | None:
        digest = hash_key(key)
        row = cached(self._cache, digest, CACHE_S, self.store.find_key)  # one indexed read
        if row is None or not hmac.compare_digest(row["key_hash"], digest):
            return None
        return row

    def _touch(self, name: str) -> None:
        now = trio.current_time()
        last = self._touched.get(name)
        if last is None or now - last >= TOUCH_EVERY_S:
            self._touched[name] = now
            self.store.touch_key(name)

    async def _deny(self, scope: dict[str, Any], receive: Any, send: Any, error: GatewayError,
                    key_name: str | None, *, page: bool = False, stale: bool = False) -> None:
        """Refuse the request: JSON, or, with `page`, the login page for a navigation (which
        clears a `stale` cookie)."""
        request_id = request_id_from(scope["headers"])
        client = scope.get("client")
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        status = error.status
        log.warning("auth_denied", request_id=request_id, status=status, error=error.code,
                    detail=error.detail, path=path, key=key_name,
                    client=client[0] if client else None)
        if page and scope["type"] == "http" and is_navigation(scope["method"], scope["headers"]):
            # A person in a browser: the login page, which says what went wrong.
            await drain(receive)
            message = ("Your session has ended: log in again." if stale
                       else None if status == 401
                       else f"The key {key_name!r} cannot open this page: log in with another.")
            await self.login.page(scope, send, status, next=here(scope), message=message,
                                  error=status == 403 or stale, clear=stale)
            return
        status, headers, body = error_response(error, request_id)
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
        await drain(receive)
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
