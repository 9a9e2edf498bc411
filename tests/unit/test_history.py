"""Past start durations make Retry-After and estimated_wait_ms honest, in virtual time."""

from __future__ import annotations

import pytest
import trio

from hestia.errors import QueueFull
from hestia.http.status import service_status
from hestia.lifecycle.history import StartHistory
from hestia.lifecycle.supervisor import State
from tests.fakes import FakeLauncher, supervisor


async def test_a_refused_request_is_told_what_is_left_of_the_start(nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=4), queue={"max": 1})
    sup.history = StartHistory([6.0, 4.0, 5.0])  # as restored from the store: median 5 s
    await nursery.start(sup.run)
    assert sup.retry_after() == 5.0
    nursery.start_soon(sup.acquire)  # the one request the queue holds; it starts the backend
    await trio.sleep(1.5)
    assert sup.state is State.STARTING
    with pytest.raises(QueueFull) as caught:
        await sup.acquire()
    assert caught.value.retry_after == 3.5
    assert caught.value.extra["estimated_wait_ms"] == 3500
    assert service_status(sup)["estimatedWaitMs"] == 3500
    assert service_status(sup)["expectedStartMs"] == 5000
    await sup.wait_until(State.READY)
    assert trio.current_time() == 4.0
    # This start is remembered too: median of 6, 4, 5, 4.
    assert sup.history.expected() == 4.5
    assert sup.history.remaining() is None
    assert service_status(sup)["estimatedWaitMs"] is None


async def test_a_start_past_its_estimate_is_expected_any_moment(nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=10), queue={"max": 1})
    sup.history = StartHistory([2.0])
    await nursery.start(sup.run)
    nursery.start_soon(sup.acquire)
    await trio.sleep(3)
    with pytest.raises(QueueFull) as caught:
        await sup.acquire()
    assert caught.value.extra["estimated_wait_ms"] == 0
    assert caught.value.retry_after == 1.0  # never less than a second
