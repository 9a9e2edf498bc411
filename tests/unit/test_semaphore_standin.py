"""The Semaphore stand-in keeps CONTRACT.md (v2.10), quirks included, in virtual time."""

from __future__ import annotations

import re

import httpx
import pytest
import trio
import trio.testing

from tests.semaphore_standin import SemaphoreStandin, TaskRun

JSON = "application/json"


@pytest.fixture
async def standin(nursery):
    standin = SemaphoreStandin(tick=5)
    await nursery.start(standin.run)
    return standin


def client_for(standin: SemaphoreStandin, token: str | None = None) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=standin.app),
                             base_url="http://semaphore", headers=headers)


@pytest.fixture
async def client(standin):
    async with client_for(standin, standin.create_token("admin")) as client:
        yield client


def assert_empty(response: httpx.Response, status: int) -> None:
    assert (response.status_code, response.content) == (status, b"")
    assert response.headers["content-type"] == JSON


async def create(client: httpx.AsyncClient, template_id: int, project: int = 1, **fields) -> dict:
    response = await client.post(f"/api/project/{project}/tasks",
                                 json={"template_id": template_id, **fields})
    assert response.status_code == 201, response
    return response.json()


async def stop(client: httpx.AsyncClient, task_id: int, force: bool) -> None:
    response = await client.post(f"/api/project/1/tasks/{task_id}/stop", json={"force": force})
    assert_empty(response, 204)


async def advance(seconds: float) -> None:
    """Sleep, then let everything due at that instant run: trio shuffles same-time wakeups."""
    await trio.sleep(seconds)
    await trio.testing.wait_all_tasks_blocked()


async def sleeper(run: TaskRun) -> int:
    await trio.sleep_forever()
    return 0  # pragma: no cover


# -- §0/§1 conventions ---------------------------------------------------------------------

async def test_ping_is_public_plain_text_and_unknown_paths_are_text_404(standin):
    async with client_for(standin) as anonymous:
        ping = await anonymous.get("/api/ping")
        assert (ping.status_code, ping.text) == (200, "pong")
        assert ping.headers["content-type"] == "text/plain; charset=utf-8"
        head = await anonymous.head("/api/ping")
        assert (head.status_code, head.content) == (200, b"")
        assert_empty(await anonymous.get("/api/info"), 401)
        for path in ("/api/nope", "/api/user/", "/api/project/1/"):
            missing = await anonymous.get(path)
            assert (missing.status_code, missing.text) == (404, "Not Found\n")
            assert missing.headers["content-type"] == "text/plain; charset=utf-8"
        wrong_method = await anonymous.delete("/api/ping")
        assert (wrong_method.status_code, wrong_method.content) == (405, b"")


async def test_info_and_timestamps_are_rfc3339_with_microseconds(client):
    info = (await client.get("/api/info")).json()
    assert set(info) == {"version", "ansible", "web_host", "use_remote_runner"}
    user = (await client.get("/api/user")).json()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", user["created"])


# -- §2 authentication ----------------------------------------------------------------------

async def test_password_login_sets_a_cookie_session_until_logout(standin):
    async with client_for(standin) as browser:
        login = await browser.post("/api/auth/login", json={"auth": "ADMIN",
                                                            "password": "changeme"})
        assert_empty(login, 204)
        assert re.fullmatch(r"semaphore=[^;]+; Path=/", login.headers["set-cookie"])
        user = await browser.get("/api/user")
        assert user.status_code == 200
        assert user.json()["username"] == "admin" and user.json()["admin"] is True
        assert set(user.json()) == {"id", "created", "username", "name", "email", "admin",
                                    "external", "alert", "can_create_project"}
        cookie = browser.cookies["semaphore"]
        assert_empty(await browser.post("/api/auth/logout"), 204)
        browser.cookies.set("semaphore", cookie)
        assert_empty(await browser.get("/api/user"), 401)


