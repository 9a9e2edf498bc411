"""The supervisor's state machine, hold queue and idle timer, in virtual time."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel

from hestia.config import ReadinessConfig, parse_config
from hestia.errors import (
    BackendCrashed,
    BackendStopped,
    QueueFull,
    QueueTimeout,
    StartCancelled,
    StartFailed,
)
from hestia.http.status import service_status
from hestia.lifecycle.groups import Group
from hestia.lifecycle.placement import Machines, Placement
from hestia.lifecycle.supervisor import State, Supervisor
from tests.fakes import FakeLauncher, FakeProbe, FakeRunning, service, supervisor


async def test_concurrent_requests_to_a_cold_backend_cause_exactly_one_start(
        nursery, autojump_clock):
    launcher = FakeLauncher(start_s=2)
    sup = supervisor(launcher)
    await nursery.start(sup.run)
    granted_at: list[float] = []

    async def request() -> None:
        async with sup.lease():
            granted_at.append(trio.current_time())

    async with trio.open_nursery() as clients:
        for _ in range(50):
            clients.start_soon(request)
    assert launcher.starts == [0.0]
    assert granted_at == [2.0] * 50
    assert sup.state is State.READY


async def test_waiters_are_granted_in_arrival_order_at_the_moment_of_readiness(
        nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=3))
    await nursery.start(sup.run)
    serials: dict[int, int] = {}

    async def request(index: int) -> None:
        async with sup.lease() as lease:
            serials[index] = lease.serial
            assert trio.current_time() == 3.0

    async with trio.open_nursery() as clients:
        for index in range(10):
            clients.start_soon(request, index)
            await trio.sleep(0.1)  # arrival order is index order
    assert sorted(serials, key=serials.__getitem__) == list(range(10))


async def test_a_waiting_request_gets_503_at_its_queue_deadline(nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=10), queue={"timeout": "5s"})
    await nursery.start(sup.run)
    with pytest.raises(QueueTimeout) as caught:
        async with sup.lease():
            pass
    assert trio.current_time() == 5.0
    assert caught.value.status == 503
    assert caught.value.retry_after == 5.0  # no start duration known yet: the default guess
    assert sup.queue_pending == 0
    assert sup.state is State.STARTING


async def test_queue_overflow_is_refused_at_once(nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=4), queue={"max": 2})
    await nursery.start(sup.run)
    results: list[str] = []

    async def request() -> None:
        try:
            async with sup.lease():
                results.append(f"ok@{trio.current_time()}")
        except QueueFull:
            results.append(f"full@{trio.current_time()}")

    async with trio.open_nursery() as clients:
        for _ in range(3):
            clients.start_soon(request)
            await trio.lowlevel.checkpoint()
    assert sorted(results) == ["full@0.0", "ok@4.0", "ok@4.0"]


async def test_idle_backend_stops_after_timeout_counted_from_the_last_release(
        nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = supervisor(launcher, idle_timeout=30)
    await nursery.start(sup.run)
    async with sup.lease():
        await trio.sleep(5)
    assert trio.current_time() == 6.0
    await trio.sleep(29.9)
    assert sup.state is State.READY
    await trio.sleep(0.2)
    assert sup.state is State.COLD
    assert launcher.stop_calls == [36.0]


async def test_a_lease_held_across_a_long_stream_keeps_the_backend(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = supervisor(launcher, idle_timeout=30)
    await nursery.start(sup.run)
    async with sup.lease():
        await trio.sleep(100)  # a streamed body, far longer than the idle timeout
        assert sup.state is State.READY
    await trio.sleep(30.1)
    assert launcher.stop_calls == [131.0]


async def test_overlapping_leases_idle_timer_starts_when_the_last_ends(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=0)
    sup = supervisor(launcher, idle_timeout=10)
    await nursery.start(sup.run)

    async def hold(seconds: float) -> None:
        async with sup.lease():
            await trio.sleep(seconds)

    async with trio.open_nursery() as clients:
        clients.start_soon(hold, 5)
        clients.start_soon(hold, 8)
    await trio.sleep(20)
    assert launcher.stop_calls == [18.0]


async def test_idle_timeout_zero_never_stops(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = supervisor(launcher, idle_timeout=0)
    await nursery.start(sup.run)
    async with sup.lease():
        pass
    await trio.sleep(10 * 24 * 3600)
    assert sup.state is State.READY
    assert launcher.stop_calls == []


async def test_a_request_during_stopping_waits_then_triggers_a_fresh_start(
        nursery, autojump_clock):
    launcher = FakeLauncher(start_s=2, stop_s=3)
    sup = supervisor(launcher, idle_timeout=10)
    await nursery.start(sup.run)
    async with sup.lease():
        pass
    # Ready at 2, idle from 2, stop begins at 12 and takes until 15.
    await trio.sleep_until(13)
    assert sup.state is State.STOPPING
    async with sup.lease():
        assert trio.current_time() == 17.0  # stop done at 15, fresh start ready at 17
        assert sup.state is State.READY
    assert launcher.starts == [0.0, 15.0]
    assert launcher.stop_calls == [12.0]


async def test_crash_while_ready_revokes_leases_and_the_next_request_restarts(
        nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = supervisor(launcher)
    await nursery.start(sup.run)
    async with sup.lease() as lease:
        assert launcher.current is not None
        launcher.current.exit(3)
        await trio.sleep(60)
        pytest.fail("a revoked lease cancels its block")
    assert trio.current_time() == 1.0
    assert isinstance(lease.error, BackendCrashed)
    assert lease.error.status == 502
    assert sup.state is State.COLD
    assert sup.last_error is not None and sup.last_error["exit_status"] == 3
    async with sup.lease():
        # It crashed at once after becoming ready: the restart waits startup.delay (1 s).
        assert trio.current_time() == 3.0
    assert launcher.starts == [0.0, 2.0]


async def test_a_start_that_never_becomes_ready_times_out(nursery, autojump_clock):
    launcher = FakeLauncher(ready=False)
    sup = supervisor(launcher, readiness={"timeout": "7s"}, queue={"timeout": "60s"})
    await nursery.start(sup.run)
    with pytest.raises(StartFailed) as caught:
        async with sup.lease():
            pass
    assert trio.current_time() == 7.0
    assert "not ready after 7.0s" in caught.value.detail
    assert caught.value.extra["reason"] == "timeout"
    assert launcher.stop_calls == [7.0]
    assert sup.state is State.FAILED
    await trio.sleep(5.5)  # past the default cool-down of 5 s
    assert sup.state is State.COLD


async def test_a_process_exiting_during_start_fails_the_start_at_once(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=30, exit_after=0.5, exit_status=3)
    sup = supervisor(launcher, readiness={"timeout": "60s"}, startup={"cooldown": 0})
    await nursery.start(sup.run)
    with pytest.raises(StartFailed) as caught:
        async with sup.lease():
            pass
    assert trio.current_time() == 0.5
    assert caught.value.extra["exit_status"] == 3
    assert caught.value.extra["log_tail"] == ["fake log of pid 1001"]
    assert "exited with status 3 while starting" in caught.value.detail
    # Nothing is stuck: the next request tries afresh.
    launcher.exit_after = None
    async with sup.lease():
        assert trio.current_time() == 30.5


async def test_every_waiter_gets_the_start_failure(nursery, autojump_clock):
    sup = supervisor(FakeLauncher(spawn_error="cannot run 'nope'"))
    await nursery.start(sup.run)
    errors: list[str] = []

    async def request() -> None:
        with pytest.raises(StartFailed) as caught:
            async with sup.lease():
                pass
        errors.append(caught.value.detail)

    async with trio.open_nursery() as clients:
        for _ in range(3):
            clients.start_soon(request)
    assert errors == ["'echo' failed to start (1 attempt): cannot run 'nope'"] * 3
    assert trio.current_time() == 0.0


async def test_a_client_that_goes_away_leaves_the_queue(nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=10), queue={"max": 1})
    await nursery.start(sup.run)
    with trio.move_on_after(2):
        async with sup.lease():
            pass
    assert sup.queue_pending == 0
    async with sup.lease():  # the place in the queue is free again
        assert trio.current_time() == 10.0


async def test_keep_warm_starts_at_boot_and_after_a_crash(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=2)
    sup = supervisor(launcher, keep_warm=True, idle_timeout=0)
    await nursery.start(sup.run)
    await trio.sleep(3)
    assert sup.state is State.READY
    assert launcher.current is not None
    await trio.sleep_until(70)  # READY for over a minute: a crash now restarts it at once
    launcher.current.exit(9)
    await trio.sleep(0.5)
    assert sup.state is State.STARTING
    await trio.sleep(2)
    assert sup.state is State.READY
    assert launcher.starts == [0.0, 70.0]


async def test_keep_warm_never_stops_for_idleness(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = supervisor(launcher, keep_warm=True, idle_timeout=30)
    await nursery.start(sup.run)
    await trio.sleep(3600)
    assert sup.state is State.READY
    assert launcher.stop_calls == []


async def test_keep_warm_retries_a_failed_start_with_backoff(nursery, autojump_clock):
    launcher = FakeLauncher(spawn_error="boom")
    sup = supervisor(launcher, keep_warm=True, startup={"cooldown": 0})
    await nursery.start(sup.run)
    await trio.sleep(7.5)
    assert launcher.starts == [0.0, 1.0, 3.0, 7.0]


async def test_start_and_stop_requests(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1, stop_s=1)
    sup = supervisor(launcher)
    await nursery.start(sup.run)
    assert sup.request_stop() is False
    assert sup.request_start() is True
    await trio.sleep_until(0.5)
    assert sup.state is State.STARTING
    assert sup.request_start() is False
    await trio.sleep_until(1.5)
    assert sup.state is State.READY
    assert sup.request_start() is False
    assert sup.request_stop() is True
    await trio.sleep_until(2.0)
    assert sup.state is State.STOPPING
    await trio.sleep_until(2.6)
    assert sup.state is State.COLD
    assert launcher.stop_calls == [1.5]


async def test_a_stop_request_during_start_cancels_it(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=10)
    sup = supervisor(launcher)
    await nursery.start(sup.run)

    async def stop_soon() -> None:
        await trio.sleep(2)
        assert sup.request_stop() is True

    nursery.start_soon(stop_soon)
    with pytest.raises(StartCancelled):
        async with sup.lease():
            pass
    assert trio.current_time() == 2.0
    await sup.wait_until(State.COLD)  # once the process the attempt had started is stopped
    assert trio.current_time() == 2.0
    assert launcher.stop_calls == [2.0]


async def test_a_stop_request_lets_in_flight_requests_finish(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=0)
    sup = supervisor(launcher, drain_timeout=10)
    await nursery.start(sup.run)
    async with sup.lease():
        sup.request_stop()
        await trio.sleep(4)
        assert sup.state is State.STOPPING
    await trio.sleep(1)
    assert launcher.stop_calls == [4.0]
    assert sup.state is State.COLD


async def test_a_stop_request_revokes_requests_that_outlast_the_drain(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=0)
    sup = supervisor(launcher, drain_timeout=10)
    await nursery.start(sup.run)
    async with sup.lease() as lease:
        sup.request_stop()
        await trio.sleep(60)
    assert trio.current_time() == 10.0
    assert isinstance(lease.error, BackendStopped)


async def test_close_fails_waiters_and_stops_the_backend(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = supervisor(launcher)
    done = trio.Event()

    async def run_supervisor() -> None:
        await sup.run()
        done.set()

    nursery.start_soon(run_supervisor)
    async with sup.lease():
        pass
    sup.close()
    await done.wait()
    assert launcher.stop_calls == [1.0]
    with pytest.raises(StartCancelled):
        async with sup.lease():
            pass


async def test_repr_shows_state_and_counts(nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=1))
    await nursery.start(sup.run)
    assert repr(sup) == "<Supervisor echo COLD leases=0 waiting=0>"
    async with sup.lease() as lease:
        assert repr(sup) == "<Supervisor echo READY leases=1 waiting=0>"
        assert repr(lease) == f"<Lease #{lease.serial} counted>"
        sup.free_slot(lease)
        assert repr(lease) == f"<Lease #{lease.serial} active>"
    assert repr(sup._starting) == "<StartSequence echo attempts=0>"


async def test_a_lease_carries_its_placement_and_the_timeouts(nursery, autojump_clock):
    primary = FakeLauncher(spawn_error="no such program")
    backup = FakeLauncher(start_s=1)
    machines = Machines(parse_config({"machines": {"backup": {}}}, env={}))
    sup = Supervisor("echo", service(timeouts={"total": "7s"}), primary, FakeProbe(primary),
                     machines=machines,
                     fallbacks=[Placement("backup", "http://10.0.0.2:8000", "10.0.0.2", 8000,
                                          b"/v1", backup, FakeProbe(backup),
                                          ReadinessConfig())])
    await nursery.start(sup.run)
    async with sup.lease() as lease:
        assert lease.placement is sup.placement is sup.placements[1]
        assert (lease.placement.host_header, lease.placement.prefix) == (b"10.0.0.2:8000",
                                                                         b"/v1")
        assert lease.timeouts.total == 7.0


async def test_attempts_back_off_exactly_then_fail_listing_each(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=30, exit_after=0.5, exit_status=3)
    sup = supervisor(launcher, startup={"attempts": 4, "delay": "1s", "backoff": 2,
                                        "max_delay": "3s"}, queue={"timeout": "60s"})
    await nursery.start(sup.run)
    with pytest.raises(StartFailed) as caught:
        async with sup.lease():
            pass
    # Attempts at 0; 0.5 + 1; 2.0 + 2; 4.5 + 3 (4, capped): each fails 0.5 s in.
    assert launcher.starts == [0.0, 1.5, 4.0, 7.5]
    assert trio.current_time() == 8.0
    attempts = caught.value.extra["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]
    assert {(a["machine"], a["launcher"], a["exit_status"], a["duration_ms"])
            for a in attempts} == {("local", "FakeLauncher", 3, 500.0)}
    assert caught.value.detail.startswith("'echo' failed to start (4 attempts): ")


async def test_a_later_attempt_that_succeeds_serves_the_waiters(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=2, exit_after=0.5)
    sup = supervisor(launcher, startup={"attempts": 3, "delay": "1s"})
    await nursery.start(sup.run)

    async def heal() -> None:
        await trio.sleep(1)
        launcher.exit_after = None  # the second attempt, at 1.5, will not crash

    nursery.start_soon(heal)
    async with sup.lease():
        assert trio.current_time() == 3.5
    assert launcher.starts == [0.0, 1.5]


async def test_a_failed_backend_answers_at_once_during_its_cool_down(nursery, autojump_clock):
    launcher = FakeLauncher(spawn_error="boom")
    sup = supervisor(launcher, startup={"cooldown": "30s"})
    await nursery.start(sup.run)
    with pytest.raises(StartFailed):
        async with sup.lease():
            pass
    await trio.sleep(10)
    with pytest.raises(StartFailed) as caught:
        async with sup.lease():
            pass
    assert trio.current_time() == 10.0  # no waiting, no new attempt
    assert caught.value.retry_after == 20.0
    assert caught.value.extra["attempts"][0]["detail"] == "boom"
    assert launcher.starts == [0.0]
    await trio.sleep_until(29.5)
    assert sup.state is State.FAILED
    await trio.sleep_until(30.5)
    assert sup.state is State.COLD
    launcher.spawn_error = None
    async with sup.lease():  # afresh, never needing a restart of the gateway
        assert trio.current_time() == 31.5
    assert launcher.starts == [0.0, 30.5]


async def test_a_start_request_skips_the_cool_down(nursery, autojump_clock):
    launcher = FakeLauncher(spawn_error="boom")
    sup = supervisor(launcher, startup={"cooldown": "1h"})
    await nursery.start(sup.run)
    sup.request_start()
    await trio.sleep(1)
    assert sup.state is State.FAILED
    launcher.spawn_error = None
    assert sup.request_start() is True
    await trio.sleep(2)
    assert sup.state is State.READY
    assert launcher.starts == [0.0, 1.0]


async def test_a_stop_during_the_backoff_cancels_the_start(nursery, autojump_clock):
    launcher = FakeLauncher(spawn_error="boom")
    sup = supervisor(launcher, startup={"attempts": 3, "delay": "10s"})
    await nursery.start(sup.run)
    sup.request_start()
    await trio.sleep(5)
    assert sup.state is State.STARTING
    assert sup.request_stop() is True
    await trio.sleep(0.1)
    assert sup.state is State.COLD
    assert launcher.starts == [0.0]


async def test_an_adopted_backend_is_ready_at_once_and_idles_out(nursery, autojump_clock):
    launcher = FakeLauncher()
    sup = supervisor(launcher, idle_timeout=10)
    sup.adopt(FakeRunning(launcher, 4242))
    await nursery.start(sup.run)
    assert sup.state is State.READY and sup.pid == 4242
    async with sup.lease():
        assert trio.current_time() == 0.0
    await trio.sleep(10.5)
    assert sup.state is State.COLD
    assert launcher.stop_calls == [10.0]
    assert launcher.starts == []


async def test_a_passive_request_never_wakes_a_cold_backend(nursery, autojump_clock):
    launcher = FakeLauncher()
    sup = supervisor(launcher)
    await nursery.start(sup.run)
    assert sup.acquire_nowait(passive=True) is None
    await trio.sleep(10)
    assert sup.state is State.COLD
    assert launcher.starts == []


async def test_passive_requests_neither_reset_nor_hold_off_the_idle_timer(
        nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = supervisor(launcher, idle_timeout=10, drain_timeout=30)
    await nursery.start(sup.run)
    async with sup.lease():
        await trio.sleep(1)  # idle from 2
    passive = sup.acquire_nowait(passive=True)
    assert passive is not None
    await trio.sleep_until(5)
    sup.release(passive)  # a health check at 5 changes nothing
    passive = sup.acquire_nowait(passive=True)
    assert passive is not None
    await trio.sleep_until(12.5)
    assert sup.state is State.STOPPING  # idle since 2, although a passive request is in flight
    await trio.sleep_until(20)
    sup.release(passive)
    await trio.sleep(0.1)
    assert sup.state is State.COLD
    assert launcher.stop_calls == [20.0]  # the stop let the passive request finish first


async def test_failed_health_checks_in_a_row_count_as_a_crash(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = supervisor(launcher, idle_timeout=0, health={"interval": "10s", "failures": 3})
    await nursery.start(sup.run)
    async with sup.lease():
        pass
    probe = sup.probe
    assert isinstance(probe, FakeProbe)
    await trio.sleep_until(15)
    probe.healthy = False  # checks at 11 (ok), 21, 31, 41 (failed)
    await trio.sleep_until(40.5)
    assert sup.state is State.READY
    await trio.sleep_until(41.5)
    assert sup.state is State.COLD
    assert launcher.stop_calls == [41.0]
    assert sup.last_error is not None
    assert "failed 3 health checks in a row (refused)" in sup.last_error["detail"]


def _fallback(machine: str, launcher: FakeLauncher) -> Placement:
    return Placement(machine, "http://127.0.0.1:10", "127.0.0.1", 10, b"", launcher,
                     FakeProbe(launcher), ReadinessConfig())


async def test_fallbacks_are_tried_in_order_after_the_primarys_attempts(nursery, autojump_clock):
    primary, backup = FakeLauncher(spawn_error="no gpu"), FakeLauncher(start_s=2)
    machines = Machines(parse_config({"machines": {"backup": {}}}, env={}))
    sup = supervisor(primary, startup={"attempts": 2, "delay": "1s"})
    sup = Supervisor("echo", sup.config, primary, sup.probe, machines=machines,
                     fallbacks=[_fallback("backup", backup)])
    await nursery.start(sup.run)
    async with sup.lease():
        assert trio.current_time() == 3.0  # primary at 0 and 1, backup at 1, ready at 3
    assert (primary.starts, backup.starts) == ([0.0, 1.0], [1.0])
    assert service_status(sup)["machineId"] == "backup"


async def test_an_unavailable_machine_is_skipped_and_named_in_the_attempts(
        nursery, autojump_clock):
    primary, backup = FakeLauncher(spawn_error="no gpu"), FakeLauncher()
    machines = Machines(parse_config(
        {"machines": {"gpu": {"max_failures": 2, "skip_for": "60s"}, "backup": {}}}, env={}))
    base = supervisor(primary, startup={"cooldown": 0})
    sup = Supervisor("echo", base.config.model_copy(update={"machine": "gpu"}), primary,
                     base.probe, machines=machines, fallbacks=[_fallback("backup", backup)])
    machines.set_enabled("backup", False)
    await nursery.start(sup.run)
    for _ in range(2):
        with pytest.raises(StartFailed) as caught:
            async with sup.lease():
                pass
    assert [(a["machine"], a["reason"]) for a in caught.value.extra["attempts"]] == [
        ("gpu", "spawn_failed"), ("backup", "machine_unavailable")]
    # Two failures in a row on gpu: it is skipped now, without an attempt.
    with pytest.raises(StartFailed) as caught:
        async with sup.lease():
            pass
    assert [a["reason"] for a in caught.value.extra["attempts"]] == [
        "machine_unavailable", "machine_unavailable"]
    assert "skipped for 60s more after 2 failed starts in a row" in \
        caught.value.extra["attempts"][0]["detail"]
    assert primary.starts == [0.0, 0.0]
    machines.set_enabled("backup", True)
    async with sup.lease():
        assert backup.starts == [0.0]


def _members(group: Group, **launchers: FakeLauncher) -> dict[str, Supervisor]:
    members = {}
    for name, launcher in launchers.items():
        base = supervisor(launcher)
        members[name] = Supervisor(name, base.config, launcher, base.probe, group=group)
    return members


async def test_a_full_group_evicts_an_idle_member_and_members_take_turns(
        nursery, autojump_clock):
    group = Group("gpu", max_running=1)
    a, b = FakeLauncher(start_s=1, stop_s=2), FakeLauncher(start_s=1)
    members = _members(group, a=a, b=b)
    for member in members.values():
        await nursery.start(member.run)
    async with members["a"].lease():
        assert trio.current_time() == 1.0
    await trio.sleep_until(5)
    async with members["b"].lease():
        # a is stopped first (5 → 7), then b starts (7 → 8).
        assert trio.current_time() == 8.0
        assert members["a"].state is State.COLD
    await trio.sleep_until(10)
    async with members["a"].lease():  # and back: b is evicted (at once), a starts again
        assert trio.current_time() == 11.0
    assert a.stop_calls == [5.0] and b.stop_calls == [10.0]
    assert a.starts == [0.0, 10.0] and b.starts == [7.0]


async def test_a_busy_member_is_never_cut_off_the_start_waits(nursery, autojump_clock):
    group = Group("gpu", max_running=1)
    a, b = FakeLauncher(start_s=1), FakeLauncher(start_s=1)
    members = _members(group, a=a, b=b)
    for member in members.values():
        await nursery.start(member.run)

    async def long_request() -> None:
        async with members["a"].lease():
            await trio.sleep_until(10)  # a stream from 1 to 10

    nursery.start_soon(long_request)
    await trio.sleep_until(5)
    async with members["b"].lease():
        assert trio.current_time() == 11.0  # a evicted once idle at 10, b ready at 11
    assert a.stop_calls == [10.0]


async def test_the_least_recently_used_member_is_evicted(nursery, autojump_clock):
    group = Group("gpu", max_running=2)
    launchers = {name: FakeLauncher(start_s=1) for name in "abc"}
    members = _members(group, **launchers)
    for member in members.values():
        await nursery.start(member.run)
    async with members["a"].lease():
        pass
    async with members["b"].lease():
        pass
    await trio.sleep_until(3)
    async with members["a"].lease():  # a is now the most recently used
        pass
    await trio.sleep_until(5)
    async with members["c"].lease():
        assert trio.current_time() == 6.0
    assert launchers["b"].stop_calls == [5.0]
    assert launchers["a"].stop_calls == []
    assert {m.name for m in group.holders} == {"a", "c"}
