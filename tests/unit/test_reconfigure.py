"""How a supervisor takes a reloaded configuration (lifecycle/reconfigure.py), in virtual
time: policy in place, launch fields by draining and starting again, removal by draining and
stopping."""

from __future__ import annotations

import pytest
import trio

from hestia.config import Config, parse_config
from hestia.errors import BackendStopped, StartCancelled
from hestia.lifecycle.placement import Machines, Placement
from hestia.lifecycle.supervisor import State
from tests.fakes import FakeLauncher, FakeProbe, service, supervisor


def placements(launcher: FakeLauncher, **fields) -> list[Placement]:
    return [Placement.primary(service(**fields), launcher, FakeProbe(launcher))]


async def test_a_new_idle_timeout_applies_to_the_running_backend(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = supervisor(launcher, idle_timeout="60s")
    await nursery.start(sup.run)
    async with sup.lease():
        pass  # READY at 1, idle from 1
    await trio.sleep(9)
    sup.update_policy(service(idle_timeout="20s"), drain_timeout=10)
    await sup.wait_until(State.COLD)
    assert trio.current_time() == 21.0  # idle since 1, for the new 20 s
    assert launcher.starts == [0.0]


async def test_a_larger_max_connections_lets_a_waiting_request_in_at_once(
        nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=1), max_connections=1)
    await nursery.start(sup.run)
    granted: list[float] = []

    async def second() -> None:
        async with sup.lease():
            granted.append(trio.current_time())

    async with sup.lease():
        nursery.start_soon(second)
        await trio.sleep(5)
        assert sup.queue_pending == 1
        sup.update_policy(service(max_connections=2), drain_timeout=10)
        await trio.sleep(1)
    assert granted == [6.0]


async def test_turning_keep_warm_on_starts_a_cold_backend(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=2)
    sup = supervisor(launcher)
    await nursery.start(sup.run)
    await trio.sleep(10)
    sup.update_policy(service(keep_warm=True), drain_timeout=10)
    await sup.wait_until(State.READY)
    assert (launcher.starts, trio.current_time()) == ([10.0], 12.0)