async def test_login_failures_and_forced_session_expiry(standin):
    async with client_for(standin) as browser:
        assert_empty(await browser.post("/api/auth/login",
                                         json={"auth": "admin", "password": "wrong"}), 401)
        assert_empty(await browser.post("/api/auth/login", content=b"auth=admin"), 400)
        assert (await browser.get("/api/auth/login")).json() == {
            "oidc_providers": [], "login_with_password": True}
        await browser.post("/api/auth/login", json={"auth": "admin", "password": "changeme"})
        assert (await browser.get("/api/user")).status_code == 200
        standin.expire_sessions()
        assert_empty(await browser.get("/api/user"), 401)


async def test_a_cookie_session_lapses_after_seven_idle_days(autojump_clock):
    standin = SemaphoreStandin()  # no pool: nothing to tick through a week
    async with client_for(standin) as browser:
        await browser.post("/api/auth/login", json={"auth": "admin", "password": "changeme"})
        await trio.sleep(6 * 86400)
        assert (await browser.get("/api/user")).status_code == 200  # use renews it
        await trio.sleep(7 * 86400 + 1)
        assert_empty(await browser.get("/api/user"), 401)
    assert [r.status for r in standin.requests] == [204, 200, 401]


async def test_bearer_parsing_is_case_insensitive_and_expired_tokens_are_refused(standin):
    token = standin.create_token("admin")
    assert re.fullmatch(r"[a-z0-9_-]{43}=", token)
    async with client_for(standin) as raw:
        for header in (f"Bearer {token}", f"BEARER {token}", f"bearer {token.upper()}"):
            assert (await raw.get("/api/user", headers={"authorization": header})).is_success
        for header in (f"Bearer  {token}", f"Bearer\t{token}", "Bearer nope"):
            assert_empty(await raw.get("/api/user", headers={"authorization": header}), 401)
    async with client_for(standin, token) as client:
        made = await client.post("/api/user/tokens")
        assert made.status_code == 201
        assert set(made.json()) == {"id", "created", "expired", "user_id"}
        assert_empty(await client.delete(f"/api/user/tokens/{made.json()['id']}"), 204)
        assert_empty(await client.delete("/api/user/tokens/unknown"), 204)
        listed = {t["id"]: t["expired"] for t in (await client.get("/api/user/tokens")).json()}
        assert listed == {token: False, made.json()["id"]: True}
    async with client_for(standin, made.json()["id"]) as expired:
        assert_empty(await expired.get("/api/user"), 401)


# -- §3/§4 authorization and discovery ------------------------------------------------------

async def test_project_access_follows_membership_and_role(standin, client):
    standin.add_project("home")
    standin.add_user("bob", "pw", admin=False)
    standin.add_user("gus", "pw", admin=False)
    other = standin.add_project("bobs", members={"bob": "task_runner", "gus": "guest"})
    template = standin.add_template(other, "svc")
    async with client_for(standin, standin.create_token("bob")) as bob:
        assert_empty(await bob.get("/api/project/1"), 404)
        assert_empty(await bob.get("/api/project/99/templates"), 404)
        assert [p["name"] for p in (await bob.get("/api/projects")).json()] == ["bobs"]
        invalid = await bob.get("/api/project/x/templates")
        assert (invalid.status_code, invalid.json()) == (400, {"error": "Invalid project ID"})
        created = await bob.post(f"/api/project/{other}/tasks", json={"template_id": template})
        assert created.status_code == 201
    async with client_for(standin, standin.create_token("gus")) as guest:
        assert (await guest.get(f"/api/project/{other}/templates")).status_code == 200
        assert_empty(await guest.post(f"/api/project/{other}/tasks",
                                      json={"template_id": template}), 403)
    assert [p["name"] for p in (await client.get("/api/projects")).json()] == ["bobs", "home"]


