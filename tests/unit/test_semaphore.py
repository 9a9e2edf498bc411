"""The Semaphore launcher against the stand-in (tests/semaphore_standin.py), in virtual time.

The stand-in runs in-process behind `httpx.ASGITransport`: no sockets, so `autojump_clock`
drives Semaphore's 5-second pool tick, the playbooks' durations and Hestia's polling alike, and
the times asserted below are exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from hestia.config import parse_config
from hestia.errors import StartFailed
from hestia.launchers.base import LaunchContext
from hestia.launchers.semaphore import SemaphoreLauncher
from hestia.lifecycle.placement import Machines, Placement
from hestia.lifecycle.supervisor import State, Supervisor
from hestia.semaphore.hub import SemaphoreHub
from hestia.semaphore.releases import HESTIA_NAMES
from tests.semaphore_standin import SemaphoreStandin, TaskRun

CONTEXT = LaunchContext("ollama", "default", "http://gpu:11434", 11434, "gpu")


class Service:
    """What the playbooks start and stop: a flag the readiness probe reads."""

    def __init__(self) -> None:
        self.up = False
        self.environments: list[dict[str, Any]] = []

    def playbook(self, *, seconds: float = 3.5, exit_code: int = 0, up: bool = True,
                 lines: tuple[str, ...] = ("TASK [ollama : start] ok",)) -> Any:
        async def run(task: TaskRun) -> int:
            self.environments.append(dict(task.environment))
            await trio.sleep(seconds)
            for line in lines:
                task.log(line)
            if exit_code == 0:
                self.up = up
            return exit_code
        return run


class FlagProbe:
    """Ready when the service's flag is up (checked every 0.5 s of virtual time)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.last_result: str | None = None

    def describe(self) -> str:
        return "flag"

    async def check(self) -> bool:
        self.last_result = "ok" if self.service.up else "down"
        return self.service.up

    async def wait_ready(self) -> None:
        while not await self.check():
            await trio.sleep(0.5)


@pytest.fixture
async def standin(nursery: trio.Nursery) -> SemaphoreStandin:
    semaphore = SemaphoreStandin(tick=5.0)
    await nursery.start(semaphore.run)
    return semaphore


def hub(standin: SemaphoreStandin, launchers: dict[str, dict[str, Any]], *,
        auth: dict[str, Any] | None = None, project: int = 1, services: dict | None = None,
        transport: httpx.AsyncBaseTransport | None = None, **settings: Any) -> SemaphoreHub:
    """A hub for machines named after `launchers` (each a `semaphore` launcher config)."""
    if auth is None:
        auth = {"token": standin.create_token("admin")}
    raw = {"semaphore": {"url": "http://semaphore:3000", "project": project,
                         "poll_interval": "1s", **auth, **settings},
           "machines": {mid: {"semaphore": launcher} for mid, launcher in launchers.items()},
           "services": services or {}}
    config = parse_config(raw, env={})
    return SemaphoreHub(config, transport=transport or httpx.ASGITransport(app=standin.app))


def launcher(hub_: SemaphoreHub, machine: str, tmp_path: Path,
             service: str = "ollama") -> SemaphoreLauncher:
    config = hub_.config.machines[machine].semaphore
    assert config is not None
    return SemaphoreLauncher.from_hub(hub_, service, config, tmp_path / f"{service}.log")


async def test_a_start_by_template_name_polls_until_the_task_succeeds(standin, tmp_path,
                                                                       autojump_clock):
    project = standin.add_project("infra")
    service = Service()
    standin.add_template(project, "stop ollama")
    tid = standin.add_template(project, "start ollama", service.playbook(), environment={})
    h = hub(standin, {"gpu": {"start_template": "start ollama", "stop_template": "stop ollama",
                              "environment": {"MODEL": "llama3"}, "limit": "gpu01"}})
    running = await launcher(h, "gpu", tmp_path).start(CONTEXT)
    # Created at 0, dequeued at the pool's first tick (5), done 3.5 s later, seen at the next poll.
    assert trio.current_time() == 9.0
    assert service.up
    (task,) = standin.tasks.values()
    assert task["template_id"] == tid and task["limit"] == "gpu01"
    assert task["message"] == "hestia: start ollama on gpu"
    assert json.loads(task["environment"]) == {
        "MODEL": "llama3", "HESTIA_SERVICE": "ollama", "HESTIA_BACKEND": "default",
        "HESTIA_MACHINE": "gpu", "HESTIA_UPSTREAM": "http://gpu:11434", "HESTIA_PORT": "11434",
        "HESTIA_ACTION": "start", "HESTIA_LIMIT": "gpu01"}
    assert service.environments[0]["HESTIA_ACTION"] == "start"
    assert standin.task_statuses(task["id"]) == ["waiting", "starting", "running", "success"]
    assert running.log_tail()[-1] == "TASK [ollama : start] ok"
    status = h.automations["ollama"].status("gpu")
    assert status["current_task"] is None
    assert status["last_task"]["task_id"] == task["id"]
    assert status["last_task"]["status"] == "success"
    assert status["last_task"]["template"] == "start ollama"
    assert status["last_task"]["template_id"] == tid


