"""What Hestia learns of a request on its way in, beyond what ASGI's scope holds: which service
it is for, and which key let it in. One typed object, kept in the scope under one key, so that
the layers (the auth gate, the front, the proxies, `/v1/requests`) pass facts to each other
without inventing scope keys of their own."""

from __future__ import annotations

from typing import Any, NamedTuple

from .browser import BROWSER_PREFIX

__all__ = ["Address", "RequestFacts", "facts"]

_KEY = "hestia"


class Address(NamedTuple):
    """Where a request goes. `service` None: the gateway itself (`unknown_host` set when the
    host name was under `service_domain` but named no service, `foreign_host` when it is no
    name of the gateway's at all)."""

    service: str | None
    path: bytes  # the path the upstream sees (a service's), or the gateway's own path
    prefix: bytes = b""  # `/services/<id>` on a path route; empty on a host route
    by_host: bool = False
    unknown_host: str | None = None
    foreign_host: str | None = None  # a `Host` the gateway does not answer to (DNS rebinding)

    @property
    def gateway_page(self) -> bool:
        """A `/__hestia/` path: answered by the gateway on every host, never proxied."""
        return self.path.startswith(BROWSER_PREFIX)

    @property
    def proxied(self) -> bool:
        return self.service is not None and not (self.by_host and self.gateway_page)


class RequestFacts:
    __slots__ = ("address", "key", "forward_key")

    def __init__(self) -> None:
        self.address: Address | None = None  # resolved once (addressing.py)
        self.key: str | None = None  # the name of the key (or session's key) that let it in
        # The auth gate's mark: this service required the key and `forward_authorization` is
        # on, so the header carrying it may go upstream (forwarding.py).
        self.forward_key = False

    def __repr__(self) -> str:
        return (f"<RequestFacts {self.address!r} key={self.key!r}"
                f"{' forward_key' if self.forward_key else ''}>")


def facts(scope: dict[str, Any]) -> RequestFacts:
    """The request's facts (made on first use)."""
    found: RequestFacts | None = scope.get(_KEY)
    if found is None:
        found = scope[_KEY] = RequestFacts()
    return found
