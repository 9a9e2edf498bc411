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
from collections.abc import Sequence

from pydantic import field_validator

from hestia.routing import (
    BackendView,
    Decision,
    RequestContext,
    Strategy,
    StrategyOptions,
    eligible,
)


class StickyClientOptions(StrategyOptions):
    header: str | None = None
    """Hash this request header's value (a session id, say) instead of the client address;
    a request without the header falls back to its address. Default: the address."""

    @field_validator("header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(f"must be a header name, not {value!r}")
        return value.strip().lower() if value is not None else None  # ctx.headers: lower case


class StickyClient(Strategy):
    """Hash the client address (or option `header`) onto the healthy backends."""

    name = "sticky_client"
    Options = StickyClientOptions
    options: StickyClientOptions

    def __repr__(self) -> str:
        return f"<StickyClient key={self.options.header or 'client address'}>"

    def key(self, ctx: RequestContext) -> str:
        header = self.options.header
        if header and ctx.headers.get(header):
            return ctx.headers[header]
        return ctx.client or ""

    def pick(self, ctx: RequestContext, backends: Sequence[BackendView]) -> Decision:
        key = self.key(ctx)
        # eligible(): the healthy backends (all when none is). A stable hash (not hash(), which
        # is salted per process) so a client keeps its backend across gateway restarts.
        chosen = max(eligible(backends), key=lambda b: _score(key, b.name))
        return Decision(chosen.name, "sticky")


def _score(key: str, backend: str) -> bytes:
    return hashlib.blake2b(f"{key}\0{backend}".encode(), digest_size=8).digest()


def register_strategy(registry) -> None:
    registry.register(StickyClient)
