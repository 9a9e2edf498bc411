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
_OWN = object()  # a `Host` that names the gateway itself


class Addressing:
    """Resolves a request's `Address` once (kept in its `RequestFacts` for later layers)."""

    def __init__(self, services: Iterable[str], hosts: Mapping[str, Iterable[str]] | None = None,
                 service_domain: str | None = None, allowed_hosts: Iterable[str] = ()) -> None:
        self._configure(services, hosts, service_domain, allowed_hosts)

    @classmethod
    def from_config(cls, config: Config) -> Addressing:
        return cls(*cls._arguments(config))

    def reconfigure(self, config: Config) -> None:
        """A reloaded configuration's names, in place (every layer holds this one object);
        what was decided for each `Host` so far is forgotten."""
        self._configure(*self._arguments(config))

    @staticmethod
    def _arguments(config: Config) -> tuple[Any, ...]:
        return (config.routes, {sid: config.services[route.backends[0]].hosts
                                for sid, route in config.routes.items()},
                config.service_domain, config.allowed_hosts)

    def _configure(self, services: Iterable[str], hosts: Mapping[str, Iterable[str]] | None,
                   service_domain: str | None, allowed_hosts: Iterable[str]) -> None:
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
        self._verdicts: dict[bytes, tuple[str, str] | object] = {}

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
        address = known.address
        if address is not None:
            return address
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        for name, value in scope["headers"]:
            if name == b"host":
                # One lookup per request: what a `Host` header means is kept by its bytes.
                verdict = self._verdicts.get(value)
                if verdict is None:
                    verdict = self._verdict(value)
                if verdict is not _OWN:
                    kind, host = verdict
                    address = (Address(host, raw_path, by_host=True) if kind == "service" else
                               Address(None, raw_path, unknown_host=host) if kind == "unknown"
                               else Address(None, raw_path, foreign_host=host))
                break
        if address is None:
            address = self._by_path(raw_path)
        known.address = address
        return address

    def _verdict(self, value: bytes) -> tuple[str, str] | object:
        """What a `Host` header names: a service (`("service", id)`), an unknown name under
        `service_domain` (`("unknown", name)`), a name that is not the gateway's
        (`("foreign", name)`), or the gateway itself (`_OWN`)."""
        host = _host_name(value)
        verdict: tuple[str, str] | object = _OWN
        service = self._hosts.get(host)
        if service is not None:
            verdict = ("service", service)
        elif self._suffix is not None and host.endswith(self._suffix):
            verdict = ("unknown", host)
        elif host and not self.allowed(host):
            verdict = ("foreign", host)
        if len(self._verdicts) < 1024:  # bounded: names from clients cannot grow it
            self._verdicts[value] = verdict
        return verdict

    def allowed(self, host: str) -> bool:
        """Whether the gateway answers to this host name (lowercased, without its port): an
        address, `localhost` and its names, `service_domain` and its names, a service's
        `hosts`, or one of `allowed_hosts`. Any other name is what a page on another site
        would send after pointing its own name at this machine (DNS rebinding)."""
        return (host == "localhost" or host.endswith(".localhost") or _is_address(host)
                or host in self._hosts or host in self._allowed_names
                or (self._suffix is not None and host.endswith(self._suffix))
                or (bool(self._allowed_suffixes) and host.endswith(self._allowed_suffixes)))

    @staticmethod
    def _by_path(raw_path: bytes) -> Address:
        if not raw_path.startswith(PREFIX):
            return Address(None, raw_path)
        service_id, _, rest = raw_path[len(PREFIX):].partition(b"/")
        name = service_id.decode("latin-1")
        if "%" in name:
            name = unquote(name)
        return Address(name, b"/" + rest, prefix=PREFIX + service_id)


def _host_name(value: bytes) -> str:
    """A `Host` header's name, lowercased, without its port or a trailing dot."""
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):  # an IPv6 literal, with or without a port
        return host.partition("]")[0] + "]"
    return host.partition(":")[0].rstrip(".")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return False
    return True
