"""`max_connections`: at most that many requests in flight to one backend; the others wait in
the hold queue, first in first out, within `queue.timeout` (virtual time)."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel

from hestia.config import parse_config
from hestia.errors import ConfigError, QueueFull, QueueTimeout
from hestia.http.status import service_status
from hestia.lifecycle.supervisor import State, Supervisor
from tests.fakes import FakeLauncher, supervisor

Grants = list[tuple[int, str, float]]


async def hold(sup: Supervisor, seconds: float, grants: Grants, name: str) -> None:
    async with sup.lease() as lease:
        grants.append((lease.serial, name, trio.current_time()))
        await trio.sleep(seconds)


async def hold_all(sup: Supervisor, count: int, seconds: float) -> Grants:
    """`count` clients, named "0", "1" …, arrive in that order and each hold a lease for
    `seconds`; returns once all are done."""
    granted: Grants = []
    async with trio.open_nursery() as clients:
        for index in range(count):
            clients.start_soon(hold, sup, seconds, granted, str(index))
            await trio.lowlevel.checkpoint()
    return granted


def in_grant_order(grants: Grants) -> list[tuple[str, float]]:
    """(name, time) of each lease in the order the leases were granted: tasks woken in the
    same instant run in any order, a lease's serial says which was granted first."""
    return [(name, at) for _, name, at in sorted(grants)]


async def test_a_cold_start_releases_only_max_connections_then_one_per_release_in_order(
        nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=1), max_connections=2)
    await nursery.start(sup.run)
    granted: Grants = []
    async with trio.open_nursery() as clients:
        clients.start_soon(hold, sup, 10, granted, "a")
        await trio.sleep(0.1)
        clients.start_soon(hold, sup, 5, granted, "b")
        for name in "cde":
            await trio.sleep(0.1)
            clients.start_soon(hold, sup, 10, granted, name)
        await trio.sleep_until(2)
        status = service_status(sup)
        assert (status["state"], status["inFlight"], status["connectionsInUse"],
                status["maxConnections"], status["queuePending"]) == ("READY", 2, 2, 2, 3)
    # b ends at 6 (c takes its slot), a at 11 (d), c at 16 (e).
    assert in_grant_order(granted) == [("a", 1.0), ("b", 1.0), ("c", 6.0), ("d", 11.0), ("e", 16.0)]


async def test_a_newcomer_never_overtakes_the_queue(nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=1), max_connections=1)
    await nursery.start(sup.run)
    granted: Grants = []
    async with trio.open_nursery() as clients:
        clients.start_soon(hold, sup, 10, granted, "first")  # 1 to 11
        await trio.sleep_until(2)
        clients.start_soon(hold, sup, 10, granted, "second")  # 11 to 21
        await trio.sleep_until(3)
        clients.start_soon(hold, sup, 10, granted, "third")
        await trio.sleep_until(11.5)
        # The slot went to `second` in the same step as `first` gave it back.
        assert sup.acquire_nowait() is None
        clients.start_soon(hold, sup, 10, granted, "late")
    assert in_grant_order(granted) == [("first", 1.0), ("second", 11.0), ("third", 21.0),
                                       ("late", 31.0)]


async def test_waiting_for_a_slot_ends_at_the_queue_deadline(nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=1), max_connections=1, queue={"timeout": "5s"})
    await nursery.start(sup.run)
    nursery.start_soon(hold, sup, 100, [], "long stream")
    await trio.sleep_until(2)
    with pytest.raises(QueueTimeout) as caught:
        async with sup.lease():
            pass
    assert trio.current_time() == 7.0
    assert caught.value.status == 503
    assert caught.value.detail == ("no connection to 'echo' came free within 5.0s "
                                   "(all 1 of max_connections in use)")
    assert caught.value.extra["state"] == "READY"
    assert sup.queue_pending == 0


async def test_the_queue_bound_holds_for_requests_waiting_for_a_slot(nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=1), max_connections=1, queue={"max": 1})
    await nursery.start(sup.run)
    granted: Grants = []
    nursery.start_soon(hold, sup, 10, granted, "holder")
    await trio.sleep_until(2)
    nursery.start_soon(hold, sup, 1, granted, "waiter")
    await trio.sleep_until(3)
    with pytest.raises(QueueFull):
        await sup.acquire()
    assert trio.current_time() == 3.0
    await trio.sleep_until(20)
    assert in_grant_order(granted) == [("holder", 1.0), ("waiter", 11.0)]