async def test_a_template_given_by_id_is_used_without_listing(standin, tmp_path,
                                                              autojump_clock):
    project = standin.add_project("infra")
    tid = standin.add_template(project, "start", Service().playbook(), environment={})
    h = hub(standin, {"gpu": {"start_template": tid}})
    await launcher(h, "gpu", tmp_path).start(CONTEXT)
    assert not any(r.path.endswith("/templates") for r in standin.requests)
    assert standin.tasks[1]["template_id"] == tid


async def test_a_password_login_is_renewed_when_the_session_expires(standin, tmp_path,
                                                                    autojump_clock):
    project = standin.add_project("infra")
    standin.add_template(project, "start", Service().playbook(seconds=30), environment={})
    h = hub(standin, {"gpu": {"start_template": "start"}},
            auth={"username": "admin", "password": "changeme"})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(launcher(h, "gpu", tmp_path).start, CONTEXT)
        await trio.sleep(10)
        standin.expire_sessions()
    logins = [r for r in standin.requests if r.path == "/api/auth/login"]
    assert [r.status for r in logins] == [204, 204]
    assert not any("authorization" in r.headers for r in standin.requests)
    # The one refused poll is followed by a login and the same poll again.
    statuses = [r.status for r in standin.requests]
    assert statuses.count(401) == 1
    refused = statuses.index(401)
    after = standin.requests[refused + 1:refused + 3]
    assert [r.path for r in after] == ["/api/auth/login", standin.requests[refused].path]
    assert standin.tasks[1]["status"] == "success"


async def test_a_wrong_password_fails_the_start_saying_so(standin, tmp_path, autojump_clock):
    project = standin.add_project("infra")
    standin.add_template(project, "start", environment={})
    h = hub(standin, {"gpu": {"start_template": "start"}},
            auth={"username": "admin", "password": "wrong"})
    with pytest.raises(StartFailed) as caught:
        await launcher(h, "gpu", tmp_path).start(CONTEXT)
    assert caught.value.extra["reason"] == "semaphore_http_401"
    assert "refused the login of user 'admin'" in caught.value.detail


async def test_a_failed_task_fails_the_attempt_with_its_output_then_runs_the_stop_template(
        standin, tmp_path, autojump_clock):
    project = standin.add_project("infra")
    service = Service()
    stop_tid = standin.add_template(project, "stop", environment={})
    standin.add_template(project, "start", service.playbook(
        exit_code=2, lines=("TASK [pull model]", "fatal: [gpu01]: no space left on device")),
        environment={})
    h = hub(standin, {"gpu": {"start_template": "start", "stop_template": "stop"}})
    with pytest.raises(StartFailed) as caught:
        await launcher(h, "gpu", tmp_path).start(CONTEXT)
    error = caught.value
    assert error.extra["reason"] == "task_error"
    assert error.extra["task_id"] == 1
    assert error.extra["log_tail"][-1] == "fatal: [gpu01]: no space left on device"
    assert error.detail == ("Semaphore start task 1 (start) ended error: "
                            "fatal: [gpu01]: no space left on device")
    # The clean-up: a stop task, run to its end.
    assert standin.tasks[2]["template_id"] == stop_tid
    assert standin.tasks[2]["status"] == "success"
    assert json.loads(standin.tasks[2]["environment"])["HESTIA_ACTION"] == "stop"
    history = h.automations["ollama"].status("gpu")["tasks"]
    assert [(t["action"], t["status"]) for t in history] == [("stop", "success"),
                                                            ("start", "error")]


async def test_a_task_stuck_running_is_stopped_at_the_task_timeout(standin, tmp_path,
                                                                   autojump_clock):
    project = standin.add_project("infra")
    standin.add_template(project, "start", Service().playbook(seconds=3600), environment={})
    h = hub(standin, {"gpu": {"start_template": "start", "task_timeout": "60s"}})
    with pytest.raises(StartFailed) as caught:
        await launcher(h, "gpu", tmp_path).start(CONTEXT)
    assert trio.current_time() == 60.0
    assert caught.value.extra["reason"] == "task_timeout"
    assert "did not finish within 60s (status running)" in caught.value.detail
    assert standin.stop_requests() == [(1, {"force": False})]


