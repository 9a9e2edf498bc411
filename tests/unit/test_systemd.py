"""The systemd notify protocol's messages, and when they are sent, in virtual time.

A real gateway speaking it to a real socket is in tests/integration/test_systemd.py."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest
import trio
from structlog.testing import capture_logs

from hestia.errors import ConfigError
from hestia.lifecycle.leases import State
from hestia.systemd import STATUS_MIN_GAP_S, SystemdNotifier, listen_fds, status_line


class Sink:
    """Records each datagram with the virtual time it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, str]] = []

    def __call__(self, message: bytes) -> None:
        self.sent.append((trio.current_time(), message.decode()))

    def messages(self) -> list[str]:
        return [m for _, m in self.sent]


def test_the_environment_names_the_socket_and_the_watchdog_and_is_then_cleared():
    env = {"NOTIFY_SOCKET": "@hestia/notify", "WATCHDOG_USEC": "10000000",
           "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    notifier = SystemdNotifier.from_environ(env)
    assert notifier.address == "\0hestia/notify"  # abstract: a leading NUL, not '@'
    assert notifier.watchdog_s == 5.0  # half of WATCHDOG_USEC
    assert env == {"PATH": "/bin"}  # backends inherit none of it


def test_a_path_socket_is_used_as_it_is_and_no_watchdog_without_watchdog_usec():
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": "/run/systemd/notify"})
    assert (notifier.address, notifier.watchdog_s) == ("/run/systemd/notify", None)


def test_a_watchdog_meant_for_another_process_is_not_fed():
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "2000000",
                                             "WATCHDOG_PID": str(os.getpid() + 1)})
    assert notifier.watchdog_s is None


def test_without_notify_socket_nothing_is_sent():
    notifier = SystemdNotifier.from_environ({})
    assert not notifier.enabled
    notifier.ready()  # no socket, no error


async def test_a_message_is_key_value_lines_in_the_order_given():
    sink = Sink()
    SystemdNotifier(send=sink).notify(READY="1", STATUS="2 services: …")
    assert [m for _, m in sink.sent] == ["READY=1\nSTATUS=2 services: …"]


def test_a_missing_socket_is_logged_once_and_never_raises(tmp_path):
    notifier = SystemdNotifier(str(tmp_path / "gone.sock"))
    with capture_logs() as logs:
        notifier.notify(READY="1")
        notifier.notify(STATUS="x")
    assert [(e["event"], e["socket"], e["detail"]) for e in logs] == [
        ("systemd_notify_failed", str(tmp_path / "gone.sock"), "No such file or directory")]


def supervisors(*states: State, held: int = 0) -> list[SimpleNamespace]:
    return [SimpleNamespace(state=s, queue_pending=held if i == 0 else 0)
            for i, s in enumerate(states)]


def test_the_status_line_counts_states_and_held_requests():
    assert status_line(supervisors(State.READY, State.STARTING, State.COLD, State.COLD,
                                   held=3)) == \
        "4 services: 1 ready, 1 starting, 2 cold; 3 requests held"
    assert status_line(supervisors(State.FAILED, held=1)) == \
        "1 service: 0 ready, 0 starting, 0 cold, 1 failed; 1 request held"
    assert status_line(supervisors(State.STOPPING)) == \
        "1 service: 0 ready, 0 starting, 0 cold, 1 stopping; 0 requests held"


async def test_the_watchdog_is_fed_every_half_watchdog_usec(nursery, autojump_clock):
    sink = Sink()
    notifier = SystemdNotifier(watchdog_s=5.0, send=sink)
    await nursery.start(notifier.run, lambda: "counts", trio.Event())
    await trio.sleep(16)
    assert [t for t, m in sink.sent if m == "WATCHDOG=1"] == [0.0, 5.0, 10.0, 15.0]


async def test_no_watchdog_is_sent_when_systemd_asks_for_none(nursery, autojump_clock):
    sink = Sink()
    await nursery.start(SystemdNotifier(send=sink).run, lambda: "counts", trio.Event())
    await trio.sleep(60)
    assert "WATCHDOG=1" not in sink.messages()


async def test_status_is_sent_when_it_changes_at_most_once_per_gap(nursery, autojump_clock):
    sink = Sink()
    notifier = SystemdNotifier(send=sink)
    counts = ["a"]
    await nursery.start(notifier.run, lambda: counts[0], trio.Event())
    await trio.sleep(0.1)
    counts[0] = "b"
    notifier.status_changed()  # sent at once
    for later in ("c", "d"):
        await trio.sleep(0.1)
        counts[0] = later
        notifier.status_changed()  # within the gap: only the last one, when the gap ends
    await trio.sleep(1.0)
    counts[0] = "e"  # no event (requests held change without one): seen by the next look
    await trio.sleep(3.0)
    assert sink.sent == [(pytest.approx(0.1), "STATUS=b"),
                         (pytest.approx(0.1 + STATUS_MIN_GAP_S), "STATUS=d"),
                         (pytest.approx(2.1), "STATUS=e")]


async def test_ready_and_stopping_carry_the_status(nursery, autojump_clock):
    sink = Sink()
    notifier = SystemdNotifier(send=sink)
    shutdown = trio.Event()
    await nursery.start(notifier.run, lambda: "1 service: …", shutdown)
    notifier.ready()
    shutdown.set()
    await trio.sleep(0.01)
    assert sink.messages() == ["READY=1\nSTATUS=1 service: …",
                               "STOPPING=1\nSTATUS=stopping; 1 service: …"]


async def test_a_reload_is_framed_by_reloading_with_the_monotonic_time_and_ready(nursery):
    sink = Sink()
    notifier = SystemdNotifier(send=sink)
    await nursery.start(notifier.run, lambda: "counts", trio.Event())
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    async with notifier.reloading():
        assert len(sink.sent) == 1
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading, ready = sink.messages()
    fields = dict(line.split("=", 1) for line in reloading.splitlines())
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after
    assert fields["STATUS"] == "reloading; counts"
    assert ready == "READY=1\nSTATUS=counts"


async def test_a_failed_reload_still_ends_with_ready_and_says_so(nursery):
    sink = Sink()
    notifier = SystemdNotifier(send=sink)
    await nursery.start(notifier.run, lambda: "counts", trio.Event())
    with pytest.raises(ConfigError):
        async with notifier.reloading():
            raise ConfigError([("services.x", "bad")], "hestia.yml")
    # The error's lines on one: a newline would start another assignment.
    assert sink.messages()[-1] == ("READY=1\nSTATUS=reload failed: hestia.yml: 1 error(s) "
                                   "services.x: bad; counts")


def test_socket_activation_is_for_the_process_listen_pid_names():
    env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDNAMES": "web"}
    assert listen_fds(env) == []
    assert env == {}  # removed either way: a backend must not take fd 3 as its own


def test_a_listen_fds_that_is_no_number_is_a_config_error():
    with pytest.raises(ConfigError) as caught:
        listen_fds({"LISTEN_FDS": "three", "LISTEN_PID": str(os.getpid())})
    assert caught.value.errors == [("LISTEN_FDS", "'three' is not a number of sockets")]


def test_no_sockets_passed_means_none_served():
    assert listen_fds({"LISTEN_FDS": "0", "LISTEN_PID": str(os.getpid())}) == []
    assert listen_fds({}) == []
