"""The `external` launcher under a supervisor, in virtual time: Hestia cannot start such a
backend, so one probe decides at once whether it serves. End to end, with a real upstream that
someone else starts: tests/integration/test_launcher_external.py."""

from __future__ import annotations

import pytest
import trio

from hestia.errors import StartFailed
from hestia.launchers.external import ExternalLauncher
from hestia.lifecycle.leases import State
from hestia.lifecycle.supervisor import Supervisor
from tests.fakes import service


class SwitchProbe:
    """Answers what `up` says, and records when it was asked."""

    def __init__(self) -> None:
        self.up = False
        self.checks: list[float] = []
        self.last_result: str | None = None

    def describe(self) -> str:
        return "switch"

    async def check(self) -> bool:
        self.checks.append(trio.current_time())
        self.last_result = "ok" if self.up else "refused"
        return self.up

    async def wait_ready(self) -> None:
        raise AssertionError("an external backend is never waited for")


async def test_an_absent_external_backend_is_refused_at_its_first_probe_then_used_once_up(
        nursery, autojump_clock):
    probe = SwitchProbe()
    sup = Supervisor("ext", service(launcher={"external": {}}, readiness={"timeout": "60s"},
                                    startup={"cooldown": 0}),
                     ExternalLauncher(), probe)
    await nursery.start(sup.run)
    await trio.sleep(1)
    with pytest.raises(StartFailed) as caught:
        async with sup.lease():
            pass
    assert trio.current_time() == 1  # not the readiness timeout's 60 s later
    assert caught.value.extra["reason"] == "unreachable"
    assert probe.checks == [1]
    probe.up = True  # started by someone else
    async with sup.lease():
        assert trio.current_time() == 1
        assert sup.state is State.READY
    assert probe.checks == [1, 1]