async def test_a_waiter_that_goes_away_leaves_its_place(nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=1), max_connections=1)
    await nursery.start(sup.run)
    granted: Grants = []
    nursery.start_soon(hold, sup, 10, granted, "holder")
    await trio.sleep_until(2)
    with trio.move_on_after(3):
        await sup.acquire()
    assert sup.queue_pending == 0
    nursery.start_soon(hold, sup, 1, granted, "next")
    await trio.sleep_until(20)
    assert in_grant_order(granted) == [("holder", 1.0), ("next", 11.0)]
    assert sup.connections_in_use == 0


async def test_passive_requests_neither_count_nor_wait(nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=1), max_connections=1)
    await nursery.start(sup.run)
    nursery.start_soon(hold, sup, 10, [], "holder")
    await trio.sleep_until(2)
    passive = sup.acquire_nowait(passive=True)
    assert passive is not None
    assert (sup.in_flight, sup.connections_in_use) == (2, 1)
    sup.release(passive)


async def test_a_freed_slot_goes_to_the_next_waiter_and_the_lease_still_holds_the_backend(
        nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = supervisor(launcher, max_connections=1, idle_timeout=10)
    await nursery.start(sup.run)
    socket = await sup.acquire()  # an open WebSocket, from 1 until 100
    granted: Grants = []
    nursery.start_soon(hold, sup, 10, granted, "request")
    await trio.sleep_until(5)
    assert granted == []
    sup.free_slot(socket)  # the handshake is done
    await trio.sleep_until(6)
    assert in_grant_order(granted) == [("request", 5.0)]
    assert (sup.in_flight, sup.connections_in_use) == (2, 1)
    await trio.sleep_until(100)
    assert sup.state is State.READY  # the socket kept the backend from idling out
    assert sup.connections_in_use == 0
    sup.release(socket)
    await trio.sleep_until(110.5)
    assert launcher.stop_calls == [110.0]


async def test_revoked_leases_give_their_slots_to_the_next_backend(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = supervisor(launcher, max_connections=1)
    await nursery.start(sup.run)
    stuck = await sup.acquire()  # a holder slow to notice the crash: never gives it back
    await trio.sleep_until(70)
    assert launcher.current is not None
    launcher.current.exit(3)
    async with sup.lease():
        assert trio.current_time() == 71.0  # the fresh backend, ready 1 s after the crash
    assert stuck.error is not None
    sup.release(stuck)


async def test_zero_means_no_cap(nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=1), max_connections=0, queue={"max": 500})
    await nursery.start(sup.run)
    granted = await hold_all(sup, 300, 10)
    assert in_grant_order(granted) == [(str(index), 1.0) for index in range(300)]


async def test_the_default_is_32(nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=1), queue={"max": 100})
    assert sup.config.max_connections == 32
    await nursery.start(sup.run)
    granted = await hold_all(sup, 40, 10)
    assert [at for _, _, at in sorted(granted)] == [1.0] * 32 + [11.0] * 8


@pytest.mark.parametrize(("value", "message"), [
    (-1, "Input should be greater than or equal to 0"),
    ("many", "Input should be a valid integer, unable to parse string as an integer"),
    (1.5, "Input should be a valid integer, got a number with a fractional part")])
def test_max_connections_must_be_a_whole_number_of_at_least_zero(value, message):
    raw = {"services": {"echo": {"upstream": "http://127.0.0.1:9",
                                 "launcher": {"process": {"command": ["x"]}},
                                 "max_connections": value}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    assert str(caught.value) == ("configuration: 1 error(s)\n"
                                 f"  services.echo.max_connections: {message}")


def test_backends_take_the_services_max_connections_as_their_default():
    raw = {"services": {"llm": {
        "max_connections": 4, "launcher": {"process": {"command": ["x"]}},
        "backends": {"a": {"upstream": "http://127.0.0.1:9"},
                     "b": {"upstream": "http://127.0.0.1:10", "max_connections": 64}}}}}
    config = parse_config(raw, env={})
    assert config.services["llm@a"].max_connections == 4
    assert config.services["llm@b"].max_connections == 64
