"""Brief caches of lookups by digest (API keys, browser sessions): one read of the store per
`lifetime` seconds of trio's clock for a given digest, so that a revocation is seen within that
time, and bounded, so that made-up credentials cannot grow a cache without limit."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

__all__ = ["LIMIT", "cached"]

LIMIT = 1024
T = TypeVar("T")


def cached(cache: dict[str, tuple[float, T]], digest: str, lifetime: float,
           read: Callable[[str], T]) -> T:
    """What `read(digest)` answered less than `lifetime` ago, else what it answers now."""
    now = trio.current_time()
    hit = cache.get(digest)
    if hit is not None and hit[0] > now:
        return hit[1]
    value = read(digest)
    if len(cache) >= LIMIT:
        cache.clear()
    cache[digest] = (now + lifetime, value)
    return value