async def test_templates_list_is_sorted_by_name_with_zeroed_fields(standin, client):
    project = standin.add_project("home")
    survey = [{"name": "svc", "title": "Service", "required": True, "type": "",
               "description": "", "values": []}]
    zeta = standin.add_template(project, "zeta", survey_vars=survey, autorun=True,
                                suppress_success_alerts=True, environment={"a": 1})
    standin.add_template(project, "alpha")
    standin.add_template(project, "alpha")  # names are not unique
    listed = (await client.get("/api/project/1/templates")).json()
    assert [t["name"] for t in listed] == ["alpha", "alpha", "zeta"]
    assert [t["name"] for t in (await client.get(
        "/api/project/1/templates?sort=name&order=desc")).json()] == ["zeta", "alpha", "alpha"]
    assert {(t["survey_vars"], t["vaults"], t["autorun"], t["suppress_success_alerts"])
            for t in listed} == {(None, None, False, False)}
    one = (await client.get(f"/api/project/1/templates/{zeta}")).json()
    assert (one["survey_vars"], one["autorun"], one["suppress_success_alerts"]) == (
        survey, True, True)
    assert one["environment_id"] is not None and one["app"] == "ansible"
    assert_empty(await client.get("/api/project/1/templates/99"), 404)
    assert_empty(await client.get("/api/project/1/templates/x"), 400)


# -- §5 starting a task ---------------------------------------------------------------------

async def test_created_task_is_waiting_with_the_post_only_secret(standin, client, autojump_clock):
    standin.add_project("home")
    seen: list[TaskRun] = []

    async def playbook(run: TaskRun) -> int:
        seen.append(run)
        return 0

    template = standin.add_template(1, "svc", playbook, environment={"a": 1, "b": 2})
    task = await create(client, template, environment='{"b": 9, "c": 3}', message="by hestia",
                        secret='{"token": "x"}', limit="web01", arguments='["--tags","x"]',
                        git_branch="main", unknown_field=[1])
    assert {k: task[k] for k in ("status", "secret", "start", "end", "user_id", "environment",
                                 "message", "limit", "arguments", "git_branch")} == {
        "status": "waiting", "secret": "{}", "start": None, "end": None, "user_id": 1,
        "environment": '{"b": 9, "c": 3}', "message": "by hestia", "limit": "web01",
        "arguments": '["--tags","x"]', "git_branch": "main"}
    fetched = (await client.get(f"/api/project/1/tasks/{task['id']}")).json()
    assert fetched == {**task, "secret": ""}
    await advance(5)
    assert seen[0].environment == {"a": 1, "b": 2, "c": 3}  # v2.10: the template wins (§8)
    assert seen[0].secret == {"token": "x"}
    assert seen[0].task is standin.tasks[task["id"]]


async def test_task_bodies_are_decoded_like_go(standin, client):
    standin.add_project("home")
    template = standin.add_template(1, "svc", environment={})
    bad = [{"template_id": str(template)}, {"template_id": template, "environment": {"a": 1}},
           {"template_id": float(template)}, {"template_id": True}, [template]]
    for body in bad:
        assert_empty(await client.post("/api/project/1/tasks", json=body), 400)
    for content in (b"", b"{", b'{"template_id": NaN}'):
        assert_empty(await client.post("/api/project/1/tasks", content=content), 400)
    for content in (b'{"template_id": 99}', b"{}", b"null"):  # null is Go's zero struct
        assert_empty(await client.post("/api/project/1/tasks", content=content), 500)
    assert (await client.post("/api/project/1/tasks",
                              json={"Template_ID": template})).status_code == 201


async def test_v210_task_environment_on_an_envless_template_fails_the_new_row(standin, client):
    standin.add_project("home")
    template = standin.add_template(1, "svc")
    response = await client.post("/api/project/1/tasks",
                                 json={"template_id": template, "environment": '{"a": 1}'})
    assert_empty(response, 500)
    (task_id,) = standin.tasks
    assert standin.tasks[task_id]["status"] == "error"
    assert standin.task_statuses(task_id) == ["waiting", "error"]
    assert [row["output"] for row in standin.outputs[task_id]] == [
        "Error: unexpected end of JSON input"]
    assert (await create(client, template, environment=""))["status"] == "waiting"


# -- §6 polling ----------------------------------------------------------------------------

async def test_unknown_tasks_are_400_not_404(standin, client):
    standin.add_project("home")
    other = standin.add_project("other")
    task = await create(client, standin.add_template(other, "svc"), other)
    assert task["project_id"] == other
    for path in ("/api/project/1/tasks/999", "/api/project/1/tasks/x",
                 f"/api/project/1/tasks/{task['id']}", "/api/project/1/tasks/999/output"):
        assert_empty(await client.get(path), 400)