async def test_new_health_settings_take_effect_while_ready(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = supervisor(launcher, idle_timeout=0)
    await nursery.start(sup.run)
    async with sup.lease():
        pass
    sup.probe.healthy = False  # type: ignore[attr-defined]
    sup.update_policy(service(idle_timeout=0, health={"interval": "2s", "failures": 2}),
                      drain_timeout=10)
    await sup.wait_until(State.COLD)
    assert trio.current_time() == 5.0  # READY at 1, probes fail at 3 and 5


async def test_a_launch_change_drains_the_request_in_flight_then_starts_the_new_backend(
        nursery, autojump_clock):
    old, new = FakeLauncher(start_s=1), FakeLauncher(start_s=3)
    sup = supervisor(old)
    await nursery.start(sup.run)
    finished: list[float] = []

    async def long_request() -> None:
        async with sup.lease() as lease:
            await trio.sleep(4)
            finished.append(trio.current_time())
        assert lease.error is None

    nursery.start_soon(long_request)
    await trio.sleep(2)  # READY at 1; the request runs until 5
    moved = {"upstream": "http://127.0.0.1:9100"}
    sup.replace_launch(service(**moved), placements(new, **moved), None, drain_timeout=10)
    await trio.sleep(0.5)
    assert sup.state is State.STOPPING  # no new lease on the old backend
    await sup.wait_until(State.COLD)
    assert (finished, old.stop_calls, trio.current_time()) == ([5.0], [5.0], 5.0)
    assert new.starts == []  # lazily: the next request starts it
    await trio.sleep(10)
    async with sup.lease():
        assert trio.current_time() == 18.0
    assert new.starts == [15.0]
    assert sup.placement.upstream == "http://127.0.0.1:9100"


async def test_a_launch_change_gives_in_flight_requests_the_grace_period(
        nursery, autojump_clock):
    old = FakeLauncher(start_s=1)
    sup = supervisor(old)
    await nursery.start(sup.run)
    errors: list[object] = []

    async def endless() -> None:
        async with sup.lease() as lease:
            await trio.sleep_forever()
        errors.append(lease.error)

    async with trio.open_nursery() as clients:
        clients.start_soon(endless)
        await trio.sleep(2)
        sup.replace_launch(service(), placements(FakeLauncher()), None, drain_timeout=3)
    assert [type(e) for e in errors] == [BackendStopped]
    await sup.wait_until(State.COLD)
    assert (trio.current_time(), old.stop_calls) == (5.0, [5.0])


async def test_requests_waiting_for_a_start_wait_for_the_new_backend_instead(
        nursery, autojump_clock):
    old, new = FakeLauncher(start_s=10), FakeLauncher(start_s=2)
    sup = supervisor(old)
    await nursery.start(sup.run)
    granted: list[tuple[float, int | None]] = []

    async def request() -> None:
        async with sup.lease():
            granted.append((trio.current_time(), sup.pid))

    async with trio.open_nursery() as clients:
        clients.start_soon(request)
        await trio.sleep(4)  # the old backend is starting
        sup.replace_launch(service(), placements(new), None, drain_timeout=10)
    assert granted == [(6.0, 1001)]  # the new launcher's first pid
    assert (old.starts, new.starts) == ([0.0], [4.0])


async def test_a_keep_warm_backend_restarts_at_once_with_its_new_launcher(
        nursery, autojump_clock):
    old, new = FakeLauncher(start_s=1), FakeLauncher(start_s=2)
    sup = supervisor(old, keep_warm=True)
    await nursery.start(sup.run)
    await sup.wait_until(State.READY)
    sup.replace_launch(service(keep_warm=True), placements(new), None, drain_timeout=10)
    await sup.wait_until(State.STARTING)
    await sup.wait_until(State.READY)
    assert (old.stop_calls, new.starts, trio.current_time()) == ([1.0], [1.0], 3.0)


async def test_a_removed_backend_lets_its_request_finish_then_stops_and_ends(
        nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = supervisor(launcher, drain_timeout=10)
    await nursery.start(sup.run)
    finished: list[float] = []

    async def request() -> None:
        async with sup.lease() as lease:
            await trio.sleep(3)
            finished.append(trio.current_time())
        assert lease.error is None

    nursery.start_soon(request)
    await trio.sleep(2)
    sup.retire()
    with pytest.raises(StartCancelled, match="removed from the configuration"):
        async with sup.lease():
            pass
    await sup.closed.wait()
    assert (finished, launcher.stop_calls, trio.current_time()) == ([4.0], [4.0], 4.0)


async def test_machines_kept_by_a_reload_keep_whether_a_person_disabled_them():
    def config(**machines: dict) -> Config:
        return parse_config({"machines": machines}, env={})

    machines = Machines(config(gpu={"max_failures": 2}, old={}))
    machines.set_enabled("gpu", False)
    machines.reconfigure(config(gpu={"max_failures": 5}, new={}))
    status = {m["machineId"]: m for m in machines.status()}
    assert sorted(status) == ["gpu", "local", "new"]
    assert (status["gpu"]["enabled"], status["gpu"]["maxFailures"]) == (False, 5)
    assert status["new"]["enabled"] is True


async def test_a_removed_backend_cuts_a_request_longer_than_the_grace_period(
        nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = supervisor(launcher, drain_timeout=3)
    await nursery.start(sup.run)
    errors: list[object] = []

    async def endless() -> None:
        async with sup.lease() as lease:
            await trio.sleep_forever()
        errors.append(lease.error)

    async with trio.open_nursery() as clients:
        clients.start_soon(endless)
        await trio.sleep(2)
        sup.retire()
    assert trio.current_time() == 5.0  # retired at 2, with 3 s of grace
    assert [type(e) for e in errors] == [BackendStopped]
    await sup.closed.wait()
    assert launcher.stop_calls == [5.0]


async def test_keep_warm_turned_off_counts_idleness_from_then(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = supervisor(launcher, keep_warm=True, idle_timeout="30s")
    await nursery.start(sup.run)
    await trio.sleep(3600)  # warm for an hour, no request
    assert sup.state is State.READY
    sup.update_policy(service(idle_timeout="30s"), drain_timeout=10)
    await sup.wait_until(State.COLD)
    assert trio.current_time() == 3630.0  # 30 s after the change, not at once
    assert launcher.starts == [0.0]