async def test_a_task_orphaned_by_a_semaphore_restart_times_out_and_is_stopped(
        standin, tmp_path, autojump_clock):
    project = standin.add_project("infra")
    standin.add_template(project, "start", Service().playbook(seconds=3600), environment={})
    h = hub(standin, {"gpu": {"start_template": "start", "task_timeout": "2m"}})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_expect_failure, launcher(h, "gpu", tmp_path))
        await trio.sleep(20)
        standin.restart()  # the task stays `running` forever, nothing runs it
    assert trio.current_time() == 120.0
    assert standin.tasks[1]["status"] == "stopped"
    assert standin.stop_requests() == [(1, {"force": False})]


async def _expect_failure(launcher_: SemaphoreLauncher) -> None:
    with pytest.raises(StartFailed):
        await launcher_.start(CONTEXT)


async def on_release(nursery: trio.Nursery, release: str) -> SemaphoreStandin:
    semaphore = SemaphoreStandin(tick=5.0, release=release)
    await nursery.start(semaphore.run)
    return semaphore


@pytest.mark.parametrize(("release", "how", "stops", "final"), [
    ("2.10", "stopped", [(1, {"force": True})], "stopped"),  # a plain stop would stick (§8)
    ("2.13", "rejected", [], "rejected")])
async def test_a_task_waiting_for_confirmation_fails_unless_confirm_is_set(
        nursery, tmp_path, autojump_clock, release, how, stops, final):
    standin = await on_release(nursery, release)
    project = standin.add_project("infra")
    service = Service()

    async def plan_then_apply(task: TaskRun) -> int:
        await task.wait_confirmation()
        service.up = True
        return 0

    standin.add_template(project, "apply", plan_then_apply, environment={}, app="terraform",
                         module_vars=HESTIA_NAMES)
    h = hub(standin, {"gpu": {"start_template": "apply"}, "box": {"start_template": "apply",
                                                                    "confirm": True}})
    with pytest.raises(StartFailed) as caught:
        await launcher(h, "gpu", tmp_path).start(CONTEXT)
    assert caught.value.extra["reason"] == "task_waiting_confirmation"
    assert f"waits for a confirmation (a Terraform plan?); Hestia {how} it. Set `confirm: " \
        "true`" in caught.value.detail
    assert standin.stop_requests() == stops
    assert standin.tasks[1]["status"] == final
    assert not service.up

    # The template is free again: the next task is dequeued at the next tick.
    created = trio.current_time()
    await launcher(h, "box", tmp_path).start(CONTEXT)
    assert standin.task_statuses(2)[:2] == ["waiting", "starting"]
    assert trio.current_time() == created + 6.0  # tick 5 s later, seen by the poll after it
    assert service.up
    assert "confirmed" in standin.task_statuses(2)
    assert standin.tasks[2]["status"] == "success"


async def test_unknown_and_ambiguous_template_names_are_configuration_errors(
        standin, autojump_clock):
    project = standin.add_project("infra")
    standin.add_template(project, "start")
    standin.add_template(project, "twin")
    standin.add_template(project, "twin")
    h = hub(standin, {"gpu": {"start_template": "strat", "stop_template": "twin"},
                      "box": {"start_template": "start"}})
    errors, unreachable = await h.check()
    assert unreachable is None
    assert errors == [
        ("machines.gpu.semaphore.start_template",
         "no template named 'strat' in Semaphore project 1 (templates: 'start', 'twin')"),
        ("machines.gpu.semaphore.stop_template",
         "template name 'twin' is ambiguous in Semaphore project 1: templates [2, 3] have it; "
         "use the id")]


async def test_semaphore_down_fails_the_start_and_leaves_names_unchecked(tmp_path,
                                                                         autojump_clock):
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    standin = SemaphoreStandin()
    h = hub(standin, {"gpu": {"start_template": "start"}}, auth={"token": "t" * 44},
            transport=httpx.MockTransport(refuse))
    errors, unreachable = await h.check()
    assert errors == []
    assert unreachable is not None and "cannot reach Semaphore at http://semaphore:3000" \
        in unreachable
    with pytest.raises(StartFailed) as caught:
        await launcher(h, "gpu", tmp_path).start(CONTEXT)
    assert caught.value.extra["reason"] == "semaphore_unreachable"


