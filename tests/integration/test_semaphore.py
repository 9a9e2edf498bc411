"""Semaphore end to end: the real gateway, the stand-in as a real HTTP server on 127.0.0.1, and
playbooks that start and stop a real upstream process (tests/upstream_app.py).

No real Semaphore can run here (CONTRACT.md §10): the stand-in follows the contract instead.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from functools import partial
from typing import Any

import pytest
import trio
import yaml

from hestia import Gateway, parse_config, run
from tests.integration.conftest import (
    UPSTREAM_APP,
    assert_error_body,
    client,
    free_port,
    wait_for_state,
)
from tests.semaphore_standin import SemaphoreStandin, TaskRun


class Machine:
    """Where the playbooks start the upstream: a real child process on `port`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: trio.Process | None = None
        self.starts = 0

    @property
    def upstream(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, task: TaskRun) -> int:
        self.starts += 1
        task.log(f"TASK [start upstream on port {task.environment['HESTIA_PORT']}]")
        self.process = await trio.lowlevel.open_process(
            [sys.executable, UPSTREAM_APP, "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        task.log("ok: [gpu01]")
        return 0

    async def stop(self, task: TaskRun) -> int:
        task.log("TASK [stop upstream]")
        if self.process is not None:
            self.process.terminate()
            await self.process.wait()
            self.process = None
        return 0

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()


@pytest.fixture
async def standin(nursery: trio.Nursery) -> Any:
    semaphore = SemaphoreStandin(tick=0.05)
    url = await nursery.start(semaphore.serve)
    semaphore.url = url
    return semaphore


@pytest.fixture
def machine() -> Any:
    m = Machine()
    yield m
    m.kill()


def semaphore_block(standin: SemaphoreStandin, **fields: Any) -> dict[str, Any]:
    return {"url": standin.url, "token": standin.create_token("admin"), "project": 1,
            "poll_interval": "50ms", **fields}


async def test_a_request_starts_the_service_through_semaphore_and_idle_stops_it(
        start_gateway, standin, machine):
    with trio.fail_after(30):
        project = standin.add_project("infra")
        start = standin.add_template(project, "start echo", machine.start, environment={})
        standin.add_template(project, "stop echo", machine.stop, environment={})
        gateway: Gateway = await start_gateway(
            semaphore=semaphore_block(standin),
            machines={"gpu": {"semaphore": {"start_template": "start echo",
                                            "stop_template": "stop echo"}}},
            services={"echo": {"upstream": machine.upstream, "machine": "gpu",
                               "readiness": {"http": "/health"}, "idle_timeout": "1s"}})
        async with client(gateway) as http:
            response = await http.get("/services/echo/echo?x=1")
            assert response.status_code == 200
            assert response.json()["path"] == "/echo?x=1"
            status = (await http.get("/v1/services/echo/status")).json()
            automation = status["automation"]
            assert automation["enabled"] is True
            assert automation["provider"] == "semaphore"
            assert automation["machine_id"] == "gpu"
            assert automation["current_task"] is None
            last = automation["last_task"]
            assert (last["action"], last["status"], last["template_id"]) == (
                "start", "success", start)
            assert last["duration_ms"] > 0 and last["completed_at"] is not None
            assert status["logTail"][-1] == "ok: [gpu01]"

            await wait_for_state(gateway, "echo", "COLD")
            assert machine.process is None  # the stop playbook ran
            view = (await http.get("/v1/semaphore/status",
                                   params={"serviceId": "echo"})).json()
            assert view["state"] == "COLD"
            assert view["automation"]["last_task"]["action"] == "stop"
            assert view["automation"]["last_task"]["status"] == "success"
            assert [t["action"] for t in view["automation"]["tasks"]] == ["stop", "start"]


async def test_a_failed_playbook_is_answered_503_naming_the_task_and_its_output(
        start_gateway, standin):
    with trio.fail_after(30):
        project = standin.add_project("infra")

        async def broken(task: TaskRun) -> int:
            task.log("TASK [pull model]")
            task.log("fatal: [gpu01]: FAILED! => no space left on device")
            return 2

        standin.add_template(project, "start", broken, environment={})
        gateway = await start_gateway(
            semaphore=semaphore_block(standin),
            services={"echo": {"upstream": f"http://127.0.0.1:{free_port()}",
                               "launcher": {"semaphore": {"start_template": "start"}}}})
        async with client(gateway) as http:
            response = await http.get("/services/echo/anything")
            body = assert_error_body(response, 503, "start_failed", "echo")
            assert body["reason"] == "task_error"
            assert "Semaphore start task 1 (start) ended error" in body["detail"]
            assert body["log_tail"][-1] == "fatal: [gpu01]: FAILED! => no space left on device"
            assert body["attempts"][0]["task_id"] == 1
            assert response.headers["retry-after"]


async def test_semaphore_down_is_answered_503_and_the_gateway_still_serves(start_gateway):
    with trio.fail_after(30):
        gateway = await start_gateway(
            semaphore={"url": f"http://127.0.0.1:{free_port()}", "token": "x" * 44,
                       "project": 1},
            services={"echo": {"upstream": f"http://127.0.0.1:{free_port()}",
                               "launcher": {"semaphore": {"start_template": "start"}}}})
        async with client(gateway) as http:
            response = await http.get("/services/echo/")
            body = assert_error_body(response, 503, "start_failed", "echo")
            assert body["reason"] == "semaphore_unreachable"
            assert "cannot reach Semaphore at http://127.0.0.1:" in body["detail"]
            assert "connection refused" in body["detail"]
            assert (await http.get("/__health")).status_code == 200


async def test_the_manual_api_starts_on_the_chosen_machine_and_stops(start_gateway, standin):
    with trio.fail_after(30):
        project = standin.add_project("infra")
        gpu, cloud = Machine(), Machine()
        try:
            for name, m in (("gpu", gpu), ("cloud", cloud)):
                standin.add_template(project, f"start on {name}", m.start, environment={})
                standin.add_template(project, f"stop on {name}", m.stop, environment={})
            gateway = await start_gateway(
                semaphore=semaphore_block(standin),
                machines={name: {"semaphore": {"start_template": f"start on {name}",
                                               "stop_template": f"stop on {name}"}}
                          for name in ("gpu", "cloud")},
                services={"echo": {"upstream": gpu.upstream, "machine": "gpu",
                                   "readiness": {"http": "/health"},
                                   "fallbacks": [{"machine": "cloud",
                                                  "upstream": cloud.upstream}]}})
            async with client(gateway) as http:
                response = await http.post("/v1/semaphore/start",
                                           json={"serviceId": "echo", "machineId": "cloud"})
                assert response.status_code == 202
                assert response.json()["machineId"] == "cloud"
                await wait_for_state(gateway, "echo", "READY")
                assert (gpu.starts, cloud.starts) == (0, 1)
                again = await http.post("/v1/semaphore/start", json={"serviceId": "echo"})
                assert again.status_code == 409
                assert (await http.get("/services/echo/health")).status_code == 200

                response = await http.post("/v1/semaphore/stop", json={"serviceId": "echo"})
                assert response.status_code == 202
                await wait_for_state(gateway, "echo", "COLD")
                assert cloud.process is None

                wrong = await http.post("/v1/semaphore/start",
                                        json={"serviceId": "echo", "machineId": "local"})
                assert wrong.status_code == 400
                assert "no semaphore placement on machine 'local'" in wrong.json()["detail"]
                bad = await http.post("/v1/semaphore/start", content=b"not json")
                assert bad.status_code == 400 and bad.json()["request_id"]
                unknown = await http.get("/v1/semaphore/status",
                                         params={"serviceId": "nope"})
                assert unknown.status_code == 404
        finally:
            gpu.kill()
            cloud.kill()


async def test_a_password_login_works_and_hestia_check_reports_unknown_templates(
        standin, tmp_path):
    with trio.fail_after(30):
        project = standin.add_project("infra")
        standin.add_template(project, "start ollama", environment={})
        config = {"semaphore": {"url": standin.url, "project": project},
                  "machines": {"gpu": {"semaphore": {"start_template": "start ollama",
                                                     "stop_template": "stop olama"}}},
                  "services": {"ollama": {"upstream": "http://127.0.0.1:9", "machine": "gpu"}}}
        path = tmp_path / "hestia.yml"
        path.write_text(yaml.safe_dump(config))
        env = {"PATH": "/usr/bin:/bin", "SEMAPHORE_USERNAME": "admin",
               "SEMAPHORE_PASSWORD": "changeme"}
        result = await trio.run_process(
            [sys.executable, "-m", "hestia", "check", "-c", str(path)], env=env,
            capture_stdout=True, capture_stderr=True, check=False)
        assert result.returncode == 1
        assert ("machines.gpu.semaphore.stop_template: no template named 'stop olama' in "
                "Semaphore project 1 (templates: 'start ollama')") in result.stderr.decode()
        assert [r.status for r in standin.requests if r.path == "/api/auth/login"] == [204]


async def test_the_gateway_refuses_to_start_with_an_ambiguous_template_name(
        standin, tmp_path):
    with trio.fail_after(30):
        project = standin.add_project("infra")
        standin.add_template(project, "start", environment={})
        standin.add_template(project, "start", environment={})
        port = free_port()
        config = {"listen": f"127.0.0.1:{port}", "data_dir": str(tmp_path / "data"),
                  "semaphore": {"url": standin.url, "project": project},
                  "services": {"x": {"upstream": "http://127.0.0.1:9",
                                     "launcher": {"semaphore": {"start_template": "start"}}}}}
        path = tmp_path / "hestia.yml"
        path.write_text(yaml.safe_dump(config))
        env = {"PATH": "/usr/bin:/bin", "SEMAPHORE_API_TOKEN": standin.create_token("admin")}
        result = await trio.run_process(
            [sys.executable, "-m", "hestia", "serve", "-c", str(path)], env=env,
            capture_stdout=True, capture_stderr=True, check=False)
        assert result.returncode == 1
        assert ("services.x.launcher.semaphore.start_template: template name 'start' is "
                "ambiguous in Semaphore project 1: templates [1, 2] have it; use the id"
                ) in result.stderr.decode()


async def test_failed_attempts_are_retried_then_a_second_machine_serves(start_gateway,
                                                                        standin):
    with trio.fail_after(30):
        project = standin.add_project("infra")
        cloud = Machine()
        try:
            async def unreachable_host(task: TaskRun) -> int:
                task.log("fatal: [gpu01]: UNREACHABLE! => ssh: connect to host gpu01: "
                         "no route to host")
                return 4

            standin.add_template(project, "start on gpu", unreachable_host, environment={})
            standin.add_template(project, "start on cloud", cloud.start, environment={})
            standin.add_template(project, "stop on cloud", cloud.stop, environment={})
            gateway = await start_gateway(
                semaphore=semaphore_block(standin),
                machines={"gpu": {"semaphore": {"start_template": "start on gpu"}},
                          "cloud": {"semaphore": {"start_template": "start on cloud",
                                                  "stop_template": "stop on cloud"}}},
                services={"echo": {"upstream": "http://127.0.0.1:9", "machine": "gpu",
                                   "readiness": {"http": "/health"},
                                   "startup": {"attempts": 2, "delay": "100ms"},
                                   "fallbacks": [{"machine": "cloud",
                                                  "upstream": cloud.upstream}]}})
            async with client(gateway) as http:
                response = await http.get("/services/echo/echo")
                assert response.status_code == 200
                status = (await http.get("/v1/services/echo/status")).json()
                assert status["machineId"] == "cloud"
                assert status["automation"]["machine_id"] == "cloud"
                tasks = [(t["machine_id"], t["action"], t["status"])
                         for t in reversed(status["automation"]["tasks"])]
                assert tasks == [("gpu", "start", "error"), ("gpu", "start", "error"),
                                 ("cloud", "start", "success")]
                machines = (await http.get("/v1/machines")).json()["machines"]
                gpu = next(m for m in machines if m["machineId"] == "gpu")
                assert gpu["failuresInARow"] == 2
        finally:
            cloud.kill()


@pytest.mark.parametrize("release", ["2.10", "2.16"])
async def test_a_limit_runs_where_the_release_honours_it_and_is_refused_where_it_would_drop(
        start_gateway, machine, nursery, tmp_path, release):
    with trio.fail_after(30):
        standin = SemaphoreStandin(tick=0.05, release=release)
        standin.url = await nursery.start(standin.serve)
        project = standin.add_project("infra")
        limits: list[str] = []

        async def start(task: TaskRun) -> int:
            limits.append(task.limit)
            return await machine.start(task)

        tid = standin.add_template(project, "start echo", start, environment={})
        config = {"semaphore": semaphore_block(standin),
                  "machines": {"gpu": {"semaphore": {"start_template": "start echo",
                                                     "limit": "gpu01"}}},
                  "services": {"echo": {"upstream": machine.upstream, "machine": "gpu",
                                        "readiness": {"http": "/health"}}}}
        path = tmp_path / "hestia.yml"
        path.write_text(yaml.safe_dump(config))
        check = await trio.run_process(
            [sys.executable, "-m", "hestia", "check", "-c", str(path)],
            env={"PATH": "/usr/bin:/bin"}, capture_stdout=True, capture_stderr=True,
            check=False)
        if release == "2.10":  # the limit is always applied
            assert check.returncode == 0, check.stderr.decode()
            gateway = await start_gateway(**config)
            async with client(gateway) as http:
                assert (await http.get("/services/echo/health")).status_code == 200
            assert limits == ["gpu01"]
            return
        assert check.returncode == 1
        assert ("machines.gpu.semaphore.limit: Semaphore template 'start echo' (id 1) would "
                "ignore the launcher's limit 'gpu01'") in check.stderr.decode()
        # Allowed when the gateway starts, turned off in Semaphore's UI afterwards: the
        # template is read again before the task, which is not sent.
        standin._templates[tid].allow_override_limit = True
        gateway = await start_gateway(**config)
        standin._templates[tid].allow_override_limit = False
        async with client(gateway) as http:
            response = await http.get("/services/echo/health")
            body = assert_error_body(response, 503, "start_failed", "echo")
            assert body["reason"] == "limit_ignored"
            assert 'Turn on "Allow override limit"' in body["detail"]
        assert limits == [] and standin.tasks == {}


async def test_the_seeds_environment_switches_start_a_service_through_semaphore(
        standin, machine, nursery, tmp_path):
    with trio.fail_after(30):
        project = standin.add_project("infra")
        standin.add_template(project, "start", machine.start, environment={})
        standin.add_template(project, "stop", machine.stop, environment={})
        raw = {"listen": "127.0.0.1:0", "data_dir": str(tmp_path / "data"),
               "semaphore": {"project": project, "poll_interval": "50ms"},
               "machines": {"aws-gpu-instance": {"semaphore": {"start_template": "start",
                                                               "stop_template": "stop"}}},
               "services": {"myservice": {"upstream": "http://127.0.0.1:9",
                                          "launcher": {"process": {"command": ["false"]}},
                                          "readiness": {"http": "/health"}}}}
        env = {"MYSERVICE_SEMAPHORE_ENABLED": "true",
               "MYSERVICE_SEMAPHORE_MACHINE_ID": "aws-gpu-instance",
               "MYSERVICE_UPSTREAM": machine.upstream,
               "SEMAPHORE_BASE_URL": standin.url,
               "SEMAPHORE_API_TOKEN": standin.create_token("admin")}
        gateway = await nursery.start(partial(run, parse_config(raw, env=env),
                                              handle_signals=False))
        async with client(gateway) as http:
            assert (await http.get("/services/myservice/health")).status_code == 200
            status = (await http.get("/v1/services/myservice/status")).json()
            assert status["machineId"] == "aws-gpu-instance"
            assert status["automation"]["last_task"]["action"] == "start"
        assert machine.starts == 1


async def test_a_reload_with_a_new_semaphore_token_restarts_the_backend_through_it(
        start_gateway, standin, machine):
    with trio.fail_after(30):
        project = standin.add_project("infra")
        standin.add_template(project, "start echo", machine.start, environment={})
        standin.add_template(project, "stop echo", machine.stop, environment={})
        old = semaphore_block(standin)
        gateway: Gateway = await start_gateway(
            semaphore=old,
            machines={"gpu": {"semaphore": {"start_template": "start echo",
                                            "stop_template": "stop echo"}}},
            services={"echo": {"upstream": machine.upstream, "machine": "gpu",
                               "readiness": {"http": "/health"}, "idle_timeout": "1h"}})
        path = gateway.config_file
        assert path is not None
        raw = yaml.safe_load(path.read_text())
        async with client(gateway) as http:
            assert (await http.get("/services/echo/echo")).status_code == 200

            raw["machines"]["gpu"]["semaphore"]["stop_template"] = "stop ech0"
            path.write_text(yaml.safe_dump(raw))
            refused = await http.post("/v1/reload")
            assert refused.status_code == 422
            assert [e["path"] for e in refused.json()["errors"]] == [
                "machines.gpu.semaphore.stop_template"]
            assert gateway.supervisors["echo"].state.name == "READY"

            new = semaphore_block(standin)
            raw["semaphore"] = new
            raw["machines"]["gpu"]["semaphore"]["stop_template"] = "stop echo"
            path.write_text(yaml.safe_dump(raw))
            changes = (await http.post("/v1/reload")).json()["changes"]
            assert (changes["topLevel"], changes["restarted"]) == (
                ["semaphore"], {"echo": ["semaphore"]})
            await wait_for_state(gateway, "echo", "COLD")
            assert machine.process is None  # stopped by its stop playbook, as it was started
            standin.requests.clear()
            assert (await http.get("/services/echo/echo")).status_code == 200
            assert machine.starts == 2
            tokens = {r.headers.get("authorization") for r in standin.requests}
            assert tokens == {f"Bearer {new['token']}"}
        # Started through the new connection, and journaled as before, for a crash to find.
        with contextlib.closing(sqlite3.connect(path.parent / "data" / "hestia.db")) as db:
            assert db.execute("SELECT service, machine, stage FROM remote_backends"
                              ).fetchall() == [("echo", "gpu", "ready")]
