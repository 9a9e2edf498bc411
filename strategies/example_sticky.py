"""Example strategy plugin: `sticky_client` keeps each client on one backend.

Hestia loads every `strategies/*.py` that defines `register_strategy(registry)` at start. Use it
in a service with:

    strategy: {name: sticky_client}                  # or {name: sticky_client, header: x-session}

Rendezvous (highest-random-weight) hashing: every eligible backend gets a score from
hash(key, backend name) and the highest wins. When a backend goes unhealthy only its own clients
move; everyone else keeps their backend (a plain `hash % n` would reshuffle nearly everyone).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from hestia.routing import BackendView, Decision, RequestContext, Strategy, eligible


class StickyClient(Strategy):
    """Same client (or same `header` value), same backend, while it stays eligible."""

    name = "sticky_client"

    def __init__(self, header: str | None) -> None:
        self.header = header

    def __repr__(self) -> str:
        return f"<StickyClient key={self.header or 'client address'}>"

    def key(self, ctx: RequestContext) -> str:
        if self.header and ctx.headers.get(self.header):
            return ctx.headers[self.header]
        return ctx.client or ""

    def pick(self, ctx: RequestContext, backends: Sequence[BackendView],
             exclude: frozenset[str] = frozenset()) -> Decision:
        key = self.key(ctx)
        # eligible(): skips excluded and unhealthy backends (all when none is healthy), and
        # raises NoRoute(503) when nothing is left. A stable hash (not hash(), which is salted
        # per process) so a client keeps its backend across gateway restarts.
        chosen = max(eligible(backends, exclude), key=lambda b: _score(key, b.name))
        return Decision(chosen.name, "failover" if exclude else "sticky")


def _score(key: str, backend: str) -> bytes:
    return hashlib.blake2b(f"{key}\0{backend}".encode(), digest_size=8).digest()


def sticky_client(options: Mapping[str, Any], backends: Sequence[str]) -> StickyClient:
    """Hash the client address (or option `header`) onto the healthy backends."""
    unknown = sorted(set(options) - {"header"})
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for sticky_client "
                         f"(allowed: header)")
    header = options.get("header")
    if header is not None and (not isinstance(header, str) or not header):
        raise ValueError(f"header must be a header name, not {header!r}")
    return StickyClient(header.lower() if header else None)


def register_strategy(registry) -> None:
    registry.register("sticky_client", sticky_client)
