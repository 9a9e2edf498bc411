"""How long starts take, for honest answers while one is under way.

The durations of a backend's recent cold starts (kept in the store across restarts) give the
`Retry-After` of a refused request and the `estimated_wait_ms` of a waiting one: the median of
the last `KEEP` starts, minus what the current start has already taken.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable

import trio

__all__ = ["StartHistory"]

KEEP = 20


class StartHistory:
    def __init__(self, durations: Iterable[float] = ()) -> None:
        self.durations: deque[float] = deque(durations, maxlen=KEEP)  # seconds, oldest first
        self.began: float | None = None  # trio clock, while a start is under way

    def __repr__(self) -> str:
        return f"<StartHistory n={len(self.durations)} expected={self.expected()}>"

    def begin(self) -> None:
        self.began = trio.current_time()

    def end(self, duration: float | None) -> None:
        """The start is over; `duration` when it succeeded (a failure teaches nothing)."""
        self.began = None
        if duration is not None:
            self.durations.append(duration)

    def expected(self) -> float | None:
        return statistics.median(self.durations) if self.durations else None

    def remaining(self) -> float | None:
        """While a start is under way: how much longer it should take, from past starts."""
        expected = self.expected()
        if self.began is None or expected is None:
            return None
        return max(0.0, expected - (trio.current_time() - self.began))