async def test_a_task_runs_on_the_next_tick_and_logs_its_output(standin, client, autojump_clock):
    standin.add_project("home")

    async def playbook(run: TaskRun) -> int:
        run.log("hello")
        await trio.sleep(3)
        run.log("bye")
        return 0

    task = await create(client, standin.add_template(1, "svc", playbook))
    url = f"/api/project/1/tasks/{task['id']}"
    output = await client.get(f"{url}/output")
    assert (output.status_code, output.content) == (200, b"null\n")
    await advance(4.9)
    assert (await client.get(url)).json()["status"] == "waiting"
    await advance(0.1)
    running = (await client.get(url)).json()
    assert (running["status"], running["end"]) == ("running", None) and running["start"]
    await advance(3)
    done = (await client.get(url)).json()
    assert done["status"] == "success" and done["end"]
    rows = (await client.get(f"{url}/output")).json()
    assert [(r["task_id"], r["task"], r["output"]) for r in rows] == [
        (task["id"], "", "hello"), (task["id"], "", "bye")]
    assert standin.task_statuses(task["id"]) == ["waiting", "starting", "running", "success"]
    listed = (await client.get("/api/project/1/tasks/last?limit=1")).json()
    assert (listed[0]["id"], listed[0]["tpl_alias"], listed[0]["user_name"]) == (
        task["id"], "svc", "admin")


async def test_failing_and_crashing_playbooks_end_in_error(standin, client, autojump_clock):
    standin.add_project("home")

    async def crash(run: TaskRun) -> int:
        raise RuntimeError("boom")

    async def exit_two(run: TaskRun) -> int:
        return 2

    crashed = await create(client, standin.add_template(1, "a", crash))
    failed = await create(client, standin.add_template(1, "b", exit_two))
    await advance(10)
    assert standin.tasks[crashed["id"]]["status"] == "error"
    assert standin.tasks[failed["id"]]["status"] == "error"
    assert "boom" in standin.outputs[crashed["id"]][-1]["output"]


# -- §7 stopping ---------------------------------------------------------------------------

async def test_stop_needs_a_json_body(standin, client):
    standin.add_project("home")
    task = await create(client, standin.add_template(1, "svc"))
    url = f"/api/project/1/tasks/{task['id']}/stop"
    assert_empty(await client.post(url), 400)
    assert_empty(await client.post(url, json={"force": "yes"}), 400)
    assert_empty(await client.post(url, json={}), 204)
    assert standin.stop_requests() == [(task["id"], None), (task["id"], {"force": "yes"}),
                                       (task["id"], {})]


async def test_stopping_a_waiting_task_without_force_means_it_never_runs(
        standin, client, autojump_clock):
    standin.add_project("home")
    calls = []

    async def playbook(run: TaskRun) -> int:
        calls.append(trio.current_time())
        return 0

    task = await create(client, standin.add_template(1, "svc", playbook))
    await stop(client, task["id"], force=False)
    assert standin.tasks[task["id"]]["status"] == "stopping"
    await advance(5)
    assert standin.task_statuses(task["id"]) == ["waiting", "stopping", "stopped"]
    assert calls == [] and standin.tasks[task["id"]]["end"]


async def test_force_stopping_a_waiting_task_still_runs_its_job_in_v210(
        standin, client, autojump_clock):
    standin.add_project("home")
    calls = []

    async def playbook(run: TaskRun) -> int:
        calls.append(trio.current_time())
        return 0

    task = await create(client, standin.add_template(1, "svc", playbook))
    await stop(client, task["id"], force=True)
    assert (standin.tasks[task["id"]]["status"], standin.tasks[task["id"]]["end"]) == (
        "stopped", None)
    await advance(5)
    assert calls == [5.0]
    assert standin.task_statuses(task["id"]) == ["waiting", "stopped"]
    assert standin.tasks[task["id"]]["start"] is None and standin.tasks[task["id"]]["end"]


