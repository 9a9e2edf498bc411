"""Remote backends across a crash, in virtual time: the journal written at each stage of a
Semaphore start and stop, and what the next Hestia decides from it.

A Hestia is a hub, a journal on a store and a supervisor; `kill()` stands for kill -9: from
that instant nothing more it does reaches Semaphore (its transport is cut) or the store (its
journal is detached), so whatever its cancellation then tries is lost, as it would be. The
stand-in (tests/semaphore_standin.py) runs in-process: its 5-second pool tick, the playbooks
and Hestia's 1-second polls are all on the virtual clock, so the times below are exact. End to
end, with `hestia serve` killed for real: tests/integration/test_remote_recovery.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trio
from structlog.testing import capture_logs

from hestia.config import parse_config
from hestia.launchers import semaphore as semaphore_launcher
from hestia.launchers.registry import boot_id, proc_stat
from hestia.launchers.semaphore import SemaphoreLauncher
from hestia.lifecycle.placement import Machines, Placement
from hestia.lifecycle.remote_recovery import decide, resume_remote
from hestia.lifecycle.supervisor import State, Supervisor
from hestia.semaphore.hub import SemaphoreHub
from hestia.semaphore.journal import RemoteRow
from hestia.store import Store
from tests.semaphore_standin import SemaphoreStandin, TaskRun
from tests.unit.test_semaphore import FlagProbe, Service


class Cuttable(httpx.AsyncBaseTransport):
    """The hub's way to Semaphore, which a kill cuts."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.cut = False
        # Killed the moment Semaphore has handled a request `kill_after` matches.
        self.kill_after: Callable[[httpx.Request], bool] = lambda request: False
        self.kill: Callable[[], None] = lambda: None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.cut:
            raise httpx.ConnectError("killed", request=request)
        response = await self.inner.handle_async_request(request)
        if self.kill_after(request):
            self.kill()
            raise httpx.ConnectError("killed", request=request)
        return response


class Hestia:
    """One run of Hestia with one service `ollama` on machine `gpu` (or none)."""

    def __init__(self, standin: SemaphoreStandin, store: Store, tmp_path: Path,
                 service: Service, owner: int, *, launcher: dict[str, Any],
                 configured: bool = True, project: int = 1,
                 url: str = "http://semaphore:3000", **fields: Any) -> None:
        raw = {"semaphore": {"url": url, "project": project,
                             "poll_interval": "1s", "token": standin.create_token("admin")},
               "machines": {"gpu": {"semaphore": launcher}},
               "services": {"ollama": {"upstream": "http://gpu:11434", "machine": "gpu",
                                       "queue": {"timeout": "10m"}, **fields}}
               if configured else {}}
        self.config = parse_config({**raw, "data_dir": str(tmp_path)}, env={})
        self.transport = Cuttable(httpx.ASGITransport(app=standin.app))
        self.transport.kill = self.kill
        self.hub = SemaphoreHub(self.config, transport=self.transport)
        self.journal = self.hub.journal
        self.journal.attach(store, (owner, None, None))  # no start time: never "in use"
        self.supervisors: dict[str, Supervisor] = {}
        if configured:
            service_config = self.config.services["ollama"]
            assert self.config.machines["gpu"].semaphore is not None
            started = SemaphoreLauncher.from_hub(self.hub, "ollama",
                                                 self.config.machines["gpu"].semaphore,
                                                 tmp_path / "ollama.log")
            placement = Placement("gpu", "http://gpu:11434", "gpu", 11434, b"", started,
                                  FlagProbe(service), service_config.readiness)
            sup = Supervisor("ollama", service_config, started, placement.probe,
                             machines=Machines(self.config))
            sup.events.add_listener(self.journal.listen)
            self.supervisors["ollama"] = sup

    @property
    def sup(self) -> Supervisor:
        return self.supervisors["ollama"]

    def kill(self) -> None:
        self.transport.cut = True
        self.journal._store = None  # nothing more is written: the process is gone

    def recover(self) -> list[Any]:
        return resume_remote(self.config, self.supervisors, self.journal, self.hub)


