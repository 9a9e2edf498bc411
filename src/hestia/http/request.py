"""One proxied request, as the proxy carries it from routing to the last byte (`ProxyRequest`),
and the request facts the HTTP and WebSocket proxies share: ignore rules, the strategy's view
of a request, the header-size limit."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..config import ActivityIgnoreConfig
from ..errors import GatewayError, HeadersTooLarge, HostNotAllowed, UnknownService
from ..routing.strategy import RequestContext
from .addressing import Address
from .client_body import ClientBody
from .forwarding import carries_key

__all__ = ["IgnoreRules", "ProxyRequest", "check_header_size", "request_context", "unknown"]

Scope = dict[str, Any]
Headers = list[tuple[bytes, bytes]]


class ProxyRequest:
    """A request on its way through the proxy: what the client sent (`scope`, `body`, `send`),
    what goes upstream (`target`, `headers`), and what the exchange has done so far (for the
    error path, the deadlines and the log line)."""

    __slots__ = ("scope", "address", "body", "send", "request_id", "service", "method",
                 "target", "headers", "status", "response_started", "finished", "body_bytes",
                 "total_deadline", "first_byte_deadline", "sent_at", "backend", "route",
                 "reuse_connection")

    def __init__(self, scope: Scope, address: Address, send: Any, request_id: str) -> None:
        self.scope = scope
        self.address = address
        self.send = send
        self.request_id = request_id
        self.service = address.service
        self.method: bytes = scope["method"].encode()
        query = scope.get("query_string", b"")
        self.target = address.path + b"?" + query if query else address.path
        self.body: ClientBody | None = None
        self.headers: Headers = []  # to go upstream, but `Host`
        self.status = 0
        self.response_started = False
        self.finished = False  # the upstream's response was read to its end
        self.body_bytes = 0
        self.total_deadline = math.inf
        self.first_byte_deadline = math.inf
        self.sent_at = 0.0
        self.backend = address.service  # the backend's id (`<service>@<backend>` with several)
        self.route: str | None = None  # why the strategy chose it (several backends only)
        # The request's head and whole body went upstream as framed, by Content-Length. Only
        # then, and once the response was read to its end, may the connection serve another.
        self.reuse_connection = False

    def __repr__(self) -> str:
        return (f"<ProxyRequest {self.request_id} {self.method.decode()} {self.service}"
                f"{self.target.decode('latin-1')} status={self.status or '-'}"
                f"{' finished' if self.finished else ''}>")


class IgnoreRules:
    """`activity.ignore` of one service, ready to match raw request paths and user agents."""

    __slots__ = ("exact", "prefixes", "agents")

    def __init__(self, config: ActivityIgnoreConfig) -> None:
        self.exact = {p.encode() for p in config.paths if not p.endswith("*")}
        self.prefixes = tuple(p[:-1].encode() for p in config.paths if p.endswith("*"))
        self.agents = tuple(a.lower().encode() for a in config.user_agents)

    @classmethod
    def of(cls, config: ActivityIgnoreConfig) -> IgnoreRules | None:
        """The rules, or None when there are none (most services)."""
        return cls(config) if config.paths or config.user_agents else None

    def match(self, path: bytes, headers: Headers) -> bool:
        if path in self.exact or (self.prefixes and path.startswith(self.prefixes)):
            return True
        if self.agents:
            for name, value in headers:
                if name == b"user-agent":
                    agent = value.lower()
                    return any(a in agent for a in self.agents)
        return False


def request_context(scope: Scope, path: bytes, parsed: Any = None) -> RequestContext:
    """What a strategy may know of a request (`path`: the service's own; `parsed`: its JSON
    body, when it asked)."""
    client = scope.get("client")
    return RequestContext(
        method=scope.get("method", "GET"), path=path.decode("latin-1"),
        query=scope.get("query_string", b"").decode("latin-1"),
        headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                 if not carries_key(k, v)},
        client=client[0] if client else None, json=parsed)


def check_header_size(scope: Scope, limit: int) -> None:
    """Raise `HeadersTooLarge` when the request line and headers exceed `limit` bytes."""
    size = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b"")) + 16
    for name, value in scope["headers"]:
        size += len(name) + len(value) + 4
    if size > limit:
        raise HeadersTooLarge(f"the request headers ({size} bytes) are larger than this "
                              f"service's limit of {limit} bytes (limits.max_header_size)",
                              limit=limit)


def unknown(address: Address, services: Iterable[str]) -> GatewayError:
    """The error for a request that names no service: a host the gateway does not answer to,
    an unknown name under `service_domain`, or an unknown service id."""
    if address.foreign_host is not None:
        return HostNotAllowed(
            f"{address.foreign_host!r} is not a name of this gateway: use its address or "
            "localhost, or add the name to allowed_hosts (a name of another site pointed at "
            "this machine is how a web page reaches services on it: DNS rebinding)")
    listed = sorted(services)
    if address.service is None:
        return UnknownService(f"no service at the host name {address.unknown_host!r}",
                              services=listed)
    return UnknownService(f"no service named {address.service!r}", service=address.service,
                          services=listed)