@pytest.mark.parametrize(("force", "final"), [(False, "error"), (True, "stopped")])
async def test_stopping_a_running_task_kills_it(standin, client, autojump_clock, force, final):
    standin.add_project("home")
    cancelled = []

    async def playbook(run: TaskRun) -> int:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(trio.current_time())
        return 0  # pragma: no cover

    task = await create(client, standin.add_template(1, "svc", playbook))
    await advance(6)
    await stop(client, task["id"], force=force)
    await advance(0)
    assert cancelled == [6.0]
    middle = "stopped" if force else "stopping"
    assert standin.task_statuses(task["id"]) == [
        "waiting", "starting", "running", middle, *([] if force else [final])]
    assert standin.tasks[task["id"]]["status"] == final  # issue #2235 for force:false


async def test_stopping_a_finished_task_overwrites_its_status(standin, client, autojump_clock):
    standin.add_project("home")
    task = await create(client, standin.add_template(1, "svc"))
    await advance(5)
    assert standin.tasks[task["id"]]["status"] == "success"
    await stop(client, task["id"], force=False)
    assert standin.tasks[task["id"]]["status"] == "stopped"


async def test_one_template_runs_one_task_at_a_time_one_dequeue_per_tick(
        standin, client, autojump_clock):
    standin.add_project("home")
    started: dict[int, float] = {}

    async def playbook(run: TaskRun) -> int:
        started[run.task["id"]] = trio.current_time()
        await trio.sleep(12)
        return 0

    first = await create(client, standin.add_template(1, "a", playbook))
    second = await create(client, first["template_id"])
    other = await create(client, standin.add_template(1, "b", playbook))
    await advance(16)
    assert standin.tasks[second["id"]]["status"] == "waiting"
    await advance(30)
    # t=5 first; t=10 second is blocked and goes to the back; t=15 other; first ends at 17.
    assert started == {first["id"]: 5.0, other["id"]: 15.0, second["id"]: 20.0}


async def test_a_project_limit_holds_back_other_templates_too(client, autojump_clock, standin):
    standin.add_project("home", max_parallel_tasks=1)
    started: list[float] = []

    async def playbook(run: TaskRun) -> int:
        started.append(trio.current_time())
        await trio.sleep(7)
        return 0

    await create(client, standin.add_template(1, "a", playbook))
    await create(client, standin.add_template(1, "b", playbook))
    await advance(30)
    assert started == [5.0, 15.0]  # b is blocked at 10 (a runs until 12), dequeued at 15


async def test_waiting_confirmation_until_confirmed(standin, client, autojump_clock):
    standin.add_project("home")

    async def terraform(run: TaskRun) -> int:
        run.log("plan")
        await run.wait_confirmation()
        run.log("apply")
        return 0

    task = await create(client, standin.add_template(1, "tf", terraform, app="terraform"))
    url = f"/api/project/1/tasks/{task['id']}"
    await advance(30)
    assert (await client.get(url)).json()["status"] == "waiting_confirmation"
    assert_empty(await client.post(f"{url}/confirm"), 204)
    await advance(0)
    assert standin.task_statuses(task["id"]) == [
        "waiting", "starting", "running", "waiting_confirmation", "confirmed", "running",
        "success"]
    assert [r["output"] for r in standin.outputs[task["id"]]] == ["plan", "apply"]
    assert_empty(await client.post(f"{url}/confirm"), 400)  # no longer in the pool


async def test_after_a_restart_tasks_stay_stuck_until_stopped(standin, client, autojump_clock):
    standin.add_project("home")
    template = standin.add_template(1, "svc", sleeper)
    running = await create(client, template)
    await advance(5)
    waiting = await create(client, template)
    standin.restart()
    await advance(600)
    assert standin.tasks[running["id"]]["status"] == "running"
    assert standin.tasks[waiting["id"]]["status"] == "waiting"
    await stop(client, running["id"], force=False)
    assert standin.tasks[running["id"]]["status"] == "stopped"
    assert_empty(await client.delete(f"/api/project/1/tasks/{waiting['id']}"), 204)
    assert waiting["id"] not in standin.tasks


