"""The login page and logout: how a browser trades an API key for a session (sessions.py).

The auth gate (auth.py) answers `/__hestia/login` and `/__hestia/logout` on every host through
`Login`, before any credential is asked for, and shows the login page to a navigation that
brings none (401), or a session whose key cannot open what it asked for (403):

- `GET /__hestia/login?next=/path`: the page. `POST /__hestia/login` (a form: `key`, `next`):
  a valid key starts a session and is answered 303 to `next` with the cookie; an invalid one
  gets the page again (401), and after `FREE_FAILURES` failures from one address, each attempt
  waits for a delay that doubles (429 with `Retry-After`; `LoginBackoff`).
- `GET /__hestia/logout`: a page with a Log out button. `POST /__hestia/logout` ends the
  session (its row is deleted), clears the cookie and is answered 303 to the login page.
- `next` is only ever a path on the same host (`/…`, never `//…`, `/\\…` or a URL): anything
  else becomes `/`, so the form cannot be made to redirect elsewhere.

The cookie is `hestia_session`, `HttpOnly; SameSite=Lax; Path=/`, `Max-Age` the session's
lifetime, `Secure` when the request came over HTTPS (the scope's scheme, or
`X-Forwarded-Proto: https` from a proxy in front). With `service_domain` it also carries
`Domain=<service_domain>` on the domain and its host names, so that one login serves them all,
but only when the domain has a dot: browsers refuse `Domain=` for a single label (Chromium drops
a cookie with `Domain=localhost` from `x.localhost`, and makes it host-only on `localhost`), so
with `service_domain: localhost` each host name logs in once.

A form posted from another site (its `Origin`, or `Sec-Fetch-Site`, says so) is refused: no page
elsewhere can log a browser in with a key of its choosing, or out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import structlog
import trio

from ..observability import request_id_from
from ..sessions import COOKIE, Session, Sessions, session_token
from ..store import StoreError
from .browser import html_headers, render
from .client_body import drain

__all__ = ["LOGIN_PATH", "LOGOUT_PATH", "Login", "LoginBackoff", "is_https", "safe_next",
           "same_origin"]

log = structlog.get_logger("hestia.login")

LOGIN_PATH = b"/__hestia/login"
LOGOUT_PATH = b"/__hestia/logout"
MAX_FORM = 16 * 1024       # a key and a path; anything larger is not our form
MAX_NEXT = 2048
FREE_FAILURES = 5          # failed logins from one address before attempts must wait
FIRST_DELAY_S = 1.0        # the wait after those, doubling with each further failure…
MAX_DELAY_S = 300.0        # …up to this
FORGET_S = 900.0           # an address with no failure for this long starts afresh
MAX_CLIENTS = 4096         # addresses remembered; the one quiet for longest goes first

Headers = list[tuple[bytes, bytes]]
FindKey = Callable[[str], dict[str, Any] | None]


class LoginBackoff:
    """Failed logins per client address, in trio's clock (tests use virtual time). A policy: it
    decides, the caller answers."""

    def __init__(self, *, free: int = FREE_FAILURES, first_delay: float = FIRST_DELAY_S,
                 max_delay: float = MAX_DELAY_S, forget_after: float = FORGET_S,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.free = free
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_clients = max_clients
        # address → (failures, when the last one was); oldest first, as a failure re-inserts.
        self._failures: dict[str, tuple[int, float]] = {}

    def __repr__(self) -> str:
        return f"<LoginBackoff clients={len(self._failures)} free={self.free}>"

    def _count(self, client: str, now: float) -> tuple[int, float]:
        entry = self._failures.get(client)
        if entry is None:
            return 0, now
        if now - entry[1] >= self.forget_after:
            del self._failures[client]
            return 0, now
        return entry

    def retry_after(self, client: str) -> float:
        """Seconds before `client` may try again (0: now)."""
        now = trio.current_time()
        failures, last = self._count(client, now)
        if failures < self.free:
            return 0.0
        delay = min(self.first_delay * 2 ** (failures - self.free), self.max_delay)
        return max(0.0, last + delay - now)

    def failed(self, client: str) -> None:
        now = trio.current_time()
        failures, _ = self._count(client, now)
        self._failures.pop(client, None)
        if len(self._failures) >= self.max_clients:
            del self._failures[next(iter(self._failures))]
        self._failures[client] = (failures + 1, now)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


def _header(headers: Headers, wanted: bytes) -> bytes | None:
    for name, value in headers:
        if name == wanted:
            return value
    return None


def is_https(scope: dict[str, Any]) -> bool:
    """Whether the browser reached us over HTTPS: directly, or through a proxy that says so."""
    if scope.get("scheme") in ("https", "wss"):
        return True
    proto = _header(scope["headers"], b"x-forwarded-proto")
    return proto is not None and proto.split(b",")[0].strip().lower() == b"https"


def _origin(scheme: bytes, host: bytes) -> bytes:
    host = host.strip().lower()
    default = b":443" if scheme == b"https" else b":80"
    if host.endswith(default):
        host = host[:-len(default)]
    return scheme + b"://" + host


def request_origin(scope: dict[str, Any]) -> bytes | None:
    """The request's own origin, `scheme://host[:port]`, as a browser would write it."""
    host = _header(scope["headers"], b"host")
    if not host:
        return None
    return _origin(b"https" if is_https(scope) else b"http", host)