def the_decision(logs: list[dict[str, Any]]) -> dict[str, Any]:
    """The one `remote_backend_*` decision logged."""
    (event,) = [e for e in logs if e["event"].startswith("remote_backend")]
    return event


@pytest.fixture
async def standin(nursery: trio.Nursery) -> SemaphoreStandin:
    semaphore = SemaphoreStandin(tick=5.0)
    await nursery.start(semaphore.run)
    return semaphore


@pytest.fixture
def store(tmp_path: Path) -> Any:
    db = Store(tmp_path / "hestia.db")
    yield db
    db.close()


def scene(standin: SemaphoreStandin, service: Service, *, start_s: float = 3.5,
          stop_s: float = 2.5) -> dict[str, int]:
    """Templates `start` and `stop` that bring `service` up and down."""
    project = standin.add_project("infra")

    async def stop(task: TaskRun) -> int:
        await trio.sleep(stop_s)
        service.up = False
        return 0

    return {"start": standin.add_template(project, "start", service.playbook(seconds=start_s),
                                          environment={}),
            "stop": standin.add_template(project, "stop", stop, environment={})}


LAUNCHER = {"start_template": "start", "stop_template": "stop"}


async def run_until_killed(hestia: Hestia, nursery: trio.Nursery, at: float, *,
                           stop_at: float | None = None) -> None:
    """Run `hestia` in `nursery`, start its backend at once (and stop it at `stop_at`), kill it
    at `at`. Its cancellation is not waited for: whatever it still tries reaches nothing."""
    scope = trio.CancelScope()

    async def lifetime(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await hestia.sup.run(task_status=task_status)

    await nursery.start(lifetime)
    assert hestia.sup.request_start()
    if stop_at is not None:
        await trio.sleep_until(stop_at)
        assert hestia.sup.request_stop()
    await trio.sleep_until(at)
    hestia.kill()
    scope.cancel()


def stages(hestia: Hestia) -> list[tuple[str, int | None, str | None]]:
    return [(r.stage, r.task_id, r.task_status) for r in hestia.journal.rows()]


# --- the journal -------------------------------------------------------------------------------


async def test_the_journal_records_each_stage_of_a_start_and_a_stop_as_it_happens(
        standin, store, tmp_path, nursery, autojump_clock):
    service = Service()
    templates = scene(standin, service)
    hestia = Hestia(standin, store, tmp_path, service, 1, launcher=LAUNCHER)
    await nursery.start(hestia.sup.run)
    assert hestia.sup.request_start()
    await trio.sleep(0.5)
    assert stages(hestia) == [("starting", 1, "waiting")]  # created at 0
    (row,) = hestia.journal.rows()
    assert (row.service, row.machine, row.upstream, row.port, row.project) == (
        "ollama", "gpu", "http://gpu:11434", 11434, 1)
    assert (row.stop_template, row.task_action, row.task_template_id) == (
        "stop", "start", templates["start"])
    await trio.sleep_until(6.5)
    assert stages(hestia) == [("starting", 1, "running")]  # dequeued at 5, seen at 6
    await hestia.sup.wait_until(State.READY)
    assert trio.current_time() == 9.0
    assert stages(hestia) == [("ready", 1, "success")]
    await trio.sleep_until(10)
    assert hestia.sup.request_stop()
    await trio.sleep(0.5)
    assert stages(hestia) == [("stopping", 2, "waiting")]
    await hestia.sup.wait_until(State.COLD)
    assert trio.current_time() == 18.0  # dequeued at 15, done at 17.5, seen at 18
    assert stages(hestia) == []


async def test_a_failed_stop_stays_in_the_journal_as_stop_failed(standin, store, tmp_path,
                                                                 nursery, autojump_clock):
    service = Service()
    project = standin.add_project("infra")
    standin.add_template(project, "start", service.playbook(), environment={})

    async def broken(task: TaskRun) -> int:
        return 2

    standin.add_template(project, "stop", broken, environment={})
    hestia = Hestia(standin, store, tmp_path, service, 1, launcher=LAUNCHER)
    await nursery.start(hestia.sup.run)
    async with hestia.sup.lease():
        pass
    assert hestia.sup.request_stop()
    await hestia.sup.wait_until(State.COLD)
    assert stages(hestia) == [("stop_failed", 2, "error")]


# --- what the next Hestia does -------------------------------------------------------------------


async def test_killed_while_the_start_task_runs_the_next_waits_for_it_and_adopts_it(
        standin, store, tmp_path, nursery, autojump_clock):
    service = Service()
    scene(standin, service)
    first = Hestia(standin, store, tmp_path, service, 1, launcher=LAUNCHER,
                   on_restart="adopt")
    await run_until_killed(first, nursery, at=6.25)  # the start task runs since 5, seen at 6
    assert stages(first) == []  # killed: it no longer reads or writes
    second = Hestia(standin, store, tmp_path, service, 2, launcher=LAUNCHER,
                    on_restart="adopt")
    assert stages(second) == [("starting", 1, "running")]
    with capture_logs() as logs:
        assert second.recover() == []
        assert second.sup.state is State.STARTING
        await nursery.start(second.sup.run)
        assert not second.sup.request_start()  # no second copy while it is decided
        async with second.sup.lease():
            # Polled at 7.25, 8.25 and 9.25; the task succeeded at 8.5; the service answers.
            assert trio.current_time() == 9.25
            assert second.sup.state is State.READY
    assert len(standin.tasks) == 1
    assert stages(second) == [("ready", 1, "success")]
    assert second.sup.starts == 0
    events = [e for e in logs if e["event"].startswith("remote_backend")]
    assert [(e["event"], e["reason"] if "reason" in e else None) for e in events] == [
        ("remote_backend_adopted_after_restart", None)]


@pytest.mark.parametrize("sent", ["all", "none"])  # found by its variables, or its message
async def test_killed_before_it_journaled_its_start_task_the_next_finds_and_follows_it(
        standin, store, tmp_path, nursery, autojump_clock, sent):
    service = Service()
    scene(standin, service)
    launcher = {**LAUNCHER, "send_variables": sent}
    first = Hestia(standin, store, tmp_path, service, 1, launcher=launcher,
                   on_restart="adopt")
    # Semaphore created the task; the answer never reached the journal.
    first.transport.kill_after = lambda request: (request.method == "POST"
                                                  and request.url.path.endswith("/tasks"))
    await run_until_killed(first, nursery, at=1.0)
    second = Hestia(standin, store, tmp_path, service, 2, launcher=launcher,
                    on_restart="adopt")
    assert stages(second) == [("starting", None, None)]
    with capture_logs() as logs:
        second.recover()
        await nursery.start(second.sup.run)
        await second.sup.wait_until(State.READY)
    # Found at 1 and polled from then on: dequeued at 5, up at 8.5, seen at 9.
    assert trio.current_time() == 9.0
    assert len(standin.tasks) == 1
    assert [(e["event"], e.get("task_id")) for e in logs if e["event"] in (
        "remote_task_found", "remote_backend_adopted_after_restart")] == [
        ("remote_task_found", 1), ("remote_backend_adopted_after_restart", 1)]


async def test_killed_after_ready_the_next_adopts_it_with_a_fresh_idle_timer(
        standin, store, tmp_path, nursery, autojump_clock):
    service = Service()
    scene(standin, service)
    first = Hestia(standin, store, tmp_path, service, 1, launcher=LAUNCHER,
                   on_restart="adopt", idle_timeout="60s")
    await run_until_killed(first, nursery, at=31.0)
    second = Hestia(standin, store, tmp_path, service, 2, launcher=LAUNCHER,
                    on_restart="adopt", idle_timeout="60s")
    second.recover()
    await nursery.start(second.sup.run)
    await second.sup.wait_until(State.READY)
    assert trio.current_time() == 31.0  # answered the first probe
    await second.sup.wait_until(State.STOPPING)
    assert trio.current_time() == 91.0  # idle for 60 s from the adoption
    await second.sup.wait_until(State.COLD)
    assert [t["status"] for t in standin.tasks.values()] == ["success", "success"]
    assert stages(second) == []


async def test_killed_after_ready_with_on_restart_stop_the_next_runs_the_stop_template(
        standin, store, tmp_path, nursery, autojump_clock):
    service = Service()
    templates = scene(standin, service)
    first = Hestia(standin, store, tmp_path, service, 1, launcher=LAUNCHER)
    await run_until_killed(first, nursery, at=21.0)
    assert service.up
    second = Hestia(standin, store, tmp_path, service, 2, launcher=LAUNCHER)
    with capture_logs() as logs:
        second.recover()
        await nursery.start(second.sup.run)
        await second.sup.wait_until(State.STOPPING)
        assert trio.current_time() == 21.0
        await second.sup.wait_until(State.COLD)
    # Created at 21, dequeued at 25, done at 27.5, seen at 28.
    assert trio.current_time() == 28.0
    assert not service.up
    assert standin.tasks[2]["template_id"] == templates["stop"]
    assert stages(second) == []
    event = the_decision(logs)
    assert (event["event"], event["reason"]) == ("remote_backend_stopped_after_restart",
                                                 "on_restart_stop")


async def test_an_adoptable_backend_that_no_longer_answers_is_stopped_after_the_window(
        standin, store, tmp_path, nursery, autojump_clock):
    service = Service()
    scene(standin, service)
    first = Hestia(standin, store, tmp_path, service, 1, launcher=LAUNCHER,
                   on_restart="adopt")
    await run_until_killed(first, nursery, at=21.0)
    service.up = False  # the remote service died meanwhile
    second = Hestia(standin, store, tmp_path, service, 2, launcher=LAUNCHER,
                    on_restart="adopt")
    with capture_logs() as logs:
        second.recover()
        await nursery.start(second.sup.run)
        await second.sup.wait_until(State.STOPPING)
        assert trio.current_time() == 26.0  # ADOPT_PROBE_WINDOW after the restart
        await second.sup.wait_until(State.COLD)
    assert trio.current_time() == 33.0  # dequeued at 30, done at 32.5, seen at 33
    assert [(e["event"], e.get("reason")) for e in logs if "reason" in e and e["event"] in (
        "recovery_not_adopted", "remote_backend_stopped_after_restart")] == [
        ("recovery_not_adopted", "not_ready"),
        ("remote_backend_stopped_after_restart", "not_ready")]


async def test_killed_during_the_stop_task_the_next_waits_for_it_then_starts_afresh(
        standin, store, tmp_path, nursery, autojump_clock):
    service = Service()
    scene(standin, service)
    first = Hestia(standin, store, tmp_path, service, 1, launcher=LAUNCHER,
                   on_restart="adopt")
    await run_until_killed(first, nursery, at=16.25, stop_at=10.0)  # stop task: created 10, runs 15
    second = Hestia(standin, store, tmp_path, service, 2, launcher=LAUNCHER,
                    on_restart="adopt")
    assert stages(second) == [("stopping", 2, "running")]
    with capture_logs() as logs:
        second.recover()
        assert second.sup.state is State.STOPPING
        await nursery.start(second.sup.run)
        async with second.sup.lease():
            # The stop ended at 17.5, seen at 18.25: COLD, and the waiting request starts it
            # again (task 3: created at 18.25, dequeued at 20, up at 23.5, seen at 24.25).
            assert trio.current_time() == 24.25
    assert [t["status"] for t in standin.tasks.values()] == ["success"] * 3
    event = the_decision(logs)
    assert (event["event"], event["stopped"]) == ("remote_backend_stop_awaited_after_restart",
                                                  True)


async def test_a_changed_configuration_is_stopped_with_the_templates_it_was_started_by(
        standin, store, tmp_path, nursery, autojump_clock):
    service = Service()
    templates = scene(standin, service)
    newer = standin.add_template(1, "stop v2", environment={})
    first = Hestia(standin, store, tmp_path, service, 1, launcher=LAUNCHER,
                   on_restart="adopt")
    await run_until_killed(first, nursery, at=21.0)
    second = Hestia(standin, store, tmp_path, service, 2, on_restart="adopt",
                    launcher={"start_template": "start", "stop_template": "stop v2"})
    with capture_logs() as logs:
        second.recover()
        await nursery.start(second.sup.run)
        await second.sup.wait_until(State.COLD)
    assert standin.tasks[2]["template_id"] == templates["stop"] != newer
    assert not service.up
    event = the_decision(logs)
    assert event["reason"] == "configuration_changed"


async def test_a_backend_of_another_project_is_stopped_in_the_project_it_runs_in(
        standin, store, tmp_path, nursery, autojump_clock):
    # `semaphore.project` changed while Hestia was down; the launcher's settings did not.
    service = Service()
    templates = scene(standin, service)
    other = standin.add_project("other")
    standin.add_template(other, "start", environment={})
    standin.add_template(other, "stop", environment={})
    first = Hestia(standin, store, tmp_path, service, 1, launcher=LAUNCHER,
                   on_restart="adopt")
    await run_until_killed(first, nursery, at=21.0)
    second = Hestia(standin, store, tmp_path, service, 2, launcher=LAUNCHER,
                    on_restart="adopt", project=other)
    with capture_logs() as logs:
        second.recover()
        await nursery.start(second.sup.run)
        await second.sup.wait_until(State.COLD)
    assert (standin.tasks[2]["project_id"], standin.tasks[2]["template_id"]) == (
        1, templates["stop"])
    assert not service.up
    event = the_decision(logs)
    assert event["reason"] == "configuration_changed"


async def test_a_backend_started_through_another_semaphore_is_left_and_said(
        standin, store, tmp_path, nursery, autojump_clock):
    service = Service()
    scene(standin, service)
    first = Hestia(standin, store, tmp_path, service, 1, launcher=LAUNCHER,
                   on_restart="adopt")
    await run_until_killed(first, nursery, at=21.0)
    second = Hestia(standin, store, tmp_path, service, 2, launcher=LAUNCHER,
                    on_restart="adopt", url="http://other-semaphore:3000")
    with capture_logs() as logs:
        assert second.recover() == []
    assert len(standin.tasks) == 1  # nothing asked of the other Semaphore
    assert second.sup.state is State.COLD
    assert stages(second) == [("ready", 1, "success")]  # kept for that Semaphore
    event = the_decision(logs)
    assert (event["event"], event["reason"]) == ("remote_backend_left_running",
                                                 "semaphore_changed")


async def test_a_backend_no_longer_configured_is_stopped_in_the_background(
        standin, store, tmp_path, nursery, autojump_clock):
    service = Service()
    scene(standin, service)
    first = Hestia(standin, store, tmp_path, service, 1, launcher=LAUNCHER)
    await run_until_killed(first, nursery, at=21.0)
    second = Hestia(standin, store, tmp_path, service, 2, launcher=LAUNCHER,
                    configured=False)
    with capture_logs() as logs:
        (settle,) = second.recover()
        await settle()
    assert trio.current_time() == 28.0
    assert not service.up
    assert stages(second) == []
    event = the_decision(logs)
    assert (event["event"], event["reason"]) == ("remote_backend_stopped_after_restart",
                                                 "not_configured")


async def test_a_stop_asked_for_while_a_start_task_is_followed_stops_the_task_and_cleans_up(
        standin, store, tmp_path, nursery, autojump_clock):
    service = Service()
    scene(standin, service, start_s=600)
    first = Hestia(standin, store, tmp_path, service, 1, launcher=LAUNCHER,
                   on_restart="adopt")
    await run_until_killed(first, nursery, at=6.25)
    second = Hestia(standin, store, tmp_path, service, 2, launcher=LAUNCHER,
                    on_restart="adopt")
    second.recover()
    await nursery.start(second.sup.run)
    await trio.sleep_until(30)
    assert second.sup.request_stop()
    await second.sup.wait_until(State.COLD)
    assert standin.stop_requests() == [(1, {"force": False})]
    assert standin.tasks[2]["status"] == "success"  # the stop template ran
    assert stages(second) == []


async def test_a_followed_start_task_is_given_what_is_left_of_task_timeout_since_its_creation(
        standin, store, tmp_path, nursery, monkeypatch, autojump_clock):
    # The wall clock follows the virtual one: 1e9 is virtual time 0.
    monkeypatch.setattr(semaphore_launcher, "time", SimpleNamespace(
        time=lambda: 1e9 + trio.current_time(), strftime=time.strftime))
    service = Service()
    scene(standin, service, start_s=600)
    launcher = {**LAUNCHER, "task_timeout": "60s"}
    first = Hestia(standin, store, tmp_path, service, 1, launcher=launcher,
                   on_restart="adopt")
    await run_until_killed(first, nursery, at=6.25)
    # Created at virtual time 0 (as the killed Hestia's wall clock said).
    store.db.execute("UPDATE remote_backends SET task_created_at = ?", [1e9])
    second = Hestia(standin, store, tmp_path, service, 2, launcher=launcher,
                    on_restart="adopt")
    second.recover()
    await nursery.start(second.sup.run)
    await second.sup.wait_until(State.STOPPING)
    assert trio.current_time() == 60.0
    assert standin.stop_requests() == [(1, {"force": False})]
    await second.sup.wait_until(State.COLD)
    assert standin.tasks[2]["template_id"] == 2  # then the stop template ran
    assert stages(second) == []


async def test_a_row_whose_hestia_still_runs_is_left_alone(standin, store, tmp_path, nursery,
                                                           autojump_clock):
    service = Service()
    scene(standin, service)
    first = Hestia(standin, store, tmp_path, service, 1, launcher=LAUNCHER)
    stat = proc_stat(os.getpid())
    assert stat is not None
    first.journal.attach(store, (os.getpid(), stat.start_time, boot_id()))  # alive: this test
    await nursery.start(first.sup.run)
    async with first.sup.lease():
        pass
    second = Hestia(standin, store, tmp_path, service, 2, launcher=LAUNCHER)
    with capture_logs() as logs:
        assert second.recover() == []
    assert second.sup.state is State.COLD
    assert [e["event"] for e in logs] == ["remote_backend_in_use"]
    assert stages(second) == [("ready", 1, "success")]


async def test_without_a_semaphore_section_rows_are_reported_and_kept(standin, store, tmp_path,
                                                                      nursery, autojump_clock):
    service = Service()
    scene(standin, service)
    first = Hestia(standin, store, tmp_path, service, 1, launcher=LAUNCHER)
    await run_until_killed(first, nursery, at=21.0)
    second = Hestia(standin, store, tmp_path, service, 2, launcher=LAUNCHER)
    with capture_logs() as logs:
        assert resume_remote(second.config, {}, second.journal, None) == []
    assert [(e["event"], e["reason"]) for e in logs] == [
        ("remote_backend_left_running", "semaphore_not_configured")]
    assert stages(second) == [("ready", 1, "success")]


# --- the decisions -------------------------------------------------------------------------------


def row(stage: str, action: str | None = None, status: str | None = None) -> RemoteRow:
    return RemoteRow(
        service="ollama", machine="gpu", backend="default", upstream="http://gpu:11434",
        port=11434, config="{}", fingerprint="", project=1, semaphore_url="http://semaphore:3000",
        stop_template="stop",
        task_timeout=1800.0, stage=stage, task_id=None if action is None else 7,
        task_action=action, task_status=status, task_template_id=None, task_template=None,
        task_created_at=None, owner_pid=1, owner_start_time=None, owner_boot_id=None,
        updated_at=0.0)


@pytest.mark.parametrize(("recorded", "adoptable", "decision"), [
    (row("starting"), True, (None, "probe")),               # the task was never created
    (row("starting", "start", "running"), True, ("start", "probe")),
    (row("starting", "start", "waiting"), False, ("start", "stop")),
    (row("starting", "start", "error"), True, (None, "stop")),  # a failed start's clean-up
    (row("started", "start", "success"), True, (None, "probe")),
    (row("ready", "start", "success"), False, (None, "stop")),
    (row("stop_failed", "stop", "error"), True, (None, "probe")),
    (row("stopping", "stop", "running"), True, ("stop", "nothing")),
    (row("stopping", "stop", "success"), True, (None, "nothing")),
    (row("stopping", "start", "error"), True, (None, "stop")),  # its stop was never created
])
def test_each_recorded_stage_leads_to_one_decision(recorded, adoptable, decision):
    made = decide(recorded, adoptable)
    assert (made.follow, made.then) == decision