async def test_only_admins_delete_tasks_and_only_outside_the_pool(standin, client):
    standin.add_user("owner", "pw", admin=False)
    standin.add_project("home", members={"owner": "owner"})
    task = await create(client, standin.add_template(1, "svc"))
    assert_empty(await client.delete(f"/api/project/1/tasks/{task['id']}"), 400)
    async with client_for(standin, standin.create_token("owner")) as owner:
        assert_empty(await owner.delete(f"/api/project/1/tasks/{task['id']}"), 401)


# -- a real server -------------------------------------------------------------------------

async def test_serve_listens_on_loopback_and_answers_ping(nursery):
    with trio.fail_after(10):
        standin = SemaphoreStandin(tick=0.05)
        url = await nursery.start(standin.serve)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        async with httpx.AsyncClient(base_url=url) as client:
            ping = await client.get("/api/ping")
            assert (ping.status_code, ping.text) == (200, "pong")
            assert (await client.head("/api/ping")).status_code == 200
            token = standin.create_token("admin")
            user = await client.get("/api/user", headers={"authorization": f"Bearer {token}"})
            assert user.json()["username"] == "admin"
        assert [(r.method, r.path, r.status) for r in standin.requests] == [
            ("GET", "/api/ping", 200), ("HEAD", "/api/ping", 200), ("GET", "/api/user", 200)]


# -- §8 releases ---------------------------------------------------------------------------

async def on_release(nursery, release: str) -> SemaphoreStandin:
    standin = SemaphoreStandin(tick=5, release=release)
    await nursery.start(standin.run)
    return standin


@pytest.mark.parametrize(("release", "status"), [("2.10", 500), ("2.13", 404), ("2.16", 404)])
async def test_an_unknown_template_is_a_500_in_v210_and_a_404_later(nursery, release, status):
    standin = await on_release(nursery, release)
    standin.add_project("home")
    async with client_for(standin, standin.create_token("admin")) as client:
        assert_empty(await client.post("/api/project/1/tasks", json={"template_id": 99}),
                     status)
    assert standin.tasks == {}


@pytest.mark.parametrize(("release", "allowed", "applied"), [
    ("2.10", False, "web01"), ("2.13", False, ""), ("2.13", True, "web01"), ("2.16", False, "")])
async def test_a_task_limit_needs_allow_override_limit_from_v213(
        nursery, autojump_clock, release, allowed, applied):
    standin = await on_release(nursery, release)
    standin.add_project("home")
    seen = []

    async def playbook(run: TaskRun) -> int:
        seen.append(run.limit)
        return 0

    template = standin.add_template(1, "svc", playbook, allow_override_limit=allowed)
    async with client_for(standin, standin.create_token("admin")) as client:
        shown = (await client.get(f"/api/project/1/templates/{template}")).json()
        assert ("task_params" in shown) is (release != "2.10")
        await create(client, template, limit="web01")
        await advance(5)
    assert seen == [applied]


@pytest.mark.parametrize(("release", "env_less", "merged"), [
    ("2.13", {"a": "task"}, {"a": "template", "b": "template"}),
    ("2.16", {"a": "task"}, {"a": "task", "b": "template"})])
async def test_environment_precedence_and_envless_templates_after_v210(
        nursery, autojump_clock, release, env_less, merged):
    standin = await on_release(nursery, release)
    standin.add_project("home")
    seen = []

    async def playbook(run: TaskRun) -> int:
        seen.append(run.environment)
        return 0

    with_env = standin.add_template(1, "a", playbook, environment={"a": "template",
                                                                   "b": "template"})
    without = standin.add_template(1, "b", playbook)
    async with client_for(standin, standin.create_token("admin")) as client:
        await create(client, with_env, environment='{"a": "task"}')
        await create(client, without, environment='{"a": "task"}')  # 2.10 would answer 500
        await advance(10)
    assert seen == [merged, env_less]