def same_origin(scope: dict[str, Any], *, strict: bool) -> bool:
    """Whether the request comes from a page of its own origin: its `Origin` is that origin,
    or, with no `Origin`, `Sec-Fetch-Site: same-origin`. With neither (not a browser), `strict`
    decides."""
    headers = scope["headers"]
    origin = _header(headers, b"origin")
    if origin is not None:
        scheme, sep, host = origin.strip().lower().partition(b"://")
        own = request_origin(scope)
        return bool(sep) and own is not None and _origin(scheme, host) == own
    site = _header(headers, b"sec-fetch-site")
    if site is not None:
        return site.strip().lower() == b"same-origin"
    return not strict


def safe_next(value: str | None) -> str:
    """`value` when it is a path on this host, else `/`: never another site (an open
    redirect), never the login or logout page (a loop)."""
    if (not value or len(value) > MAX_NEXT or not value.startswith("/")
            or value.startswith("//") or "\\" in value
            or any(not "!" <= c <= "~" for c in value)):  # printable ASCII: URL-encoded
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or parts.path.encode().startswith((LOGIN_PATH, LOGOUT_PATH)):
        return "/"
    return value


def here(scope: dict[str, Any]) -> str:
    """The path (and query) the request asked for, to come back to after the login."""
    path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    query = scope.get("query_string") or b""
    return safe_next(path + ("?" + query.decode("latin-1") if query else ""))


