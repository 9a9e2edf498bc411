"""What of a client's request goes upstream, and what of the upstream's answer comes back.

Shared by the HTTP proxy and the WebSocket proxy, so that one set of rules decides what crosses:

- **Framing** (`request_framing`): a request body goes upstream under exactly one rule, and the
  bytes sent match it (RFC 9112 §6.1, §6.3). A request with both `Transfer-Encoding` and
  `Content-Length`, or an HTTP/1.0 request with `Transfer-Encoding`, is refused (`BadFraming`,
  400, connection closed): a server and an upstream could each read its length differently, and
  the difference is a request smuggled onto a pooled connection. A chunked body goes upstream
  chunked with no `Content-Length` and with `Connection: close` (its connection is never pooled:
  see http/proxy.py); a `Content-Length` body with exactly one `Content-Length`.
- **Headers** (`forwarded_headers`): hop-by-hop headers (and whatever `Connection` names) are
  dropped; so are names with `_` that a server could read as one of those (CGI and WSGI map
  `Transfer_Encoding` to `TRANSFER_ENCODING`). `X-Forwarded-For/-Proto/-Host` and `X-Request-ID`
  are Hestia's own, never the client's.
- **Keys**: a header carrying a Hestia API key (`X-API-Key` or `Authorization`, any value holding
  a key) never goes upstream, whatever the service's `auth`; only for a service that required
  the key, with `auth.forward_authorization`, does it pass (the auth gate marks such requests).
  Nor does the browser session's cookie: every cookie in which `hestia_` appears (the session's
  `hestia_session=…`, or a key pasted as a cookie) is taken out of `Cookie`, the others pass,
  and a `Cookie` left empty is dropped. No setting lets those through.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import BadFraming, BodyTooLarge
from .context import facts
from .rewrite import Rewrite

__all__ = [
    "CONNECTION_CLOSE",
    "HOP_BY_HOP",
    "KEY_CARRIERS",
    "KEY_MARK",
    "Framing",
    "carries_key",
    "connection_dropped",
    "forwarded_headers",
    "request_framing",
    "response_headers",
]

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"expect",
})
# Set by Hestia on every forwarded request; a client's own are dropped (X-Forwarded-For is
# extended, not replaced).
OWN = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                 b"x-forwarded-prefix", b"x-request-id", b"host"})
FRAMING = frozenset({b"content-length", b"transfer-encoding"})
KEY_CARRIERS = frozenset({b"x-api-key", b"authorization"})
KEY_MARK = b"hestia_"  # every key starts so (auth.new_key)
# Methods whose requests carry no body unless they announce one; over HTTP/2 a body needs no
# announcement, so for the others an unannounced body goes upstream chunked.
BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE", "CONNECT"})

Headers = list[tuple[bytes, bytes]]
CHUNKED = (b"transfer-encoding", b"chunked")
CONNECTION_CLOSE = (b"connection", b"close")  # sent with every chunked request (http/proxy.py)


class Framing(NamedTuple):
    """How a request's body goes upstream."""

    length: int | None                 # exactly this many bytes (0: none); None: chunked
    header: tuple[bytes, bytes] | None  # the one framing header sent upstream, if any


def request_framing(scope: dict[str, Any], max_body: int = 0) -> Framing:
    """How the request's body goes upstream. Raises `BadFraming` for a length that is
    ambiguous or invalid, and `BodyTooLarge` when `Content-Length` is over `max_body`
    (0: no limit)."""
    codings: list[bytes] = []
    lengths: list[bytes] = []
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            codings += [c.strip(b" \t").lower() for c in value.split(b",")]
        elif name == b"content-length":
            lengths += [v.strip(b" \t") for v in value.split(b",")]
    version = scope.get("http_version", "1.1")
    if codings:
        if version == "1.0":
            raise BadFraming("an HTTP/1.0 request cannot be framed by Transfer-Encoding "
                             "(RFC 9112 §6.1)")
        if lengths:
            raise BadFraming("the request has both Transfer-Encoding and Content-Length, so "
                             "its length is ambiguous (RFC 9112 §6.1)")
        if codings != [b"chunked"]:
            raise BadFraming("the only transfer coding accepted is a single chunked")
        return Framing(None, CHUNKED)
    if lengths:
        if len(set(lengths)) != 1 or not lengths[0].isdigit():
            raise BadFraming("the request's Content-Length is not one decimal number")
        length = int(lengths[0])
        if max_body and length > max_body:
            # Refused before the backend is woken for it.
            raise BodyTooLarge(f"the request body ({length} bytes) is larger than this "
                               f"service's limit of {max_body} bytes (limits.max_body_size)",
                               limit=max_body)
        return Framing(length, (b"content-length", b"%d" % length))
    if version not in ("1.0", "1.1") and scope.get("method", "GET") not in BODYLESS:
        return Framing(None, CHUNKED)
    return Framing(0, None)


