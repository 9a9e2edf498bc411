"""Restarts after crashes back off like failed starts, and the backoff shows in the status."""

from __future__ import annotations

import trio

from hestia.http import status as status_module
from hestia.http.status import service_status
from hestia.lifecycle.supervisor import State, Supervisor
from hestia.observability import iso_time
from tests.fakes import FakeLauncher, FakeProbe, supervisor


def crash_looping(**fields: object) -> tuple[FakeLauncher, Supervisor]:
    """A backend ready 1 s after its start that exits 0.5 s later, every time."""
    launcher = FakeLauncher(start_s=1, exit_after=1.5)
    return launcher, supervisor(launcher, **fields)


async def test_a_keep_warm_backend_dying_right_after_ready_restarts_with_backoff(
        nursery, autojump_clock):
    launcher, sup = crash_looping(keep_warm=True)
    await nursery.start(sup.run)
    await trio.sleep_until(110)
    # Each start is ready 1 s in and crashes 0.5 s later; the restart then waits 1, 2, 4, 8,
    # 16 s, then startup.max_delay (30 s) from then on.
    assert launcher.starts == [0.0, 2.5, 6.0, 11.5, 21.0, 38.5, 70.0, 101.5]
    assert sup.failures_in_a_row == 8  # the eighth crash was at 103.0


async def test_the_backoff_follows_the_startup_settings(nursery, autojump_clock):
    launcher, sup = crash_looping(keep_warm=True, startup={
        "delay": "2s", "backoff": 3, "max_delay": "10s"})
    await nursery.start(sup.run)
    await trio.sleep_until(40)
    # Crashes at 1.5, 5.0, 12.5, 24.0, 35.5: waits of 2, 6, 10, 10 s.
    assert launcher.starts == [0.0, 3.5, 11.0, 22.5, 34.0]


async def test_a_keep_warm_start_that_fails_retries_on_the_startup_backoff(
        nursery, autojump_clock):
    launcher = FakeLauncher(spawn_error="boom")
    sup = supervisor(launcher, keep_warm=True, startup={
        "cooldown": 0, "delay": "2s", "backoff": 3, "max_delay": "10s"})
    await nursery.start(sup.run)
    await trio.sleep_until(29)
    assert launcher.starts == [0.0, 2.0, 8.0, 18.0, 28.0]


async def test_failed_starts_and_crashes_count_in_one_series(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1, spawn_error="boom")
    sup = supervisor(launcher, keep_warm=True, startup={"cooldown": 0})
    await nursery.start(sup.run)
    await trio.sleep_until(0.5)
    launcher.spawn_error = None  # the retry, 1 s after the failure, starts
    launcher.exit_after = 1.5  # … and crashes 0.5 s after ready (at 2.5): failure number 2
    await trio.sleep_until(6)
    assert launcher.starts == [0.0, 1.0, 4.5]


async def test_the_status_shows_the_next_attempt(nursery, autojump_clock, monkeypatch):
    monkeypatch.setattr(status_module.time, "time", lambda: 1_800_000_000.0)
    launcher, sup = crash_looping(keep_warm=True)
    await nursery.start(sup.run)
    await trio.sleep_until(4.25)  # the second crash was at 4.0: next start at 6.0
    status = service_status(sup)
    assert status["state"] == "COLD"
    assert status["failuresInARow"] == 2
    assert status["nextAttemptInS"] == 1.75
    assert status["nextAttemptAt"] == iso_time(1_800_000_001.75)
    await trio.sleep_until(6.5)
    status = service_status(sup)
    assert status["state"] == "STARTING"
    assert (status["nextAttemptInS"], status["nextAttemptAt"]) == (None, None)
    assert status["failuresInARow"] == 2


async def test_the_count_is_reset_after_a_minute_ready_then_a_crash_restarts_at_once(
        nursery, autojump_clock):
    launcher, sup = crash_looping(keep_warm=True)
    await nursery.start(sup.run)
    await trio.sleep_until(5)  # crashed at 1.5 and 4.0; the next start is at 6.0
    launcher.exit_after = None  # that one stays up: ready at 7.0
    await trio.sleep_until(66.9)
    assert sup.failures_in_a_row == 2
    await trio.sleep_until(67.0)
    assert sup.failures_in_a_row == 0
    await trio.sleep_until(100)
    assert launcher.current is not None
    launcher.current.exit(9)
    await trio.sleep(0.1)
    assert sup.state is State.STARTING
    assert launcher.starts == [0.0, 2.5, 6.0, 100.0]


async def test_a_crash_just_before_the_minute_still_backs_off(nursery, autojump_clock):
    launcher, sup = crash_looping(keep_warm=True)
    await nursery.start(sup.run)
    await trio.sleep_until(5)
    launcher.exit_after = None  # ready at 7.0
    await trio.sleep_until(66.5)
    assert launcher.current is not None
    launcher.current.exit(9)  # READY for 59.5 s: failure number 3, a 4 s wait
    await trio.sleep_until(71)
    assert launcher.starts == [0.0, 2.5, 6.0, 70.5]


async def test_requests_wait_out_the_backoff_after_a_crash(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = supervisor(launcher)
    await nursery.start(sup.run)
    async with sup.lease():
        pass
    assert launcher.current is not None
    launcher.current.exit(3)  # at 1.0, right after ready: the restart waits 1 s
    await sup.wait_until(State.COLD)
    assert trio.current_time() == 1.0
    assert sup.next_attempt_in == 1.0
    assert sup.retry_after() == 2.0  # the backoff, then a start as long as the last one
    async with sup.lease():
        assert trio.current_time() == 3.0
    assert launcher.starts == [0.0, 2.0]


async def test_a_start_through_the_api_skips_the_backoff(nursery, autojump_clock):
    launcher, sup = crash_looping(keep_warm=True)
    await nursery.start(sup.run)
    await trio.sleep_until(8)  # crashed at 1.5, 4.0, 7.5: the next start waits 4 s
    assert sup.next_attempt_in == 3.5
    launcher.exit_after = None
    assert sup.request_start() is True
    await trio.sleep(0.1)
    assert sup.state is State.STARTING
    assert launcher.starts == [0.0, 2.5, 6.0, 8.0]


async def test_a_stop_on_purpose_ends_the_series(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1, exit_after=1.5)
    sup = supervisor(launcher)
    await nursery.start(sup.run)
    sup.request_start()
    await trio.sleep_until(2)  # crashed at 1.5: failure number 1
    assert sup.failures_in_a_row == 1
    launcher.exit_after = None
    async with sup.lease():  # waits out the backoff: started at 2.5, ready at 3.5
        assert trio.current_time() == 3.5
    assert sup.request_stop() is True
    await sup.wait_until(State.COLD)
    assert sup.failures_in_a_row == 0
    assert sup.next_attempt_in is None


async def test_failed_health_checks_back_off_like_a_crash(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = supervisor(launcher, keep_warm=True, health={"interval": "10s", "failures": 1})
    await nursery.start(sup.run)
    probe = sup.probe
    assert isinstance(probe, FakeProbe)
    probe.healthy = False
    # Ready at 1, unhealthy at 11 (READY 10 s): the restart waits 1 s. Ready again at 13,
    # unhealthy at 23: 2 s.
    await trio.sleep_until(26)
    assert launcher.starts == [0.0, 12.0, 25.0]