class Login:
    """The login and logout endpoints, and the login page the gate shows."""

    def __init__(self, sessions: Sessions, find_key: FindKey, service_domain: str | None = None,
                 backoff: LoginBackoff | None = None) -> None:
        self.sessions = sessions
        self.find_key = find_key
        # Browsers refuse `Domain=` for a single label (see the module's docstring).
        domain = (service_domain or "").strip(".").lower()
        self.domain = domain if "." in domain else None
        self._single_label = domain if domain and self.domain is None else None
        self.backoff = backoff or LoginBackoff()

    def __repr__(self) -> str:
        return f"<Login domain={self.domain} {self.backoff!r}>"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any,
                       path: bytes) -> None:
        method = scope["method"]
        if method in ("GET", "HEAD"):
            await drain(receive)
            query = dict(parse_qsl((scope.get("query_string") or b"").decode("latin-1"),
                                   keep_blank_values=True))
            if path == LOGOUT_PATH:
                await self.page(scope, send, 200, mode="logout")
            else:
                await self.page(scope, send, 200, next=safe_next(query.get("next")),
                                message="You are logged out." if "out" in query else None)
        elif method != "POST":
            await drain(receive)
            await self.page(scope, send, 405, message="Use the form on this page.",
                            extra=[(b"allow", b"GET, HEAD, POST")])
        elif not same_origin(scope, strict=False):
            await drain(receive)
            log.warning("login_refused", detail="form posted from another site",
                        path=path.decode(), client=_client(scope))
            await self.page(scope, send, 403, error=True,
                            message="That form was sent from another site: log in here.")
        elif path == LOGOUT_PATH:
            await drain(receive)
            await self._logout(scope, send)
        else:
            await self._login(scope, receive, send)

    async def _login(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        client = _client(scope)
        body = await _read_form(receive)
        form = {}
        if body is not None:
            try:
                form = dict(parse_qsl(body.decode("utf-8", "replace"), max_num_fields=16))
            except ValueError:
                pass
        next_ = safe_next(form.get("next"))
        wait = self.backoff.retry_after(client)
        if wait > 0:
            seconds = math.ceil(wait)
            log.warning("login_throttled", client=client, retry_after=seconds)
            await self.page(scope, send, 429, next=next_, error=True,
                            message=f"Too many failed logins from your address: try again in "
                                    f"{seconds} second{'s' if seconds != 1 else ''}.",
                            extra=[(b"retry-after", str(seconds).encode())])
            return
        key = form.get("key", "").strip()
        row = self.find_key(key) if key else None
        if row is None:
            self.backoff.failed(client)
            log.warning("login_failed", client=client,
                        detail="no key given" if not key else "unknown or revoked API key")
            await self.page(scope, send, 401, next=next_, error=True,
                            message="That is not a valid API key, or it was revoked."
                                    if key else "Paste an API key to log in.")
            return
        self.backoff.succeeded(client)
        try:
            token = self.sessions.create(row["key_hash"])
        except StoreError as exc:
            log.error("login_not_stored", detail=str(exc), key=row["name"])
            await self.page(scope, send, 503, next=next_, error=True,
                            message="The session could not be stored; try again.",
                            extra=[(b"retry-after", b"5")])
            return
        log.info("login", key=row["name"], scope=row["scope"], client=client)
        await _redirect(scope, send, next_, [self._cookie(scope, token)])

    async def _logout(self, scope: dict[str, Any], send: Any) -> None:
        token = session_token(scope["headers"])
        if token is not None:
            session = self.sessions.find(token)
            try:
                self.sessions.end(token)
            except StoreError as exc:  # the cookie is cleared all the same
                log.error("logout_not_stored", detail=str(exc))
            log.info("logout", key=session.key_name if session else None,
                     client=_client(scope))
        await _redirect(scope, send, LOGIN_PATH.decode() + "?out", self._cleared(scope))

    async def page(self, scope: dict[str, Any], send: Any, status: int, *,
                   mode: str = "login", next: str = "/", message: str | None = None,
                   error: bool = False, clear: bool = False,
                   extra: Headers | None = None) -> None:
        """Send the login (or logout) page; `clear` also removes the session cookie (a stale
        one). The request's body must have been read."""
        token = session_token(scope["headers"])
        current: Session | None = self.sessions.find(token) if token and not clear else None
        body = render("login.html", mode=mode, next=next, message=message, error=error,
                      current=current, host=_host(scope), domain=self._domain_for(scope),
                      per_host=self._single_label, lasting=_lasting(self.sessions.ttl))
        request_id = request_id_from(scope["headers"])
        headers = html_headers(body, request_id) + (extra or [])
        if clear:
            headers += self._cleared(scope)
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="hestia"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else body})

    def _domain_for(self, scope: dict[str, Any]) -> str | None:
        """`Domain=` for this request's cookie: the service domain when the host is in it."""
        if self.domain is None:
            return None
        host = _host(scope)
        if host == self.domain or host.endswith("." + self.domain):
            return self.domain
        return None

    def _cookie(self, scope: dict[str, Any], token: str) -> tuple[bytes, bytes]:
        return (b"set-cookie", self._attributes(scope, f"{COOKIE}={token}",
                                                max(1, math.ceil(self.sessions.ttl))))

    def _cleared(self, scope: dict[str, Any]) -> Headers:
        # Both forms: a cookie set before `service_domain` changed is removed too.
        cleared = [(b"set-cookie", f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; "
                                   "SameSite=Lax".encode())]
        if self._domain_for(scope) is not None:
            cleared.append((b"set-cookie", self._attributes(scope, f"{COOKIE}=", 0)))
        return cleared

    def _attributes(self, scope: dict[str, Any], pair: str, max_age: int) -> bytes:
        parts = [pair, "Path=/", f"Max-Age={max_age}", "HttpOnly", "SameSite=Lax"]
        if is_https(scope):
            parts.append("Secure")
        domain = self._domain_for(scope)
        if domain is not None:
            parts.append(f"Domain={domain}")
        return "; ".join(parts).encode()


async def _read_form(receive: Any) -> bytes | None:
    """The request's body, or None past `MAX_FORM` (the rest is drained)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM:
            if message.get("more_body", False):
                await drain(receive)
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _redirect(scope: dict[str, Any], send: Any, location: str, extra: Headers) -> None:
    request_id = request_id_from(scope["headers"])
    headers = [(b"location", location.encode("latin-1")), (b"content-length", b"0"),
               (b"cache-control", b"no-store"), (b"x-request-id", request_id.encode()),
               *extra]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _lasting(seconds: float) -> str:
    """`7 days`, `12 hours`, `90 seconds`: a session's lifetime in words, in its largest unit."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    count = math.ceil(seconds)
    return f"{count} second{'s' if count != 1 else ''}"


def _client(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def _host(scope: dict[str, Any]) -> str:
    host = (_header(scope["headers"], b"host") or b"").decode("latin-1").lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0].rstrip(".")
