"""Recovery's polling of an adopted process, in virtual time. An adopted process is not our
child, so its end is seen only by looking at `/proc` every `WAIT_POLL`; here `is_alive` (and the
signal and record functions around it) are stand-ins that follow trio's clock. End to end, with
real leftover processes: tests/integration/test_recovery.py."""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from hestia.launchers.registry import Record
from hestia.lifecycle import recovery
from hestia.lifecycle.recovery import WAIT_POLL, AdoptedRunning


def record() -> Record:
    return Record(service="up", pid=4242, pgid=4242, start_time=1, boot_id=None,
                  command=["app"], upstream="http://127.0.0.1:9", machine="local",
                  launcher="process", config="", stop_signal="SIGTERM", stop_timeout=5,
                  log_path="/nonexistent", log_offset=0, owner_pid=1, owner_start_time=None,
                  recorded_at="")


async def test_an_adopted_process_that_ends_is_seen_at_the_next_poll_and_its_group_killed(
        tmp_path: Path, monkeypatch, autojump_clock):
    ends_at = 2 * WAIT_POLL + 0.2
    monkeypatch.setattr(recovery, "is_alive",
                        lambda pid, start_time: trio.current_time() < ends_at)
    signalled: list[tuple[float, int, signal.Signals]] = []
    monkeypatch.setattr(recovery, "_signal_group", lambda rec, sig: signalled.append(
        (trio.current_time(), rec.pgid, sig)))
    forgotten: list[tuple[float, Path]] = []
    monkeypatch.setattr(recovery, "forget", lambda path, pid, start_time: forgotten.append(
        (trio.current_time(), path)))
    running = AdoptedRunning(record(), tmp_path / "up.json")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(running.wait)
        await trio.sleep(ends_at)
        assert signalled == forgotten == []  # ended, but not looked at yet
    # Looked at every WAIT_POLL: the end is seen at the first look after it.
    assert trio.current_time() == 3 * WAIT_POLL
    assert signalled == [(3 * WAIT_POLL, 4242, signal.SIGKILL)]  # what it left in its group
    assert forgotten == [(3 * WAIT_POLL, tmp_path / "up.json")]
