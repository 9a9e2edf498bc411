"""Remote backends across a kill -9, for real: `hestia serve` in a subprocess, started through the
Semaphore stand-in, killed with SIGKILL at each stage, and a new gateway on the same data_dir.

The stand-in serves on 127.0.0.1 from a thread of its own (its own trio loop): it must go on
answering while the test's loop waits on a gateway, and its "remote machine" (a real upstream
process its playbooks start and stop) outlives every gateway, as a remote service would. The
playbooks can be held at a gate, so that a gateway is killed while a task runs. Unit tests of
the same decisions, in virtual time: tests/unit/test_remote_recovery.py.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.integration.conftest import UPSTREAM_APP, Served, free_port, serve_file
from tests.semaphore_standin import SemaphoreStandin, TaskRun


class RemoteMachine:
    """What the playbooks start and stop: an upstream process on `port`. Each playbook waits at
    its gate (open by default) first."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.start_gate = threading.Event()
        self.stop_gate = threading.Event()
        self.start_gate.set()
        self.stop_gate.set()

    @property
    def upstream(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, task: TaskRun) -> int:
        while not self.start_gate.is_set():
            await trio.sleep(0.01)
        # A Popen (not trio's process): the test's thread kills it at the end.
        self.process = await trio.to_thread.run_sync(partial(
            subprocess.Popen, [sys.executable, UPSTREAM_APP, "--port", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True))
        task.log(f"started pid {self.process.pid}")
        return 0

    async def stop(self, task: TaskRun) -> int:
        while not self.stop_gate.is_set():
            await trio.sleep(0.01)
        if self.process is not None:
            self.process.terminate()
            while self.process.poll() is None:
                await trio.sleep(0.01)
            self.process = None
        return 0

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class StandinThread:
    """The stand-in serving from its own thread; `url` once started."""

    def __init__(self, standin: SemaphoreStandin) -> None:
        self.standin = standin
        self._started: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            self._started.put(await nursery.start(self.standin.serve))

    def __enter__(self) -> str:
        self._thread.start()
        return self._started.get(timeout=30)

    def __exit__(self, *exc: object) -> None:
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(timeout=30)


@pytest.fixture
def remote() -> Iterator[tuple[SemaphoreStandin, RemoteMachine, dict[str, Any]]]:
    """The stand-in with templates `start` and `stop` for a remote machine, serving; and the
    configuration (service `up` on machine `gpu`) apart from `on_restart`."""
    standin = SemaphoreStandin(tick=0.05)
    machine = RemoteMachine()
    project = standin.add_project("infra")
    standin.add_template(project, "start", machine.start, environment={})
    standin.add_template(project, "stop", machine.stop, environment={})
    try:
        with StandinThread(standin) as url:
            top = {"semaphore": {"url": url, "token": standin.create_token("admin"),
                                 "project": project, "poll_interval": "50ms"},
                   "machines": {"gpu": {"semaphore": {"start_template": "start",
                                                      "stop_template": "stop"}}}}
            yield standin, machine, top
    finally:
        machine.kill()


def service(machine: RemoteMachine, **fields: Any) -> dict[str, Any]:
    return {"upstream": machine.upstream, "machine": "gpu", "idle_timeout": "1h",
            "readiness": {"http": "/health", "timeout": "20s"}, **fields}


def actions(standin: SemaphoreStandin) -> list[tuple[str, str]]:
    """(template name, status) of every task, in order."""
    names = {1: "start", 2: "stop"}
    return [(names[t["template_id"]], t["status"]) for t in list(standin.tasks.values())]


def client() -> httpx.AsyncClient:
    """One per gateway, closed before it stops: a connection left open would make its graceful
    shutdown wait for the whole grace period."""
    return httpx.AsyncClient(timeout=30)


async def state_of(served: Served, http: httpx.AsyncClient) -> dict[str, Any]:
    return (await http.get(f"{served.url}/v1/services/up/status")).json()


async def until_state(served: Served, http: httpx.AsyncClient, state: str) -> dict[str, Any]:
    while (status := await state_of(served, http))["state"] != state:
        await trio.sleep(0.05)
    return status


async def journaled_running(served: Served, http: httpx.AsyncClient) -> None:
    """Until the gateway has seen its current task running: journaled in the same step."""
    while ((await state_of(served, http))["automation"]["current_task"] or {}
           ).get("status") != "running":
        await trio.sleep(0.02)


async def kill(served: Served) -> None:
    served.process.send_signal(signal.SIGKILL)
    await served.wait_exit()


async def test_killed_while_the_start_task_runs_the_next_gateway_waits_then_adopts(
        tmp_path: Path, remote) -> None:
    standin, machine, top = remote
    up = service(machine, on_restart="adopt")
    machine.start_gate.clear()
    with trio.fail_after(90):
        async with serve_file(tmp_path, up, **top) as first, client() as http:
            assert (await http.post(f"{first.url}/v1/services/up/start")).status_code == 202
            await journaled_running(first, http)
            await kill(first)
        async with serve_file(tmp_path, up, **top) as second, client() as http:
            # Listening at once; the backend holds its requests while the task runs.
            status = await state_of(second, http)
            assert status["state"] == "STARTING"
            assert status["automation"]["current_task"]["task_id"] == 1
            refused = await http.post(f"{second.url}/v1/services/up/start")
            assert refused.status_code == 409  # no second copy meanwhile
            async with trio.open_nursery() as nursery:
                answers: list[httpx.Response] = []

                async def held() -> None:
                    answers.append(await http.get(f"{second.url}/services/up/echo"))

                nursery.start_soon(held)
                # Held: in the backend's queue until the task ends.
                while (await state_of(second, http))["queuePending"] != 1:
                    await trio.sleep(0.02)
                assert answers == []
                machine.start_gate.set()
            assert machine.process is not None
            assert answers[0].status_code == 200
            assert answers[0].json()["pid"] == machine.process.pid
            assert (await state_of(second, http))["state"] == "READY"
            assert actions(standin) == [("start", "success")]
    assert '"event": "remote_backend_adopted_after_restart"' in second.stderr


async def test_killed_after_ready_the_next_gateway_adopts_the_same_remote(tmp_path, remote):
    standin, machine, top = remote
    up = service(machine, on_restart="adopt")
    with trio.fail_after(90):
        async with serve_file(tmp_path, up, **top) as first, client() as http:
            pid = (await http.get(f"{first.url}/services/up/echo")).json()["pid"]
            await kill(first)
        async with serve_file(tmp_path, up, **top) as second, client() as http:
            await until_state(second, http, "READY")
            assert (await http.get(f"{second.url}/services/up/echo")).json()["pid"] == pid
            assert actions(standin) == [("start", "success")]
            # Adopted: stopped like any backend, through the stop template.
            assert (await http.post(f"{second.url}/v1/services/up/stop")).status_code == 202
            await until_state(second, http, "COLD")
            assert machine.process is None
    assert actions(standin) == [("start", "success"), ("stop", "success")]
    assert '"event": "remote_backend_adopted_after_restart"' in second.stderr


async def test_killed_after_ready_with_on_restart_stop_the_next_gateway_stops_it(
        tmp_path, remote):
    standin, machine, top = remote
    up = service(machine)  # on_restart: stop, the default
    with trio.fail_after(90):
        async with serve_file(tmp_path, up, **top) as first, client() as http:
            assert (await http.get(f"{first.url}/services/up/echo")).status_code == 200
            await kill(first)
        assert machine.process is not None  # nobody stops it while no gateway runs
        async with serve_file(tmp_path, up, **top) as second, client() as http:
            status = await until_state(second, http, "COLD")
            assert status["automation"]["last_task"]["action"] == "stop"
            assert machine.process is None
            assert actions(standin) == [("start", "success"), ("stop", "success")]
    assert '"event": "remote_backend_stopped_after_restart"' in second.stderr
    assert '"reason": "on_restart_stop"' in second.stderr


async def test_killed_during_the_stop_task_the_next_gateway_waits_for_it(tmp_path, remote):
    standin, machine, top = remote
    up = service(machine, on_restart="adopt")
    with trio.fail_after(90):
        async with serve_file(tmp_path, up, **top) as first, client() as http:
            assert (await http.get(f"{first.url}/services/up/echo")).status_code == 200
            machine.stop_gate.clear()
            assert (await http.post(f"{first.url}/v1/services/up/stop")).status_code == 202
            await journaled_running(first, http)
            assert actions(standin) == [("start", "success"), ("stop", "running")]
            await kill(first)
        async with serve_file(tmp_path, up, **top) as second, client() as http:
            assert (await state_of(second, http))["state"] == "STOPPING"
            machine.stop_gate.set()
            await until_state(second, http, "COLD")
            assert machine.process is None
            # Waited for, not run again.
            assert actions(standin) == [("start", "success"), ("stop", "success")]
    assert '"event": "remote_backend_stop_awaited_after_restart"' in second.stderr
