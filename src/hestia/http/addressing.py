"""Which service a request is for: by its path (`/services/<id>/…`) or by its host name.

With `service_domain: localhost`, `http://notebook.localhost:8080/lab` is service `notebook`'s
`/lab`, path unchanged; `services.<id>.hosts` adds exact names. Host names match
case-insensitively with the port ignored, through one dict lookup (nothing is scanned, and
nothing is looked up at all when no service has a host name).

The gateway's own host (any name that is not a service's) keeps `/v1`, `/metrics`,
`/services/…` and the dashboard; on a service's host name every path is the service's, but
`/__hestia/…` (the login page and the waiting page's endpoints, `browser.py`).

A `Host` that is none of the gateway's names (an address, `localhost` and `*.localhost`,
`service_domain` and its names, a service's `hosts`, `allowed_hosts`) is refused by the front:
it is what a browser sends for a page of another site whose name was pointed at this machine
(DNS rebinding), which must not reach a service that trusts loopback callers.
"""

from __future__ import annotations

import ipaddress
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
                 service_domain: str | None = None, allowed_hosts: Iterable[str] = ()) -> None:
        self.services = sorted(services)
        self.domain = service_domain
        self._suffix = "." + service_domain if service_domain else None
        self._hosts: dict[str, str] = {}
        if service_domain:
            self._hosts.update({f"{sid.lower()}.{service_domain}": sid for sid in self.services})
        for sid, names in (hosts or {}).items():
            self._hosts.update({name.lower(): sid for name in names})
        allowed = [name.lower() for name in allowed_hosts]
        self._allowed_names = {name for name in allowed if not name.startswith("*.")}
        self._allowed_suffixes = tuple(name[1:] for name in allowed if name.startswith("*."))
        if service_domain:
            self._allowed_names.add(service_domain)
        self._checked: dict[str, bool] = {}

    @classmethod
    def from_config(cls, config: Config) -> Addressing:
        return cls(config.routes, {sid: config.services[route.backends[0]].hosts
                                   for sid, route in config.routes.items()},
                   config.service_domain, config.allowed_hosts)

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
        host = _host_name(scope["headers"])
        address = None
        if host is not None:
            service = self._hosts.get(host)
            if service is not None:
                address = Address(service, raw_path, by_host=True)
            elif self._suffix is not None and host.endswith(self._suffix):
                address = Address(None, raw_path, unknown_host=host)
            elif not self.allowed(host):
                address = Address(None, raw_path, foreign_host=host)
        if address is None:
            address = self._by_path(raw_path)
        known.address = address
        return address

    def allowed(self, host: str) -> bool:
        """Whether the gateway answers to this host name (lowercased, without its port): an
        address, `localhost` and its names, `service_domain` and its names, a service's
        `hosts`, or one of `allowed_hosts`. Any other name is what a page on another site
        would send after pointing its own name at this machine (DNS rebinding)."""
        ok = self._checked.get(host)
        if ok is None:
            ok = (host == "localhost" or host.endswith(".localhost") or _is_address(host)
                  or host in self._hosts or host in self._allowed_names
                  or (self._suffix is not None and host.endswith(self._suffix))
                  or (bool(self._allowed_suffixes) and host.endswith(self._allowed_suffixes)))
            if len(self._checked) < 1024:  # bounded: names from clients cannot grow it
                self._checked[host] = ok
        return ok

    @staticmethod
    def _by_path(raw_path: bytes) -> Address:
        if not raw_path.startswith(PREFIX):
            return Address(None, raw_path)
        service_id, _, rest = raw_path[len(PREFIX):].partition(b"/")
        name = service_id.decode("latin-1")
        if "%" in name:
            name = unquote(name)
        return Address(name, b"/" + rest, prefix=PREFIX + service_id)


def _host_name(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The request's `Host`, lowercased, without its port or a trailing dot; None without one."""
    for name, value in headers:
        if name == b"host":
            host = value.decode("latin-1").strip().lower()
            if host.startswith("["):  # an IPv6 literal, with or without a port
                return host.partition("]")[0] + "]"
            return host.partition(":")[0].rstrip(".") or None
    return None


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return False
    return True
