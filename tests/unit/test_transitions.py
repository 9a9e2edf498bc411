"""Every state transition is one synchronous step: no lease is ever granted on a backend that
has crashed or is being stopped, however long the cleanup after it takes (virtual time)."""

from __future__ import annotations

import pytest
import trio

from hestia.errors import BackendCrashed, StartCancelled
from hestia.lifecycle.supervisor import State
from tests.fakes import FakeLauncher, FakeProbe, SlowPool, supervisor


async def test_no_lease_is_granted_while_the_pool_of_a_crashed_backend_is_closed(
        nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = supervisor(launcher)
    pool = SlowPool(close_s=2)
    sup.placement.pool = pool  # type: ignore[assignment]
    await nursery.start(sup.run)
    async with sup.lease() as held:
        await trio.sleep_until(70)  # READY long enough: the restart will not wait
        assert launcher.current is not None
        launcher.current.exit(3)
        await trio.sleep(60)
    assert isinstance(held.error, BackendCrashed)
    await trio.sleep_until(71)  # the pool is being closed until 72
    assert pool.cleared == [70.0]
    assert sup.state is State.COLD
    assert sup.acquire_nowait() is None
    async with sup.lease() as lease:
        # A fresh start once the cleanup is done: ready at 73, on the new process.
        assert trio.current_time() == 73.0
        assert sup.pid == 1002
    assert lease.error is None
    assert launcher.starts == [0.0, 72.0]


async def test_no_lease_is_granted_while_an_unhealthy_backend_is_stopped(
        nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1, stop_s=3)
    sup = supervisor(launcher, health={"interval": "10s", "failures": 1})
    await nursery.start(sup.run)
    async with sup.lease():
        pass
    probe = sup.probe
    assert isinstance(probe, FakeProbe)
    probe.healthy = False  # the check at 11 fails; the stop then takes until 14
    await trio.sleep_until(12)
    assert sup.state is State.STOPPING
    assert sup.acquire_nowait() is None
    probe.healthy = True
    async with sup.lease():
        # READY only 10 s before it failed: the restart waits 1 s after the stop (at 15).
        assert trio.current_time() == 16.0
        assert sup.pid == 1002
    assert launcher.stop_calls == [11.0]
    assert sup.last_error is not None
    assert sup.last_error["error"] == "backend_crashed"


async def test_a_lease_held_when_health_checks_fail_is_revoked_before_the_stop(
        nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1, stop_s=3)
    sup = supervisor(launcher, health={"interval": "10s", "failures": 1})
    await nursery.start(sup.run)
    probe = sup.probe
    assert isinstance(probe, FakeProbe)
    async with sup.lease() as lease:
        probe.healthy = False
        await trio.sleep(60)
    assert trio.current_time() == 11.0  # revoked at the decision, not after the stop
    assert isinstance(lease.error, BackendCrashed)
    assert "failed 1 health checks in a row (refused)" in lease.error.detail


async def test_a_request_during_the_stop_of_a_cancelled_start_waits_for_a_fresh_start(
        nursery, autojump_clock):
    launcher = FakeLauncher(start_s=10, stop_s=3)
    sup = supervisor(launcher)
    await nursery.start(sup.run)
    sup.request_start()
    await trio.sleep_until(2)
    assert sup.request_stop() is True  # the attempt's process is stopped from 2 to 5
    await trio.sleep_until(3)
    assert sup.state is State.STOPPING
    async with sup.lease():
        # Not the cancelled start's error: a start of its own, from 5, ready at 15.
        assert trio.current_time() == 15.0
    assert launcher.starts == [0.0, 5.0]
    assert launcher.stop_calls == [2.0]


async def test_waiters_of_a_cancelled_start_are_answered_at_the_decision(
        nursery, autojump_clock):
    launcher = FakeLauncher(start_s=10, stop_s=3)
    sup = supervisor(launcher)
    await nursery.start(sup.run)

    async def stop_soon() -> None:
        await trio.sleep(2)
        sup.request_stop()

    nursery.start_soon(stop_soon)
    with pytest.raises(StartCancelled):
        async with sup.lease():
            pass
    assert trio.current_time() == 2.0
    assert sup.state is State.STOPPING
    await sup.wait_until(State.COLD)
    assert trio.current_time() == 5.0