def connection_dropped(headers: Headers) -> frozenset[bytes]:
    """The hop-by-hop names, plus those the message's `Connection` header nominates."""
    dropped = HOP_BY_HOP
    for name, value in headers:
        if name == b"connection":
            dropped = dropped | {t.strip().lower() for t in value.split(b",")}
    return dropped


def carries_key(name: bytes, value: bytes) -> bool:
    """Whether this header holds a Hestia API key (in any scheme, valid or not)."""
    return name in KEY_CARRIERS and KEY_MARK in value


def forwarded_headers(scope: dict[str, Any], request_id: str, *, drop: frozenset[bytes],
                      proto: bytes) -> Headers:
    """The client's end-to-end headers but those in `drop`, then `X-Forwarded-For/-Proto/-Host`
    and `X-Request-ID`. `Host` is left out: it depends on where the backend runs."""
    headers: Headers = scope["headers"]
    # The hot path: one pass, and the set of dropped names built once per `drop` unless the
    # request has a `Connection` header (most have none).
    dropped = _dropped.get(drop)
    if dropped is None:
        dropped = _dropped[drop] = HOP_BY_HOP | OWN | drop | FRAMING
    nominated = connection_dropped(headers) - HOP_BY_HOP
    if nominated:
        dropped = dropped | nominated
    keep_keys = facts(scope).forward_key
    out: Headers = []
    host = forwarded_for = None
    for name, value in headers:
        if name in dropped:
            if name == b"host":
                host = value
            elif name == b"x-forwarded-for":
                forwarded_for = value
            elif name in FRAMING and name not in drop:
                out.append((name, value))
        elif b"_" in name and name.replace(b"_", b"-") in dropped:
            continue
        elif name == b"cookie" and KEY_MARK in value:
            value = _without_ours(value)
            if value:
                out.append((name, value))
        elif keep_keys or name not in KEY_CARRIERS or KEY_MARK not in value:
            out.append((name, value))
    client = scope.get("client")
    if client:
        ip = client[0].encode()
        out.append((b"x-forwarded-for", forwarded_for + b", " + ip if forwarded_for else ip))
    out.append((b"x-forwarded-proto", proto))
    if host:
        out.append((b"x-forwarded-host", host))
    out.append((b"x-request-id", request_id.encode()))
    return out


_dropped: dict[frozenset[bytes], frozenset[bytes]] = {}


def _without_ours(cookie: bytes) -> bytes:
    """A `Cookie` value without the pairs in which `hestia_` appears (RFC 6265 §5.4: pairs
    separated by `; `)."""
    return b"; ".join(pair.strip() for pair in cookie.split(b";")
                      if pair.strip() and KEY_MARK not in pair)


def response_headers(headers: Headers, request_id: str, rewrite: Rewrite | None = None,
                     ) -> Headers:
    """The upstream's end-to-end response headers, with Hestia's request id, and those that
    name the upstream's address rewritten to name the gateway's (http/rewrite.py)."""
    # The client sees the request id Hestia logged, whatever the upstream says.
    dropped = connection_dropped(headers) | {b"x-request-id"}
    event_stream = accel = rewritten = False
    rewritten_names = rewrite.names if rewrite is not None else frozenset()
    for name, value in headers:
        if name == b"content-type":
            event_stream = value[:17].lower() == b"text/event-stream"
        elif name == b"x-accel-buffering":
            accel = True
        elif name in rewritten_names:
            rewritten = True
    if rewritten:
        assert rewrite is not None
        out = [(name, rewrite.header(name, value) if name in rewritten_names else value)
               for name, value in headers if name not in dropped]
    else:
        out = [(name, value) for name, value in headers if name not in dropped]
    out.append((b"x-request-id", request_id.encode()))
    if event_stream and not accel:
        # A reverse proxy in front of Hestia (nginx) must not hold back events either.
        out.append((b"x-accel-buffering", b"no"))
    return out