async def test_pr4108_refuses_variables_that_are_not_survey_variables(nursery):
    standin = await on_release(nursery, "pr4108")
    standin.add_project("home")
    strict = standin.add_template(1, "strict", survey_vars=[{"name": "MODEL"}], environment={})
    loose = standin.add_template(1, "loose", allow_any_vars_in_task=True, environment={})
    async with client_for(standin, standin.create_token("admin")) as client:
        shown = (await client.get(f"/api/project/1/templates/{strict}")).json()
        assert shown["allow_any_vars_in_task"] is False
        refused = await client.post("/api/project/1/tasks", json={
            "template_id": strict, "environment": '{"MODEL": "x", "HESTIA_PORT": "1"}'})
        assert refused.status_code == 400
        assert refused.json() == {"error": "variable HESTIA_PORT is not declared"}
        await create(client, strict, environment='{"MODEL": "x"}')
        await create(client, loose, environment='{"HESTIA_PORT": "1"}')
    assert len(standin.tasks) == 2


async def test_v210_a_plain_stop_of_a_task_waiting_for_confirmation_sticks_in_stopping(
        standin, client, autojump_clock):
    standin.add_project("home")
    ran = []

    async def terraform(run: TaskRun) -> int:
        ran.append(run.task["id"])
        await run.wait_confirmation()
        return 0

    template = standin.add_template(1, "tf", terraform, app="terraform")
    first = await create(client, template)
    await advance(5)
    await stop(client, first["id"], force=False)
    second = await create(client, template)
    await advance(600)
    assert standin.tasks[first["id"]]["status"] == "stopping"  # for ever
    assert standin.tasks[second["id"]]["status"] == "waiting"  # the template is held
    await stop(client, first["id"], force=True)
    await advance(5)
    assert standin.tasks[first["id"]]["status"] == "stopped"
    assert ran == [first["id"], second["id"]]


async def test_reject_exists_from_v213_and_ends_a_task_waiting_for_confirmation(
        nursery, client, autojump_clock):
    standin = await on_release(nursery, "2.13")
    standin.add_project("home")

    async def terraform(run: TaskRun) -> int:
        await run.wait_confirmation()
        return 0  # pragma: no cover - rejected

    template = standin.add_template(1, "tf", terraform, app="terraform")
    async with client_for(standin, standin.create_token("admin")) as newer:
        task = await create(newer, template)
        url = f"/api/project/1/tasks/{task['id']}/reject"
        assert_empty(await newer.post(url), 400)  # not waiting for a confirmation yet
        await advance(5)
        assert_empty(await newer.post(url), 204)
        await advance(0)
    assert standin.task_statuses(task["id"])[-2:] == ["waiting_confirmation", "rejected"]
    assert standin.tasks[task["id"]]["end"]
    old = await client.post(url)  # the v2.10 stand-in of the fixture has no such route
    assert (old.status_code, old.text) == (404, "Not Found\n")


async def test_a_terraform_task_fails_on_a_variable_its_module_does_not_declare(
        standin, client, autojump_clock):
    standin.add_project("home")
    template = standin.add_template(1, "tf", app="tofu", environment={},
                                    module_vars=("region",))
    good = await create(client, template, environment='{"region": "eu"}')
    bad = await create(client, template, environment='{"region": "eu", "HESTIA_PORT": "1"}')
    await advance(10)
    assert standin.tasks[good["id"]]["status"] == "success"
    assert standin.tasks[bad["id"]]["status"] == "error"
    assert standin.outputs[bad["id"]][-1]["output"].startswith(
        'A variable named "HESTIA_PORT" was assigned on the command line')


async def test_a_totp_user_gets_a_session_every_call_refuses(nursery):
    standin = await on_release(nursery, "2.13")
    standin.add_user("ops", "pw", totp=True)
    async with client_for(standin) as client:
        login = await client.post("/api/auth/login", json={"auth": "ops", "password": "pw"})
        assert login.status_code == 204 and login.cookies.get("semaphore")
        refused = await client.get("/api/user")
        assert (refused.status_code, refused.json()) == (401, {"error": "TOTP_REQUIRED"})
    with pytest.raises(ValueError, match="2.10 has no TOTP"):
        SemaphoreStandin(release="2.10").add_user("ops", "pw", totp=True)