# --- inside the supervisor: retries, fallbacks, idle stop, cancellation ----------------------


def supervisor(h: SemaphoreHub, tmp_path: Path, service: Service,
               *machines: str) -> Supervisor:
    placements = [Placement(m, f"http://{m}:11434", m, 11434, b"", launcher(h, m, tmp_path),
                            FlagProbe(service), h.config.services["ollama"].readiness)
                  for m in machines]
    config = h.config.services["ollama"]
    sup = Supervisor("ollama", config, placements[0].launcher, placements[0].probe,
                     fallbacks=placements[1:], machines=Machines(h.config))
    return sup


def ollama(machine: str = "gpu", **fields: Any) -> dict[str, Any]:
    return {"ollama": {"upstream": f"http://{machine}:11434", "machine": machine,
                       "queue": {"timeout": "10m"}, **fields}}


async def test_startup_retries_a_failed_task_with_backoff_then_serves(standin, tmp_path,
                                                                      nursery, autojump_clock):
    project = standin.add_project("infra")
    service = Service()
    outcomes = iter([2, 0])

    async def flaky(task: TaskRun) -> int:
        await trio.sleep(1.25)
        code = next(outcomes)
        service.up = code == 0
        return code

    standin.add_template(project, "start", flaky, environment={})
    h = hub(standin, {"gpu": {"start_template": "start"}},
            services=ollama(startup={"attempts": 2, "delay": "3.5s"}))
    sup = supervisor(h, tmp_path, service, "gpu")
    await nursery.start(sup.run)
    async with sup.lease():
        # Task 1: dequeued at the tick of 5, fails at 6.25, seen by the poll at 7; after 3.5 s
        # of backoff task 2 is created at 10.5, dequeued at 15, succeeds at 16.25, is seen at
        # 16.5, and the probe finds the service up at once.
        assert trio.current_time() == 16.5
    assert [t["status"] for t in standin.tasks.values()] == ["error", "success"]


async def test_a_failing_machine_falls_back_to_the_next_placement(standin, tmp_path,
                                                                  nursery, autojump_clock):
    project = standin.add_project("infra")
    service = Service()
    standin.add_template(project, "start on gpu", service.playbook(exit_code=1),
                         environment={})
    standin.add_template(project, "start on cloud", service.playbook(), environment={})
    h = hub(standin, {"gpu": {"start_template": "start on gpu"},
                      "cloud": {"start_template": "start on cloud"}},
            services=ollama(fallbacks=[{"machine": "cloud",
                                        "upstream": "http://cloud:11434"}]))
    sup = supervisor(h, tmp_path, service, "gpu", "cloud")
    await nursery.start(sup.run)
    async with sup.lease():
        assert sup.placement.machine == "cloud"
    machines = [json.loads(t["environment"])["HESTIA_MACHINE"] for t in standin.tasks.values()]
    assert machines == ["gpu", "cloud"]
    assert h.automations["ollama"].last is not None
    assert h.automations["ollama"].last.machine_id == "cloud"


async def test_an_idle_backend_runs_the_stop_template(standin, tmp_path, nursery,
                                                      autojump_clock):
    project = standin.add_project("infra")
    service = Service()

    async def stop(task: TaskRun) -> int:
        await trio.sleep(2.5)
        service.up = False
        return 0

    standin.add_template(project, "start", service.playbook(), environment={})
    standin.add_template(project, "stop", stop, environment={})
    h = hub(standin, {"gpu": {"start_template": "start", "stop_template": "stop"}},
            services=ollama(idle_timeout="60s"))
    sup = supervisor(h, tmp_path, service, "gpu")
    await nursery.start(sup.run)
    async with sup.lease():
        assert trio.current_time() == 9.0
    await sup.wait_until(State.STOPPING)
    assert trio.current_time() == 69.0
    await trio.testing.wait_all_tasks_blocked()
    assert standin.tasks[2]["status"] == "waiting"
    await sup.wait_until(State.COLD)
    # Dequeued at the tick of 70, done at 72.5, seen by the poll at 73.
    assert trio.current_time() == 73.0
    assert not service.up
    assert json.loads(standin.tasks[2]["environment"])["HESTIA_ACTION"] == "stop"
    assert h.automations["ollama"].last is not None
    assert h.automations["ollama"].last.action == "stop"


