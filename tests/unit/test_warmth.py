"""`keep_warm` schedules and `depends_on` in the supervisor, in virtual time.

The schedule's wall clock is `BASE + trio.current_time()`: virtual second 0 is Monday
2026-11-30 07:00 in Berlin (06:00 UTC), so a window's edges fall at exact virtual times.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import trio

from hestia.errors import StartFailed
from hestia.http.status import service_status
from hestia.lifecycle.groups import Group
from hestia.lifecycle.supervisor import State, Supervisor
from tests.fakes import FakeLauncher, FakeProbe, service

BASE = datetime(2026, 11, 30, 7, 0, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
HOUR = 3600.0


def clock() -> float:
    return BASE + trio.current_time()


def make(name: str, launcher: FakeLauncher, peers: dict[str, Supervisor] | None = None,
         group: Group | None = None, **fields: Any) -> Supervisor:
    sup = Supervisor(name, service(**fields), launcher, FakeProbe(launcher), now=clock,
                     peers=peers, group=group)
    if peers is not None:
        peers[name] = sup
    return sup


def scheduled(launcher: FakeLauncher, *windows: str, lead: str = "5m",
              **fields: Any) -> Supervisor:
    keep_warm = {"schedule": list(windows), "timezone": "Europe/Berlin", "lead": lead}
    return make("echo", launcher, keep_warm=keep_warm, **fields)


async def at(t: float) -> None:
    await trio.sleep_until(t)


# --- schedules -------------------------------------------------------------------------------

async def test_a_scheduled_backend_starts_lead_before_its_window_and_stops_after_it(
        nursery, autojump_clock):
    assert trio.current_time() == 0.0
    launcher = FakeLauncher(start_s=2)
    sup = scheduled(launcher, "Mon 08:00-09:00", idle_timeout=30)
    await nursery.start(sup.run)
    await at(HOUR - 300 - 0.1)
    assert sup.state is State.COLD
    await at(HOUR - 300 + 2.1)  # 07:55, lead 5m; ready 2 s later
    assert launcher.starts == [HOUR - 300]
    assert sup.state is State.READY
    # No request all hour, many idle timeouts long: still up at the window's close…
    await at(2 * HOUR - 0.1)
    assert sup.state is State.READY
    # … and idle from then: stopped 30 s after 09:00.
    await at(2 * HOUR + 30 - 0.1)
    assert sup.state is State.READY
    await at(2 * HOUR + 30 + 0.1)
    assert sup.state is State.COLD
    assert launcher.stop_calls == [2 * HOUR + 30]
    assert launcher.starts == [HOUR - 300]


async def test_requests_inside_the_window_do_not_end_it_and_the_last_one_after_counts(
        nursery, autojump_clock):
    launcher = FakeLauncher(start_s=2)
    sup = scheduled(launcher, "Mon 08:00-09:00", idle_timeout=30)
    await nursery.start(sup.run)
    await at(HOUR + 600)
    async with sup.lease():
        await trio.sleep(5)
    await at(HOUR + 600 + 5 + 60)  # two idle timeouts after that request, inside the window
    assert sup.state is State.READY
    await at(2 * HOUR + 10)  # a request just after the close: its end is the last use
    async with sup.lease():
        await trio.sleep(5)
    await at(2 * HOUR + 15 + 30 - 0.1)
    assert sup.state is State.READY
    await at(2 * HOUR + 15 + 30 + 0.1)
    assert launcher.stop_calls == [2 * HOUR + 45]


async def test_a_backend_booted_inside_its_window_starts_at_once(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = scheduled(launcher, "Mon 06:00-08:00")
    await nursery.start(sup.run)
    await at(1.1)
    assert launcher.starts == [0.0]
    assert sup.state is State.READY


async def test_a_stop_through_the_api_lasts_until_the_next_window(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = scheduled(launcher, "daily 08:00-09:00", lead="0s", idle_timeout=30)
    await nursery.start(sup.run)
    await at(HOUR + 600)
    assert sup.request_stop()
    await at(HOUR + 1800)
    assert sup.state is State.COLD
    assert launcher.starts == [HOUR]
    await at(25 * HOUR + 1.1)  # Tuesday 08:00
    assert launcher.starts == [HOUR, 25 * HOUR]
    assert sup.state is State.READY


async def test_a_crash_inside_the_window_is_restarted(nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1, exit_after=600)
    sup = scheduled(launcher, "Mon 08:00-09:00", lead="0s", startup={"delay": "1s"})
    await nursery.start(sup.run)
    await at(HOUR + 700)
    assert launcher.starts == [HOUR, HOUR + 600]  # up 10 min: restarted at once


async def test_a_reload_gives_a_running_backend_a_new_schedule_in_place(
        nursery, autojump_clock):
    launcher = FakeLauncher(start_s=1)
    sup = scheduled(launcher, "Mon 08:00-09:00", lead="0s", idle_timeout=30)
    await nursery.start(sup.run)
    await at(600)  # 07:10, outside the window: a new one, open now, starts the backend at once
    sup.update_policy(service(**{"keep_warm": {"schedule": ["Mon 07:00-07:30"],
                                               "timezone": "Europe/Berlin", "lead": "0s"},
                                 "idle_timeout": 30}), 10.0)
    await at(601.1)
    assert launcher.starts == [600.0]
    assert sup.state is State.READY
    await at(1800 + 30 + 0.1)  # closes at 07:30; idle 30 s after
    assert launcher.stop_calls == [1830.0]
    # The old window (08:00) is gone: nothing starts then.
    await at(2 * HOUR)
    assert launcher.starts == [600.0]
    # A schedule taken away while its window is open lets the backend go idle at once.
    sup.update_policy(service(**{"keep_warm": {"schedule": ["Mon 09:00-10:00"],
                                               "timezone": "Europe/Berlin", "lead": "0s"},
                                 "idle_timeout": 30}), 10.0)
    await at(2 * HOUR + 2)
    assert sup.state is State.READY and launcher.starts == [600.0, 2 * HOUR]
    sup.update_policy(service(idle_timeout=30), 10.0)
    await at(2 * HOUR + 2 + 30 - 0.1)
    assert sup.state is State.READY
    await at(2 * HOUR + 2 + 30 + 0.1)
    assert sup.state is State.COLD
    assert launcher.stop_calls == [1830.0, 2 * HOUR + 2 + 30]
    assert sup.schedule is None and sup.warm is False


async def test_status_shows_the_schedule_and_its_next_change(nursery, autojump_clock):
    sup = scheduled(FakeLauncher(start_s=1), "Mon-Fri 08:00-18:00")
    await nursery.start(sup.run)
    status = service_status(sup)
    assert status["keepWarm"] is False
    assert status["keepWarmSchedule"] == {
        "schedule": ["Mon-Fri 08:00-18:00"], "timezone": "Europe/Berlin", "leadS": 300.0,
        "open": False, "nextChangeAt": "2026-11-30T06:55:00.000Z", "nextChangeInS": 3300.0}
    await at(HOUR)
    status = service_status(sup)
    assert status["keepWarm"] is True
    assert status["keepWarmSchedule"]["open"] is True
    assert status["keepWarmSchedule"]["nextChangeAt"] == "2026-11-30T17:00:00.000Z"
    assert status["keepWarmSchedule"]["nextChangeInS"] == 10 * HOUR


async def test_an_open_window_keeps_a_member_from_being_evicted(nursery, autojump_clock):
    group = Group("gpu", 1)
    peers: dict[str, Supervisor] = {}
    warm = make("warm", FakeLauncher(start_s=1), peers, group, idle_timeout=30,
                keep_warm={"schedule": ["Mon 07:00-08:00"], "timezone": "Europe/Berlin"})
    other = make("other", FakeLauncher(start_s=1), peers, group, queue={"timeout": "2h"})
    for sup in (warm, other):
        await nursery.start(sup.run)
    await at(10)
    granted: list[float] = []

    async def request() -> None:
        async with other.lease():
            granted.append(trio.current_time())

    nursery.start_soon(request)
    await at(HOUR - 1)
    assert (warm.state, other.state) == (State.READY, State.STARTING)
    await at(HOUR + 1.5)  # the window closed at 08:00: `warm` is an idle member now
    assert granted == [HOUR + 1]
    assert warm.state is State.COLD


# --- dependencies ----------------------------------------------------------------------------

def chain(**launchers: FakeLauncher) -> tuple[dict[str, Supervisor], dict[str, FakeLauncher]]:
    """app depends on db then cache."""
    peers: dict[str, Supervisor] = {}
    make("db", launchers["db"], peers, idle_timeout=10)
    make("cache", launchers["cache"], peers, idle_timeout=10)
    make("app", launchers["app"], peers, idle_timeout=100, depends_on=["db", "cache"])
    return peers, launchers


async def test_dependencies_start_first_each_ready_before_the_next(nursery, autojump_clock):
    peers, launchers = chain(db=FakeLauncher(start_s=2), cache=FakeLauncher(start_s=3),
                             app=FakeLauncher(start_s=1))
    for sup in peers.values():
        await nursery.start(sup.run)
    async with peers["app"].lease():
        assert trio.current_time() == 6.0
    assert [launchers[n].starts for n in ("db", "cache", "app")] == [[0.0], [2.0], [5.0]]
    assert peers["db"].held_by == ["app"]
    status = service_status(peers["db"])
    assert (status["heldBy"], status["keepWarm"]) == (["app"], True)
    assert service_status(peers["app"])["dependsOn"] == ["db", "cache"]


async def test_a_dependency_stays_up_while_its_dependent_is_then_idles(nursery, autojump_clock):
    peers, launchers = chain(db=FakeLauncher(start_s=2), cache=FakeLauncher(start_s=3),
                             app=FakeLauncher(start_s=1))
    for sup in peers.values():
        await nursery.start(sup.run)
    async with peers["app"].lease():
        pass
    await at(105.9)  # db's idle timeout (10 s) passed ten times over
    assert peers["db"].state is State.READY
    await at(106.1)  # app stopped at 106 (100 s after its request)
    assert launchers["app"].stop_calls == [106.0]
    assert peers["db"].state is State.READY
    await at(116.1)  # then db and cache idle from 106
    assert launchers["db"].stop_calls == [116.0]
    assert launchers["cache"].stop_calls == [116.0]


async def test_a_failed_dependency_fails_the_start_naming_it(nursery, autojump_clock):
    peers, launchers = chain(db=FakeLauncher(start_s=2),
                             cache=FakeLauncher(spawn_error="no such file: redis-server"),
                             app=FakeLauncher(start_s=1))
    for sup in peers.values():
        await nursery.start(sup.run)
    with pytest.raises(StartFailed) as caught:
        async with peers["app"].lease():
            pass
    assert trio.current_time() == 2.0
    assert caught.value.detail == ("'app' was not started: its dependency 'cache' failed to "
                                   "start: 'cache' failed to start (1 attempt): no such file: "
                                   "redis-server")
    assert caught.value.extra["dependency"] == "cache"
    assert caught.value.extra["reason"] == "dependency_failed"
    assert launchers["app"].starts == []
    assert peers["app"].state is State.FAILED
    # Nothing holds db and cache any more: db goes idle from the failure on.
    assert peers["db"].held_by == [] and peers["cache"].held_by == []
    await at(12.1)
    assert launchers["db"].stop_calls == [12.0]


async def test_a_dependency_in_its_cool_down_fails_the_start_at_once(nursery, autojump_clock):
    peers, launchers = chain(db=FakeLauncher(spawn_error="boom"),
                             cache=FakeLauncher(), app=FakeLauncher())
    for sup in peers.values():
        await nursery.start(sup.run)
    with pytest.raises(StartFailed):
        async with peers["db"].lease():
            pass
    assert peers["db"].state is State.FAILED
    with pytest.raises(StartFailed) as caught:
        async with peers["app"].lease():
            pass
    assert trio.current_time() == 0.0
    assert "its dependency 'db' failed to start" in caught.value.detail
    assert launchers["db"].starts == [0.0]


async def test_stopping_a_dependency_stops_its_dependent_first(nursery, autojump_clock):
    peers, launchers = chain(db=FakeLauncher(start_s=1, stop_s=2),
                             cache=FakeLauncher(start_s=1, stop_s=2),
                             app=FakeLauncher(start_s=1, stop_s=2))
    for sup in peers.values():
        await nursery.start(sup.run)
    async with peers["app"].lease():
        pass
    assert peers["db"].request_stop()
    await at(20)
    assert launchers["app"].stop_calls == [3.0]
    assert launchers["db"].stop_calls == [5.0]  # once app's 2 s stop is done
    assert launchers["cache"].stop_calls == [15.0]  # idle 10 s after app went COLD at 3+2
    assert all(sup.state is State.COLD for sup in peers.values())


async def test_shutdown_stops_dependents_before_their_dependencies(nursery, autojump_clock):
    peers, launchers = chain(db=FakeLauncher(start_s=1, stop_s=2),
                             cache=FakeLauncher(start_s=1, stop_s=2),
                             app=FakeLauncher(start_s=1, stop_s=2))
    for sup in peers.values():
        await nursery.start(sup.run)
    async with peers["app"].lease():
        pass
    for sup in peers.values():
        sup.close()
    await at(20)
    assert launchers["app"].stop_calls == [3.0]
    assert launchers["db"].stop_calls == launchers["cache"].stop_calls == [5.0]


async def test_a_dependency_held_by_a_dependent_is_not_evicted(nursery, autojump_clock):
    group = Group("gpu", 1)
    peers: dict[str, Supervisor] = {}
    db = make("db", FakeLauncher(start_s=1), peers, group, idle_timeout=30)
    app = make("app", FakeLauncher(start_s=1), peers, idle_timeout=100, depends_on=["db"])
    other = make("other", FakeLauncher(start_s=1), peers, group, queue={"timeout": "5m"})
    for sup in peers.values():
        await nursery.start(sup.run)
    async with app.lease():
        pass
    granted: list[float] = []

    async def request() -> None:
        async with other.lease():
            granted.append(trio.current_time())

    nursery.start_soon(request)
    await at(101.9)
    assert db.state is State.READY and granted == []
    await at(103.1)  # app stopped at 102; db, idle, is evicted; other ready a second later
    assert granted == [103.0]
    assert db.state is State.COLD


async def test_dependencies_are_looked_up_by_id_when_a_start_begins(nursery, autojump_clock):
    # What a live reload does: the entry for `db` is replaced, or removed, at runtime.
    peers: dict[str, Supervisor] = {}
    old = make("db", FakeLauncher(start_s=1), peers)
    app = make("app", FakeLauncher(start_s=1), peers, depends_on=["db"],
               startup={"cooldown": 0})
    new_launcher = FakeLauncher(start_s=2)
    new = make("db", new_launcher, peers)
    for sup in (old, app, new):
        await nursery.start(sup.run)
    async with app.lease():
        assert trio.current_time() == 3.0
    assert new_launcher.starts == [0.0] and old.state is State.COLD
    assert new.held_by == ["app"]
    app.request_stop()
    await at(10)
    del peers["db"]
    with pytest.raises(StartFailed) as caught:
        async with app.lease():
            pass
    assert caught.value.detail == ("'app' was not started: its dependency 'db' failed to "
                                   "start: 'db' is not configured")


async def test_across_the_spring_change_the_window_opens_at_the_same_wall_time(
        nursery, autojump_clock):
    # Virtual 0 is Saturday 2026-03-28 00:00 in Berlin (CET); the clocks go forward that night.
    base = datetime(2026, 3, 28, 0, 0, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    launcher = FakeLauncher(start_s=1)
    keep_warm = {"schedule": ["daily 08:00-09:00"], "timezone": "Europe/Berlin", "lead": "0s"}
    sup = Supervisor("echo", service(keep_warm=keep_warm, idle_timeout=60), launcher,
                     FakeProbe(launcher), now=lambda: base + trio.current_time())
    await nursery.start(sup.run)
    await at(60 * HOUR)
    # Saturday 08:00 CET, then Sunday 08:00 CEST: 23 hours later, not 24.
    assert launcher.starts == [8 * HOUR, 31 * HOUR, 55 * HOUR]
    assert launcher.stop_calls == [9 * HOUR + 60, 32 * HOUR + 60, 56 * HOUR + 60]
