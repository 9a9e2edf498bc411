"""Which service a request is for: by its path (`/services/<id>/…`) or by its host name.

With `service_domain: localhost`, `http://notebook.localhost:8080/lab` is service `notebook`'s
`/lab`, path unchanged; `services.<id>.hosts` adds exact names. Host names match
case-insensitively with the port ignored, through one dict lookup (nothing is scanned, and
nothing is looked up at all when no service has a host name).

The gateway's own host (any name that is not a service's) keeps `/v1`, `/metrics`,
`/services/…` and the dashboard; on a service's host name every path is the service's, but
`/__hestia/…` (the login page and the waiting page's endpoints, `browser.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .context import Address, facts

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["PREFIX", "Address", "Addressing"]

PREFIX = b"/services/"


class Addressing:
    """Resolves a request's `Address` once (kept in its `RequestFacts` for later layers)."""

    def __init__(self, services: Iterable[str], hosts: Mapping[str, Iterable[str]] | None = None,
                 service_domain: str | None = None) -> None:
        self.services = sorted(services)
        self.domain = service_domain
        self._suffix = "." + service_domain if service_domain else None
        self._hosts: dict[str, str] = {}
        if service_domain:
            self._hosts.update({f"{sid.lower()}.{service_domain}": sid for sid in self.services})
        for sid, names in (hosts or {}).items():
            self._hosts.update({name.lower(): sid for name in names})

    @classmethod
    def from_config(cls, config: Config) -> Addressing:
        return cls(config.routes, {sid: config.services[route.backends[0]].hosts
                                   for sid, route in config.routes.items()},
                   config.service_domain)

    @property
    def by_host(self) -> bool:
        return bool(self._hosts)

    def host_of(self, service: str) -> str | None:
        """The host name a service is reached at (its first), for links; None: path only."""
        for name, sid in self._hosts.items():
            if sid == service:
                return name
        return None

    def resolve(self, scope: dict[str, Any]) -> Address:
        known = facts(scope)
        if known.address is not None:
            return known.address
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        address = None
        if self._hosts:
            address = self._by_host(scope["headers"], raw_path)
        if address is None:
            address = self._by_path(raw_path)
        known.address = address
        return address

    def _by_host(self, headers: list[tuple[bytes, bytes]], raw_path: bytes) -> Address | None:
        for name, value in headers:
            if name == b"host":
                host = value.decode("latin-1").lower()
                break
        else:
            return None
        if host.startswith("["):  # an IPv6 literal is never a service's name
            return None
        host = host.partition(":")[0].rstrip(".")
        service = self._hosts.get(host)
        if service is not None:
            return Address(service, raw_path, by_host=True)
        if self._suffix is not None and host.endswith(self._suffix):
            return Address(None, raw_path, unknown_host=host)
        return None

    @staticmethod
    def _by_path(raw_path: bytes) -> Address:
        if not raw_path.startswith(PREFIX):
            return Address(None, raw_path)
        service_id, _, rest = raw_path[len(PREFIX):].partition(b"/")
        name = service_id.decode("latin-1")
        if "%" in name:
            name = unquote(name)
        return Address(name, b"/" + rest, prefix=PREFIX + service_id)