async def test_a_stop_during_the_start_task_stops_it_and_cleans_up(standin, tmp_path,
                                                                   nursery, autojump_clock):
    project = standin.add_project("infra")
    service = Service()
    standin.add_template(project, "start", service.playbook(seconds=600), environment={})
    standin.add_template(project, "stop", environment={})
    h = hub(standin, {"gpu": {"start_template": "start", "stop_template": "stop"}},
            services=ollama())
    sup = supervisor(h, tmp_path, service, "gpu")
    await nursery.start(sup.run)
    assert sup.request_start()
    await trio.sleep(30)
    assert sup.request_stop()
    await sup.wait_until(State.COLD)
    assert standin.stop_requests() == [(1, {"force": False})]
    assert standin.tasks[1]["status"] == "error"  # Semaphore's own quirk for a non-forced stop
    assert standin.tasks[2]["status"] == "success"
    assert json.loads(standin.tasks[2]["environment"])["HESTIA_ACTION"] == "stop"


UNKNOWN_7 = ("no such template (or project): Semaphore project 1 has no template with id 7, or "
             "the project does not exist or the user is not a member of it (404)")


@pytest.mark.parametrize("release", ["2.10", "2.16"])
async def test_an_unknown_template_id_is_no_such_template_at_start_and_in_the_check(
        nursery, tmp_path, autojump_clock, release):
    standin = await on_release(nursery, release)
    project = standin.add_project("infra")
    standin.add_template(project, "start", environment={})
    h = hub(standin, {"gpu": {"start_template": 7}})
    errors, _ = await h.check()
    assert errors == [("machines.gpu.semaphore.start_template", UNKNOWN_7)]
    with pytest.raises(StartFailed) as caught:
        await launcher(h, "gpu", tmp_path).start(CONTEXT)
    assert caught.value.extra["reason"] == "unknown_template"
    assert caught.value.detail == UNKNOWN_7
    assert standin.tasks == {}


@pytest.mark.parametrize(("release", "status", "explained"), [
    ("2.10", 500, "when creating a task on Semaphore 2.10: no such template"),
    ("2.16", 404, "no such template (or project)")])
async def test_a_template_deleted_after_it_was_read_is_explained_by_release(
        nursery, tmp_path, autojump_clock, release, status, explained):
    standin = await on_release(nursery, release)
    project = standin.add_project("infra")
    tid = standin.add_template(project, "start", environment={})

    async def deleting(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/tasks"):
            standin._templates.pop(tid)  # deleted in Semaphore's UI at that moment
        return await httpx.ASGITransport(app=standin.app).handle_async_request(request)

    h = hub(standin, {"gpu": {"start_template": tid}}, transport=Handler(deleting))
    with pytest.raises(StartFailed) as caught:
        await launcher(h, "gpu", tmp_path).start(CONTEXT)
    assert caught.value.extra["reason"] == f"semaphore_http_{status}"
    assert explained in caught.value.detail


class Handler(httpx.AsyncBaseTransport):
    """A transport that is a function (httpx's MockTransport, but one that may await)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.handle(request)


async def test_a_user_who_may_not_run_tasks_gets_a_start_failure_naming_the_role(
        standin, tmp_path, autojump_clock):
    standin.add_user("viewer", "secret", admin=False)
    project = standin.add_project("infra", members={"viewer": "guest"})
    standin.add_template(project, "start", environment={})
    h = hub(standin, {"gpu": {"start_template": "start"}},
            auth={"token": standin.create_token("viewer")})
    with pytest.raises(StartFailed) as caught:
        await launcher(h, "gpu", tmp_path).start(CONTEXT)
    assert caught.value.extra["reason"] == "semaphore_http_403"
    assert "needs the task_runner role" in caught.value.detail
    assert standin.tasks == {}


async def test_refused_credentials_are_a_configuration_error_not_a_warning(standin,
                                                                           autojump_clock):
    project = standin.add_project("infra")
    standin.add_template(project, "start")
    h = hub(standin, {"gpu": {"start_template": "start"}}, auth={"token": "x" * 44})
    errors, unreachable = await h.check()
    assert unreachable is None
    assert errors == [("semaphore", "GET /project/1/templates: Semaphore refused the "
                                    "credentials (401)")]


async def test_a_template_made_again_under_its_name_is_found_by_its_new_id(standin):
    project = standin.add_project("infra")
    first = standin.add_template(project, "start", None, environment={})
    hub_ = hub(standin, {"gpu": {"start_template": "start"}})
    assert (await hub_.templates.get(project, "start"))["id"] == first
    del standin._templates[first]  # deleted in Semaphore's UI, and made again
    second = standin.add_template(project, "start", None, environment={})
    assert (await hub_.templates.get(project, "start"))["id"] == second != first
    await hub_.aclose()
