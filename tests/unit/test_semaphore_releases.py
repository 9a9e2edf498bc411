"""The Semaphore launcher against each release the stand-in models (CONTRACT §8), in virtual time.

Only the behaviours that differ between releases are run against several of them; the rest of
the launcher is tested against 2.10 in test_semaphore.py.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from hestia.errors import StartFailed
from hestia.launchers.base import LaunchContext
from hestia.semaphore.client import TAIL_BYTES, _tail_rows
from hestia.semaphore.releases import HESTIA_NAMES
from tests.semaphore_standin import SemaphoreStandin, TaskRun
from tests.unit.test_semaphore import CONTEXT, Handler, hub, launcher, on_release, standin

__all__ = ["standin"]  # the fixture, shared with test_semaphore.py

LIMIT_IGNORED = (
    "Semaphore template 'start' (id 1) would ignore the launcher's limit 'gpu01': this "
    "Semaphore (2.13 or later) drops a task's limit unless the template allows it, and the "
    "playbook would run on every host of the inventory. Turn on \"Allow override limit\" "
    "(task_params.allow_override_limit) in the template, or remove `limit`")


def test_the_hestia_names_are_those_every_launcher_passes():
    assert tuple(LaunchContext("s", "b", "u", 1).environment("start")) == HESTIA_NAMES


class Recorder:
    """A playbook that records the limit and variables its job got."""

    def __init__(self) -> None:
        self.limits: list[str] = []
        self.environments: list[dict[str, Any]] = []

    async def __call__(self, run: TaskRun) -> int:
        self.limits.append(run.limit)
        self.environments.append(dict(run.environment))
        return 0


@pytest.mark.parametrize(("release", "allowed"), [("2.10", False), ("2.13", True),
                                                  ("2.16", True)])
async def test_a_limit_the_template_honours_reaches_the_playbook_and_hestia_limit(
        nursery, tmp_path, autojump_clock, release, allowed):
    standin = await on_release(nursery, release)
    project = standin.add_project("infra")
    playbook = Recorder()
    standin.add_template(project, "start", playbook, environment={},
                         allow_override_limit=allowed)
    h = hub(standin, {"gpu": {"start_template": "start", "limit": "gpu01"}})
    assert await h.check() == ([], None)
    await launcher(h, "gpu", tmp_path).start(CONTEXT)
    assert playbook.limits == ["gpu01"]
    assert playbook.environments[0]["HESTIA_LIMIT"] == "gpu01"


@pytest.mark.parametrize("release", ["2.13", "2.16"])
async def test_a_limit_the_template_would_drop_refuses_the_start_and_the_check(
        nursery, tmp_path, autojump_clock, release):
    standin = await on_release(nursery, release)
    project = standin.add_project("infra")
    playbook = Recorder()
    standin.add_template(project, "start", playbook, environment={})
    h = hub(standin, {"gpu": {"start_template": "start", "limit": "gpu01"}})
    errors, unreachable = await h.check()
    assert (errors, unreachable) == ([("machines.gpu.semaphore.limit", LIMIT_IGNORED)], None)
    with pytest.raises(StartFailed) as caught:
        await launcher(h, "gpu", tmp_path).start(CONTEXT)
    assert (caught.value.extra["reason"], caught.value.detail) == ("limit_ignored",
                                                                   LIMIT_IGNORED)
    assert standin.tasks == {} and playbook.limits == []
    assert h.automations["ollama"].last is not None
    assert h.automations["ollama"].last.status == "not_created"


@pytest.mark.parametrize(("template", "ok"), [
    ({}, False),
    ({"survey_vars": [{"name": name} for name in HESTIA_NAMES]}, False),  # MODEL is missing
    ({"survey_vars": [{"name": name} for name in (*HESTIA_NAMES, "MODEL")]}, True),
    ({"allow_any_vars_in_task": True}, True)])
async def test_variables_that_are_not_survey_variables_are_explained_before_pr4108_refuses(
        nursery, tmp_path, autojump_clock, template, ok):
    standin = await on_release(nursery, "pr4108")
    project = standin.add_project("infra")
    playbook = Recorder()
    standin.add_template(project, "start", playbook, environment={}, **template)
    h = hub(standin, {"gpu": {"start_template": "start", "environment": {"MODEL": "llama3"}}})
    errors, _ = await h.check()
    if ok:
        assert errors == []
        await launcher(h, "gpu", tmp_path).start(CONTEXT)
        assert playbook.environments[0]["MODEL"] == "llama3"
        return
    undeclared = "MODEL" if template else f"MODEL, {', '.join(HESTIA_NAMES)}"
    message = (f"Semaphore template 'start' (id 1) refuses task variables that are not its "
               f"survey variables, and Hestia would send {undeclared}. Declare them as survey "
               "variables of the template, or turn on \"Allow any variables in task\" "
               "(allow_any_vars_in_task), or send fewer (`send_variables`)")
    assert errors == [("machines.gpu.semaphore.start_template", message)]
    with pytest.raises(StartFailed) as caught:
        await launcher(h, "gpu", tmp_path).start(CONTEXT)
    assert (caught.value.extra["reason"], caught.value.detail) == ("undeclared_variables",
                                                                   message)
    assert standin.tasks == {}


async def test_a_refusal_hestia_did_not_foresee_is_explained_with_semaphores_words(
        nursery, tmp_path, autojump_clock):
    standin = await on_release(nursery, "pr4108")
    project = standin.add_project("infra")
    tid = standin.add_template(project, "start", environment={}, allow_any_vars_in_task=True)

    async def tightened(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":  # the setting is turned off after Hestia read it
            standin._templates[tid].allow_any_vars_in_task = False
        return await httpx.ASGITransport(app=standin.app).handle_async_request(request)

    h = hub(standin, {"gpu": {"start_template": tid}}, transport=Handler(tightened))
    with pytest.raises(StartFailed) as caught:
        await launcher(h, "gpu", tmp_path).start(CONTEXT)
    assert caught.value.extra["reason"] == "semaphore_http_400"
    assert caught.value.detail == (
        "cannot create the Semaphore start task: POST /project/1/tasks: Semaphore refused the "
        "request (400: variable HESTIA_SERVICE is not declared)")


@pytest.mark.parametrize(("send", "sent"), [("configured", {"region": "eu"}), ("none", {})])
async def test_a_terraform_template_gets_only_the_variables_it_declares(
        standin, tmp_path, autojump_clock, send, sent):
    project = standin.add_project("infra")
    playbook = Recorder()
    standin.add_template(project, "apply", playbook, app="tofu", environment={},
                         module_vars=("region",))
    h = hub(standin, {"gpu": {"start_template": "apply", "environment": {"region": "eu"},
                              "send_variables": send}})
    await launcher(h, "gpu", tmp_path).start(CONTEXT)
    assert playbook.environments == [sent]
    (post,) = [r for r in standin.requests if r.method == "POST"]
    assert ("environment" in post.json) is bool(sent)


async def test_a_terraform_template_refusing_hestias_variables_fails_with_the_ways_out(
        standin, tmp_path, autojump_clock):
    project = standin.add_project("infra")
    standin.add_template(project, "apply", app="terraform", environment={})
    h = hub(standin, {"gpu": {"start_template": "apply"}})
    with pytest.raises(StartFailed) as caught:
        await launcher(h, "gpu", tmp_path).start(CONTEXT)
    assert caught.value.detail == (
        "Semaphore start task 1 (apply) ended error: A variable named \"HESTIA_SERVICE\" was "
        "assigned on the command line, but the root module does not declare a variable of "
        "that name. (terraform gets each task variable as -var and fails for one its module "
        "does not declare: declare the variables Hestia sends (HESTIA_* and `environment`) in "
        "the module, or set `send_variables: configured` or `none` on the launcher)")


async def test_an_envless_template_on_v210_runs_a_task_without_variables(
        standin, tmp_path, autojump_clock):
    project = standin.add_project("infra")
    playbook = Recorder()
    standin.add_template(project, "start", playbook)  # no environment: 2.10 fails variables
    h = hub(standin, {"gpu": {"start_template": "start", "send_variables": "none"}})
    await launcher(h, "gpu", tmp_path).start(CONTEXT)
    assert playbook.environments == [{}]


async def test_a_task_rejected_by_someone_else_is_finished(nursery, tmp_path, autojump_clock):
    standin = await on_release(nursery, "2.13")
    project = standin.add_project("infra")

    async def plan(run: TaskRun) -> int:
        await run.wait_confirmation()
        return 0  # pragma: no cover - rejected

    standin.add_template(project, "apply", plan, app="terraform", environment={},
                         module_vars=HESTIA_NAMES)
    h = hub(standin, {"gpu": {"start_template": "apply", "confirm": True}},
            poll_interval="2s")

    async def reject_at_5_5() -> None:
        await trio.sleep(5.5)  # waiting for confirmation since the tick of 5; next poll at 6
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=standin.app),
                                     base_url="http://s") as client:
            response = await client.post(
                "/api/project/1/tasks/1/reject",
                headers={"authorization": f"Bearer {standin.create_token('admin')}"})
            assert response.status_code == 204

    async with trio.open_nursery() as inner:
        inner.start_soon(reject_at_5_5)
        with pytest.raises(StartFailed) as caught:
            await launcher(h, "gpu", tmp_path).start(CONTEXT)
    assert trio.current_time() == 6.0
    assert caught.value.extra["reason"] == "task_rejected"
    assert caught.value.extra["task_status"] == "rejected"
    assert not any(r.path.endswith("/confirm") for r in standin.requests)


async def test_a_totp_user_is_told_to_use_a_token(nursery, tmp_path, autojump_clock):
    standin = await on_release(nursery, "2.13")
    standin.add_user("ops", "pw", totp=True)
    project = standin.add_project("infra")
    standin.add_template(project, "start", environment={})
    h = hub(standin, {"gpu": {"start_template": "start"}},
            auth={"username": "ops", "password": "pw"})
    with pytest.raises(StartFailed) as caught:
        await launcher(h, "gpu", tmp_path).start(CONTEXT)
    assert caught.value.extra["reason"] == "semaphore_http_401"
    assert caught.value.detail == (
        "cannot create the Semaphore start task: GET /project/1/templates: the Semaphore user "
        "'ops' has two-factor authentication (TOTP) on: a password login gives a session that "
        "needs a one-time code, which Hestia cannot type (401 TOTP_REQUIRED). Use an API token "
        "(semaphore.token or SEMAPHORE_API_TOKEN)")


# --- output ---------------------------------------------------------------------------------

async def test_a_huge_log_keeps_its_tail(standin, tmp_path, autojump_clock):
    project = standin.add_project("infra")

    async def chatty(run: TaskRun) -> int:
        for i in range(20_000):
            run.log(f"line {i} " + "x" * 40)
        run.log('fatal: quotes " and },{"task_id": braces survive')
        return 3

    standin.add_template(project, "start", chatty, environment={})
    h = hub(standin, {"gpu": {"start_template": "start"}})
    with pytest.raises(StartFailed) as caught:
        await launcher(h, "gpu", tmp_path).start(CONTEXT)
    tail = caught.value.extra["log_tail"]
    assert len(tail) == 20
    assert tail[0].startswith("line 19981 ")
    assert tail[-1] == 'fatal: quotes " and },{"task_id": braces survive'


def test_tail_rows_of_a_cut_array_start_at_the_first_whole_row():
    rows = [{"task_id": 1, "task": "", "time": "t", "output": f"{i} {{\"task_id\":"}
            for i in range(5)]
    data = json.dumps(rows, separators=(",", ":")).encode()
    assert _tail_rows(data[30:], cut=True) == rows[1:]
    assert _tail_rows(data, cut=False) == rows
    assert _tail_rows(b"null", cut=False) == []
    assert _tail_rows(b"{}", cut=False) is None
    assert TAIL_BYTES >= 64 * 1024


async def test_output_that_does_not_arrive_in_time_is_said_not_left_empty(
        standin, tmp_path, autojump_clock):
    project = standin.add_project("infra")
    standin.add_template(project, "start", failing_playbook, environment={})

    async def slow_output(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/output"):
            await trio.sleep(3600)
        return await httpx.ASGITransport(app=standin.app).handle_async_request(request)

    h = hub(standin, {"gpu": {"start_template": "start"}}, transport=Handler(slow_output),
            output_timeout="45s", request_timeout="1h")
    with pytest.raises(StartFailed) as caught:
        await launcher(h, "gpu", tmp_path).start(CONTEXT)
    # Created at 0, run at the tick of 5, seen failed by the poll at 6; 45 s for the output.
    assert trio.current_time() == 51.0
    message = ("(Hestia could not fetch the output of task 1: GET /project/1/tasks/1/output: "
               "the task's output did not arrive within 45s)")
    assert caught.value.extra["log_tail"] == [message]
    assert caught.value.detail == f"Semaphore start task 1 (start) ended error: {message}"


async def failing_playbook(run: TaskRun) -> int:
    run.log("fatal: [gpu01]: boom")
    return 1


def test_the_stand_in_refuses_a_release_it_does_not_model():
    with pytest.raises(ValueError, match="unknown release"):
        SemaphoreStandin(release="2.11")
