"""A stand-in for the Ansible Semaphore HTTP API, following /work/shared/semaphore/CONTRACT.md.

The contract is a snapshot of Semaphore v2.10 (`v2.10.32-31-gd4a27137`); section numbers (§n) in the
comments below point into it. A real Semaphore cannot run here (§10), so gateway tests talk to this
instead, in two ways:

* virtual time: `await nursery.start(standin.run)` (the task pool), then
  `httpx.AsyncClient(transport=httpx.ASGITransport(app=standin.app), base_url="http://semaphore")`.
  Only trio primitives are used, so `autojump_clock` drives the pool's tick and the playbooks.
* a real server: `url = await nursery.start(standin.serve)` → `"http://127.0.0.1:PORT"` (no `/api`),
  hypercorn's trio worker plus the pool.

`release` picks which Semaphore it behaves as, for the differences of CONTRACT §8 (everything
else is the same in all of them):

* `"2.10"` (the default, the snapshot): the template's environment keys beat the task's, and an
  environment-less template fails a task that has variables (500); an unknown template is an
  empty 500; a task's `limit` is always applied; no `rejected`, no `/reject`, no TOTP; a
  non-forced stop of a task waiting for confirmation leaves it `stopping` for ever.
* `"2.13"` (2.13 to 2.15): the template JSON has `task_params`, and a task's `limit` is applied
  only with `task_params.allow_override_limit`; an unknown template is a 404; `POST
  .../reject` and the status `rejected` exist; users may have TOTP (their password login gives a
  session that every call refuses with 401 `TOTP_REQUIRED`).
* `"2.16"` (2.16 and later): as 2.13, but the task's environment beats the template's (#3108).
* `"pr4108"`: 2.16 plus the open upstream change PR #4108: the template JSON has
  `allow_any_vars_in_task`, and unless it is set a task variable that is not a survey variable
  is refused (400 `{"error": "variable X is not declared"}`).

Terraform/OpenTofu templates (`app="terraform"` or `"tofu"`) get each variable as `-var`; the
job fails unless the module declares it (`module_vars`), in every release.

A "playbook" is an async Python callable standing for the job: it gets a `TaskRun`, may `log()`
lines and `wait_confirmation()`, and returns the exit code.

Deliberately left out: creating, editing or deleting anything over HTTP except tasks and API
tokens (projects, templates, users, inventories, environments, keys, repositories, views are
made with `add_*` or are read-only empty lists); schedules, integrations, webhooks, runners and
remote runners; build/deploy templates and versions; LDAP/OIDC login; project backups; events;
websocket (`/api/ws`) updates; the global `max_parallel_tasks` (the per-project one is modelled);
the web UI, which a real server serves on every non-`/api` path.

Simplified: task output holds only what playbooks log (plus the error lines below), not the
pool's own lines such as "Task 3 added to queue"; `starting` → `running` takes no time (no git
clone); a forced stop or a reject during `waiting_confirmation` ends the job like a kill;
`task_params` holds only the Ansible app's four override flags, for every app.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import trio

__all__ = ["Playbook", "Request", "SemaphoreStandin", "TaskRun"]

RELEASES = ("2.10", "2.13", "2.16", "pr4108")
# What /api/info says; the patch levels past 2.10 are made up (only the minor one matters here).
VERSIONS = {"2.10": "v2.10.32-31-gd4a27137", "2.13": "v2.13.0", "2.16": "v2.16.0",
            "pr4108": "v2.16.0-pr4108"}
# task_logger IsFinished (§7); `rejected` exists from 2.13 only (§8).
FINISHED = frozenset({"success", "error", "stopped", "rejected"})
TERRAFORM_APPS = frozenset({"terraform", "tofu"})
ROLES = ("owner", "manager", "task_runner", "guest")
CAN_RUN = frozenset({"owner", "manager", "task_runner"})  # §3
SESSION_IDLE_LIMIT = 7 * 24 * 3600.0  # §2.1, measured on trio's clock so tests can jump it
JSON = "application/json"

Playbook = Callable[["TaskRun"], Awaitable[int]]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Request:
    """One HTTP request as received, with the status it was answered with."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    json: Any
    status: int = 0


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str | None = JSON  # §0: even empty /api bodies say application/json
    headers: list[tuple[str, str]] = field(default_factory=list)


def _json(status: int, obj: Any) -> _Reply:
    return _Reply(status, json.dumps(obj).encode() + b"\n")  # Go's json.Encoder adds the newline


class _GoObject(list):
    """A JSON object as its (key, value) pairs, so duplicate keys decode in order, as in Go."""


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # Go rejects NaN and Infinity


def _go_int(text: str) -> int | None:
    """strconv.Atoi: optional sign and ASCII digits only (no spaces or underscores)."""
    return int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else None


def _decode(body: bytes, schema: dict[str, type]) -> dict[str, Any] | None:
    """`encoding/json` into a Go struct (§0): None means 400 with an empty body.

    A non-object or malformed body fails, `null` decodes to the zero struct, unknown keys are
    ignored, keys match field names case-insensitively, a JSON null leaves a field at its zero
    value, and a wrong type (a string for an int, a bool for an int, a float) fails.
    """
    try:
        value = json.loads(body.decode(), object_pairs_hook=_GoObject,
                           parse_constant=_reject_constant)
    except ValueError:
        return None
    if value is None:
        return {}
    if not isinstance(value, _GoObject):
        return None
    folded = {name.lower(): name for name in schema}
    fields: dict[str, Any] = {}
    for key, item in value:
        name = key if key in schema else folded.get(key.lower())
        if name is None or item is None:
            continue
        if type(item) is not schema[name]:
            return None
        fields[name] = item
    return fields


TASK_FIELDS = {  # db.Task fields a client can send (§5); times are not checked
    "id": int, "template_id": int, "project_id": int, "status": str, "debug": bool,
    "dry_run": bool, "diff": bool, "playbook": str, "environment": str, "limit": str,
    "secret": str, "arguments": str, "git_branch": str, "user_id": int, "integration_id": int,
    "schedule_id": int, "message": str, "commit_hash": str, "commit_message": str,
    "build_task_id": int, "version": str, "inventory_id": int,
}
STOP_FIELDS = {"force": bool}
LOGIN_FIELDS = {"auth": str, "password": str}


class TaskRun:
    """What a playbook sees of its task. `task` is the live row that GET returns."""

    def __init__(self, standin: SemaphoreStandin, task: dict[str, Any], template: _Template,
                 environment: dict[str, Any], secret: dict[str, Any], limit: str) -> None:
        self.task = task
        self.environment = environment
        self.secret = secret  # §5: merged into extra vars, never stored
        self.limit = limit  # the `--limit` the job really gets ("" for none; §8)
        self._standin = standin
        self._template = template
        self._scope = trio.CancelScope()
        self._killed = False
        self._lost = False  # the pool that ran it is gone (restart())

    def __repr__(self) -> str:
        return f"<TaskRun {self.task['id']} {self.task['status']}>"

    def log(self, line: str) -> None:
        """Append an output line, as the job's stdout would."""
        self._standin._log(self.task["id"], line)

    async def wait_confirmation(self) -> None:
        """Terraform's plan gate (§7): wait until POST .../confirm, then run on.

        A forced stop (or a reject) while waiting ends the job like a kill. A non-forced stop
        does too from 2.13; in 2.10 it leaves the task `stopping` for ever, holding its
        template (§8): nothing ever moves a task on from there.
        """
        standin = self._standin
        standin._set_status(self.task, "waiting_confirmation")
        while self.task["status"] != "confirmed":
            status = self.task["status"]
            if status in ("stopped", "rejected") or (status == "stopping" and standin.newer):
                self._kill()
                await trio.lowlevel.checkpoint()  # delivers the cancellation
            await standin._status_changed.wait()
        standin._set_status(self.task, "running")

    def _kill(self) -> None:
        self._killed = True
        self._scope.cancel()


@dataclass
class _User:
    id: int
    username: str
    password: str
    admin: bool
    created: str
    totp: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "created": self.created, "username": self.username,
                "name": self.username, "email": f"{self.username}@example.com",
                "admin": self.admin, "external": False, "alert": False,
                "can_create_project": self.admin}


@dataclass
class _Project:
    id: int
    name: str
    members: dict[int, str]  # user id -> role
    max_parallel_tasks: int
    created: str

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "created": self.created, "alert": False,
                "alert_chat": None, "max_parallel_tasks": self.max_parallel_tasks, "type": ""}


@dataclass
class _Template:
    id: int
    project_id: int
    name: str
    playbook: Playbook | None
    environment: dict[str, Any] | None
    environment_id: int | None
    app: str
    allow_override_args_in_task: bool
    survey_vars: list[dict[str, Any]]
    autorun: bool
    suppress_success_alerts: bool
    allow_override_limit: bool = False
    allow_any_vars_in_task: bool = False
    module_vars: frozenset[str] = frozenset()


class SemaphoreStandin:
    """The Semaphore API of §0–§7 over in-memory state; see the module docstring."""

    def __init__(self, *, tick: float = 5.0, users: dict[str, str] | None = None,
                 release: str = "2.10") -> None:
        if release not in RELEASES:
            raise ValueError(f"unknown release {release!r}; one of {RELEASES}")
        self.release = release
        self.newer = release != "2.10"  # 2.13 and later
        self.tick = tick
        self.tasks: dict[int, dict[str, Any]] = {}
        self.outputs: dict[int, list[dict[str, Any]]] = {}
        self.requests: list[Request] = []
        self._users: dict[int, _User] = {}
        self._projects: dict[int, _Project] = {}
        self._templates: dict[int, _Template] = {}
        self._tokens: dict[str, dict[str, Any]] = {}
        self._sessions: dict[str, tuple[int, float]] = {}  # cookie -> (user id, last used)
        self._unverified: set[str] = set()  # sessions of TOTP users, waiting for a code
        self._history: dict[int, list[str]] = {}
        self._ids: dict[str, int] = {}
        self._queue: list[TaskRun] = []  # TaskPool.Queue: waiting, in order
        self._active: dict[int, TaskRun] = {}  # TaskPool.RunningTasks: dequeued, not yet ended
        self._status_changed = trio.Event()
        for username, password in (users or {"admin": "changeme"}).items():
            self.add_user(username, password)

    def __repr__(self) -> str:
        return (f"<SemaphoreStandin {self.release} tasks={len(self.tasks)} "
                f"queued={len(self._queue)} active={len(self._active)}>")

    def _next_id(self, kind: str) -> int:
        self._ids[kind] = self._ids.get(kind, 0) + 1
        return self._ids[kind]

    # -- setting the scene ------------------------------------------------------------------

    def add_user(self, username: str, password: str, *, admin: bool = True,
                 totp: bool = False) -> int:
        """`totp`: the user has two-factor authentication on (2.13 and later)."""
        if totp and not self.newer:
            raise ValueError("Semaphore 2.10 has no TOTP")
        user = _User(self._next_id("user"), username, password, admin, _now(), totp)
        self._users[user.id] = user
        return user.id

    def add_project(self, name: str, *, members: dict[str, str] | None = None,
                    max_parallel_tasks: int = 0) -> int:
        """`members`: username -> role (owner, manager, task_runner, guest)."""
        roles = {}
        for username, role in (members or {}).items():
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r}")
            roles[self._user_named(username).id] = role
        project = _Project(self._next_id("project"), name, roles, max_parallel_tasks, _now())
        self._projects[project.id] = project
        return project.id

    def add_template(self, project_id: int, name: str, playbook: Playbook | None = None, *,
                     environment: dict[str, Any] | None = None, app: str = "ansible",
                     allow_override_args_in_task: bool = False,
                     survey_vars: list[dict[str, Any]] | None = None, autorun: bool = False,
                     suppress_success_alerts: bool = False, allow_override_limit: bool = False,
                     allow_any_vars_in_task: bool = False,
                     module_vars: tuple[str, ...] = ()) -> int:
        """`environment` None: the template has no environment (see §8 for what that breaks).
        `allow_override_limit` is `task_params.allow_override_limit` (2.13 and later),
        `allow_any_vars_in_task` the flag of PR #4108, `module_vars` the variables a Terraform
        module declares."""
        if project_id not in self._projects:
            raise KeyError(project_id)
        env_id = None if environment is None else self._next_id("environment")
        template = _Template(self._next_id("template"), project_id, name, playbook, environment,
                             env_id, app, allow_override_args_in_task, survey_vars or [],
                             autorun, suppress_success_alerts, allow_override_limit,
                             allow_any_vars_in_task, frozenset(module_vars))
        self._templates[template.id] = template
        return template.id

    def create_token(self, username: str) -> str:
        """An API token as POST /api/user/tokens makes it (§2.2)."""
        return self._new_token(self._user_named(username))["id"]

    def expire_sessions(self) -> None:
        """Invalidate every cookie session, so the next cookie request gets 401."""
        self._sessions.clear()

    def restart(self) -> None:
        """A Semaphore restart: the pool forgets its tasks, whose rows stay as they are (§7,
        issue #3287); sessions and tokens live in the store and survive."""
        for run in [*self._queue, *self._active.values()]:
            run._lost = True
            run._scope.cancel()
        self._queue.clear()
        self._active.clear()

    def task_statuses(self, task_id: int) -> list[str]:
        """Every status the task went through, in order."""
        return list(self._history[task_id])

    def stop_requests(self) -> list[tuple[int, Any]]:
        """(task id, parsed body) for each POST .../stop received."""
        found = []
        for request in self.requests:
            match = re.fullmatch(r"/api/project/[^/]+/tasks/([^/]+)/stop", request.path)
            if request.method == "POST" and match and _go_int(match[1]) is not None:
                found.append((int(match[1]), request.json))
        return found

    def _user_named(self, username: str) -> _User:
        for user in self._users.values():
            if user.username == username:
                return user
        raise KeyError(username)

    def _new_token(self, user: _User) -> dict[str, Any]:
        token_id = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().lower()
        token = {"id": token_id, "created": _now(), "expired": False, "user_id": user.id}
        self._tokens[token_id] = token
        return token

    # -- the task pool ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The task pool: each `tick` dequeues at most one waiting task (TaskPool.go:155-182)."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            deadline = trio.current_time()
            while True:
                deadline += self.tick  # a Go ticker: no drift, first tick one period in
                await trio.sleep_until(deadline)
                run = self._dequeue()
                if run is not None:
                    nursery.start_soon(self._run_job, run)

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """The pool plus hypercorn on 127.0.0.1, an ephemeral port; started() with the base URL."""
        from hypercorn.config import Config
        from hypercorn.trio import serve

        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.errorlog = logging.getLogger("tests.semaphore_standin")
        config.errorlog.setLevel(logging.WARNING)  # hides hypercorn's "Running on ..." line
        async with trio.open_nursery() as nursery:
            await nursery.start(self.run)
            binds = await nursery.start(partial(serve, self.app, config,
                                                shutdown_trigger=trio.sleep_forever))
            task_status.started(binds[0])

    def _dequeue(self) -> TaskRun | None:
        """Only the head of the queue is looked at; a blocked head goes to the back."""
        if not self._queue:
            return None
        run = self._queue.pop(0)
        if self._blocks(run):
            self._queue.append(run)
            return None
        self._active[run.task["id"]] = run
        return run

    def _blocks(self, run: TaskRun) -> bool:
        project_id = run.task["project_id"]
        active = [other for other in self._active.values()
                  if other.task["project_id"] == project_id]
        # A task that is still dequeued but already finished (e.g. force-stopped) no longer
        # holds its template (§7 "active" excludes finished statuses).
        if any(other.task["template_id"] == run.task["template_id"]
               and other.task["status"] not in FINISHED for other in active):
            return True
        limit = self._projects[project_id].max_parallel_tasks
        return limit > 0 and len(active) >= limit

    async def _run_job(self, run: TaskRun) -> None:
        task = run.task
        try:
            if task["status"] == "stopping":  # stopped while waiting: never runs (§7)
                self._set_status(task, "stopped")
                return
            code: int | None = None  # stays None if killed
            with run._scope:
                # A force-stopped waiting task still gets here and runs its job in v2.10;
                # "stopped" refuses these transitions, so its status stays stopped (§7).
                self._set_status(task, "starting")
                self._set_status(task, "running")
                code = await self._play(run)
            if run._lost:
                return
            # Killed with force:false is "stopping" → error (issue #2235); with force:true
            # "stopped" refuses the error and stays.
            self._set_status(task, "success" if code == 0 else "error")
        finally:
            if not run._lost:
                task["end"] = _now()
                self._active.pop(task["id"], None)

    @staticmethod
    async def _play(run: TaskRun) -> int:
        template = run._template
        if template.app in TERRAFORM_APPS:
            # Each variable is passed as `-var K=V` (§8), and Terraform stops at one its root
            # module does not declare.
            undeclared = [k for k in run.environment if k not in template.module_vars]
            if undeclared:
                run.log("Error: Value for undeclared variable")
                run.log(f'A variable named "{undeclared[0]}" was assigned on the command line, '
                        "but the root module does not declare a variable of that name.")
                return 1
        playbook = template.playbook
        if playbook is None:
            return 0
        try:
            return await playbook(run)
        except Exception as exc:  # a crashing job is a failed job, not a crashed pool
            run.log(f"Running playbook failed: {type(exc).__name__}: {exc}")
            return 1

    def _set_status(self, task: dict[str, Any], status: str) -> bool:
        """TaskRunner.SetStatus (§7): only `stopped` is final; `stopping` refuses waiting and
        running; `running` refuses waiting. Finished statuses can still be overwritten."""
        old = task["status"]
        if (status == old or old in ("stopped", "rejected")
                or (old == "stopping" and status in ("waiting", "running"))
                or (old == "running" and status == "waiting")):
            return False
        task["status"] = status
        if status == "running":
            task["start"] = _now()  # set again after a confirmation, as upstream does
        self._history[task["id"]].append(status)
        self._status_changed.set()
        self._status_changed = trio.Event()
        return True

    def _log(self, task_id: int, line: str) -> None:
        self.outputs.setdefault(task_id, []).append(
            {"task_id": task_id, "task": "", "time": _now(), "output": line})

    def _in_pool(self, task_id: int) -> TaskRun | None:
        return self._active.get(task_id) or next(
            (run for run in self._queue if run.task["id"] == task_id), None)

    def _details(self, task: dict[str, Any], template: _Template) -> tuple[dict, str | None]:
        """The environment step of preparing a task (§8): (merged environment, error).

        2.10 is `populateDetails` (services/tasks/TaskRunner.go:295-321): the task's variables
        need a template environment, and the template's keys win. Later releases
        (`populateTaskEnvironment`) take the task's variables without one; the template's keys
        win up to 2.15 and the task's from 2.16 (#3108)."""
        if task["environment"] == "":
            return dict(template.environment or {}), None
        if template.environment is None and not self.newer:
            return {}, "unexpected end of JSON input"  # it parses the template's "" JSON
        try:
            extra = json.loads(task["environment"])
        except ValueError:
            return {}, "invalid character in task environment"
        if not isinstance(extra, dict | None):
            return {}, "json: cannot unmarshal into Go value of type map[string]interface {}"
        if self.release in ("2.16", "pr4108"):
            return {**(template.environment or {}), **(extra or {})}, None  # task keys win
        return {**(extra or {}), **(template.environment or {})}, None  # template keys win

    # -- HTTP -------------------------------------------------------------------------------

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI 3 application."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {name.decode("latin-1").lower(): value.decode("latin-1")
                   for name, value in scope["headers"]}
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        request = Request(scope["method"], scope["path"], scope["query_string"].decode("latin-1"),
                          headers, body, parsed)
        self.requests.append(request)
        reply = self._dispatch(request)
        request.status = reply.status
        out = [(b"content-length", str(len(reply.body)).encode())]
        if reply.content_type is not None:
            out.append((b"content-type", reply.content_type.encode()))
        out += [(name.encode(), value.encode()) for name, value in reply.headers]
        await send({"type": "http.response.start", "status": reply.status, "headers": out})
        await send({"type": "http.response.body",
                    "body": b"" if request.method == "HEAD" else reply.body})

    def _dispatch(self, request: Request) -> _Reply:
        """gorilla/mux: the first route matching path and method wins; a path match with no
        method match is 405 (empty, no middleware, so no content-type); no match is 404."""
        path_matched = False
        for pattern, methods in ROUTES:
            if not self.newer and set(methods.values()) & NEWER_ONLY:
                continue  # a route 2.10 does not register
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            if request.method not in methods:
                path_matched = True
                continue
            return self._call(methods[request.method], match.groupdict(), request)
        if path_matched:
            return _Reply(405, content_type=None)
        return _Reply(404, b"Not Found\n", "text/plain; charset=utf-8")

    def _call(self, name: str, params: dict[str, str], request: Request) -> _Reply:
        handler = getattr(self, f"_h_{name}")
        if name in PUBLIC:
            return handler(request)
        user = self._authenticate(request.headers)
        if user is None:
            if _cookie(request.headers) in self._unverified:
                # Modelled, not read from the source: the body's exact shape is an assumption
                # (`{"error": ...}` as helpers.WriteErrorStatus writes it).
                return _json(401, {"error": "TOTP_REQUIRED"})
            return _Reply(401)
        if "pid" not in params:
            return handler(request, user)
        # ProjectMiddleware, then the task/template middleware, then the role check (§3).
        project_id = _go_int(params["pid"])
        if project_id is None:
            return _json(400, {"error": "Invalid project ID"})
        project = self._projects.get(project_id)
        role = project and project.members.get(user.id)
        if project is None or (role is None and not user.admin):
            return _Reply(404)
        target: Any = None
        if "id" in params:
            task_id = _go_int(params["id"])
            target = self.tasks.get(task_id) if task_id is not None else None
            if target is None or target["project_id"] != project.id:
                return _Reply(400)  # §6: not 404
        elif "tid" in params:
            template_id = _go_int(params["tid"])
            if template_id is None:
                return _Reply(400)
            target = self._templates.get(template_id)
            if target is None or target.project_id != project.id:
                return _Reply(404)
        if request.method not in ("GET", "HEAD") and not user.admin and role not in CAN_RUN:
            return _Reply(403)
        return handler(request, user, project, target)

    def _authenticate(self, headers: dict[str, str]) -> _User | None:
        """§2.2: a header containing "bearer" is a token, whatever else it holds; else a cookie."""
        authorization = headers.get("authorization", "").lower()
        if "bearer" in authorization:
            token = self._tokens.get(authorization.replace("bearer ", "", 1))
            if token is None or token["expired"]:
                return None
            return self._users.get(token["user_id"])
        session_id = _cookie(headers)
        if session_id not in self._sessions or session_id in self._unverified:
            return None
        user_id, last_used = self._sessions[session_id]
        if trio.current_time() - last_used > SESSION_IDLE_LIMIT:
            del self._sessions[session_id]
            return None
        self._sessions[session_id] = (user_id, trio.current_time())
        return self._users.get(user_id)

    # -- handlers: public -------------------------------------------------------------------

    def _h_ping(self, request: Request) -> _Reply:
        return _Reply(200, b"pong", "text/plain; charset=utf-8")

    def _h_login_options(self, request: Request) -> _Reply:
        return _json(200, {"oidc_providers": [], "login_with_password": True})

    def _h_login(self, request: Request) -> _Reply:
        fields = _decode(request.body, LOGIN_FIELDS)
        if fields is None:
            return _Reply(400)
        login = fields.get("auth", "").lower()  # login.go:275
        user = next((u for u in self._users.values()
                     if login in (u.username, u.as_json()["email"])), None)
        if user is None or user.password != fields.get("password", ""):
            return _Reply(401)
        session_id = secrets.token_urlsafe(48)
        self._sessions[session_id] = (user.id, trio.current_time())
        if user.totp:  # a session that needs a TOTP code first (§8, since about 2.12)
            self._unverified.add(session_id)
        return _Reply(204, headers=[("set-cookie", f"semaphore={session_id}; Path=/")])

    def _h_logout(self, request: Request) -> _Reply:
        self._sessions.pop(_cookie(request.headers), None)
        gone = (datetime.now(UTC) - timedelta(days=7)).strftime("%a, %d %b %Y %H:%M:%S GMT")
        return _Reply(204, headers=[("set-cookie", f"semaphore=; Path=/; Expires={gone}")])

    # -- handlers: user ---------------------------------------------------------------------

    def _h_info(self, request: Request, user: _User) -> _Reply:
        return _json(200, {"version": VERSIONS[self.release], "ansible": "ansible [core 2.16.6]",
                           "web_host": "", "use_remote_runner": False})

    def _h_user(self, request: Request, user: _User) -> _Reply:
        return _json(200, user.as_json())

    def _h_tokens(self, request: Request, user: _User) -> _Reply:
        return _json(200, [t for t in self._tokens.values() if t["user_id"] == user.id])

    def _h_new_token(self, request: Request, user: _User) -> _Reply:
        return _json(201, self._new_token(user))

    def _h_delete_token(self, request: Request, user: _User) -> _Reply:
        token_id = request.path.rsplit("/", 1)[1]
        token = self._tokens.get(token_id)
        if token is not None and token["user_id"] == user.id:
            token["expired"] = True
        return _Reply(204)  # unknown or foreign tokens too: no row count is checked (§2.2)

    def _h_projects(self, request: Request, user: _User) -> _Reply:
        mine = [p for p in self._projects.values() if user.admin or user.id in p.members]
        return _json(200, [p.as_json() for p in sorted(mine, key=lambda p: (p.name, p.id))])

    # -- handlers: project ------------------------------------------------------------------

    def _h_project(self, request, user, project, target) -> _Reply:
        return _json(200, project.as_json())

    def _template_json(self, template: _Template, *, listed: bool) -> dict[str, Any]:
        tasks = self._task_list(lambda t: t["template_id"] == template.id, None)[:1]
        extra: dict[str, Any] = {}
        if self.newer:  # the app's parameters (db/Template.go TaskParams, 2.13 and later)
            extra["task_params"] = {"allow_override_limit": template.allow_override_limit,
                                    "allow_override_inventory": False,
                                    "allow_override_tags": False,
                                    "allow_override_skip_tags": False}
        if self.release == "pr4108":
            extra["allow_any_vars_in_task"] = template.allow_any_vars_in_task
        return {**extra,
            "id": template.id, "project_id": template.project_id, "inventory_id": None,
            "repository_id": template.project_id, "environment_id": template.environment_id,
            "name": template.name, "playbook": f"{template.name}.yml", "arguments": None,
            "allow_override_args_in_task": template.allow_override_args_in_task,
            "description": None, "vaults": None if listed else [], "type": "",
            "start_version": None, "build_template_id": None, "view_id": None,
            "last_task": tasks[0] if tasks else None,
            # The list leaves these at their zero values (§4, sql/template.go:232-234).
            "autorun": False if listed else template.autorun, "git_branch": None,
            "survey_vars": None if listed else template.survey_vars,
            "suppress_success_alerts": False if listed else template.suppress_success_alerts,
            "app": template.app, "tasks": 0,
        }

    def _h_templates(self, request, user, project, target) -> _Reply:
        query = _query(request.query)
        key = {"playbook": lambda t: f"{t.name}.yml", "environment": lambda t: t.environment_id
               or 0, "inventory": lambda t: 0, "repository": lambda t: t.project_id}.get(
            query.get("sort", ""), lambda t: t.name)  # unknown sort: name (template.go:119-244)
        mine = [t for t in self._templates.values() if t.project_id == project.id]
        mine.sort(key=lambda t: (key(t), t.id), reverse=query.get("order") == "desc")
        return _json(200, [self._template_json(t, listed=True) for t in mine])

    def _h_template(self, request, user, project, template) -> _Reply:
        return _json(200, self._template_json(template, listed=False))

    def _h_template_tasks(self, request, user, project, template) -> _Reply:
        return _json(200, self._task_list(lambda t: t["template_id"] == template.id, request))

    def _h_resources(self, request, user, project, target) -> _Reply:
        return _json(200, [])  # inventories, environments, repositories, keys: not modelled

    def _task_list(self, keep: Callable[[dict], bool], request: Request | None) -> list[dict]:
        """TaskWithTpl rows, newest first: 1000, or for .../last `?limit=` up to 200 (§4, §6)."""
        limit = 1000
        if request is not None and request.path.endswith("/last"):
            limit = _go_int(_query(request.query).get("limit", "")) or 0
            limit = limit if 0 < limit <= 200 else 200
        rows = []
        for task in sorted(self.tasks.values(), key=lambda t: t["id"], reverse=True):
            if not keep(task):
                continue
            template = self._templates[task["template_id"]]
            user = self._users.get(task["user_id"])
            rows.append({**task, "tpl_playbook": f"{template.name}.yml",
                         "tpl_alias": template.name, "tpl_type": "", "tpl_app": template.app,
                         "user_name": user.username if user else None, "build_task": None})
            if len(rows) == limit:
                break
        return rows

    def _h_tasks(self, request, user, project, target) -> _Reply:
        return _json(200, self._task_list(lambda t: t["project_id"] == project.id, request))

    def _h_create_task(self, request, user, project, target) -> _Reply:
        fields = _decode(request.body, TASK_FIELDS)
        if fields is None:
            return _Reply(400)
        template = self._templates.get(fields.get("template_id", 0))
        if template is None or template.project_id != project.id:
            # 2.10: GetTemplate's ErrNotFound is not mapped (§5); later releases look the
            # template up first and answer 404 (§8).
            return _Reply(404 if self.newer else 500)
        if self.release == "pr4108" and not template.allow_any_vars_in_task:
            undeclared = self._undeclared(fields.get("environment", ""), template)
            if undeclared is not None:
                return _json(400, {"error": f"variable {undeclared} is not declared"})
        task_id = self._next_id("task")
        task = {
            "id": task_id, "template_id": template.id, "project_id": project.id,
            "status": "waiting", "debug": fields.get("debug", False),
            "dry_run": fields.get("dry_run", False), "diff": fields.get("diff", False),
            "playbook": fields.get("playbook", ""), "environment": fields.get("environment", ""),
            "limit": fields.get("limit", ""), "secret": "",
            "arguments": fields.get("arguments"), "git_branch": fields.get("git_branch"),
            "user_id": user.id, "integration_id": None, "schedule_id": None,
            "created": _now(), "start": None, "end": None, "message": fields.get("message", ""),
            "commit_hash": fields.get("commit_hash"), "commit_message": "",
            "build_task_id": fields.get("build_task_id"), "version": None,
            "inventory_id": fields.get("inventory_id"),
        }
        self.tasks[task_id] = task
        self._history[task_id] = ["waiting"]
        environment, error = self._details(task, template)
        if error is not None:  # the row exists already and is failed (TaskPool.go:355-370)
            self._log(task_id, f"Error: {error}")
            self._set_status(task, "error")
            return _Reply(500)
        try:
            secret = json.loads(fields.get("secret") or "{}")
        except ValueError:
            secret = {}
        # From 2.13 a task's limit is a parameter the template must allow (issues #3029,
        # #2820); without `allow_override_limit` it is dropped without a word (§8).
        limit = fields.get("limit", "")
        if self.newer and not template.allow_override_limit:
            limit = ""
        run = TaskRun(self, task, template, environment,
                      secret if isinstance(secret, dict) else {}, limit)
        self._queue.append(run)
        return _json(201, {**task, "secret": "{}"})  # only the POST answer says "{}" (§5)

    @staticmethod
    def _undeclared(environment: str, template: _Template) -> str | None:
        """The first task variable that is no survey variable of the template (PR #4108)."""
        try:
            values = json.loads(environment or "{}")
        except ValueError:
            return None  # the environment step reports it
        declared = {var.get("name") for var in template.survey_vars}
        return next((key for key in values if key not in declared), None) \
            if isinstance(values, dict) else None

    def _h_task(self, request, user, project, task) -> _Reply:
        return _json(200, task)

    def _h_output(self, request, user, project, task) -> _Reply:
        return _json(200, self.outputs.get(task["id"]) or None)  # Go's nil slice is null

    def _h_stop(self, request, user, project, task) -> _Reply:
        fields = _decode(request.body, STOP_FIELDS)
        if fields is None:
            return _Reply(400)  # the body is required, although the spec has none (§9)
        run = self._in_pool(task["id"])
        if run is None:
            # Not in the pool: populateDetails is redone (and can fail), then the status is
            # overwritten to stopped even if finished (§7).
            if self._details(task, self._templates[task["template_id"]])[1] is not None:
                return _Reply(400)
            self._set_status(task, "stopped")
            return _Reply(204)
        was_running = task["status"] == "running"
        self._set_status(task, "stopped" if fields.get("force", False) else "stopping")
        if was_running:
            run._kill()
        return _Reply(204)

    def _h_reject(self, request, user, project, task) -> _Reply:
        run = self._in_pool(task["id"])
        if run is None or task["status"] != "waiting_confirmation":
            return _Reply(400)
        self._set_status(task, "rejected")  # wait_confirmation() then ends the job
        return _Reply(204)

    def _h_confirm(self, request, user, project, task) -> _Reply:
        run = self._in_pool(task["id"])
        if run is None:
            return _Reply(400)  # "task is not active" → WriteError's default
        self._set_status(task, "confirmed")
        return _Reply(204)

    def _h_delete_task(self, request, user, project, task) -> _Reply:
        if not user.admin:
            return _Reply(401)
        if self._in_pool(task["id"]) is not None:
            return _Reply(400)  # queued or running: stop it first
        del self.tasks[task["id"]]
        self.outputs.pop(task["id"], None)
        return _Reply(204)


def _cookie(headers: dict[str, str]) -> str:
    """The first `semaphore` cookie's value, as Go's r.Cookie("semaphore")."""
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == "semaphore":
            return value
    return ""


def _query(query: str) -> dict[str, str]:
    pairs = (part.partition("=") for part in query.split("&") if part)
    return {name: value for name, _, value in pairs}


PUBLIC = frozenset({"ping", "login_options", "login", "logout"})
NEWER_ONLY = frozenset({"reject"})  # handlers of routes registered from 2.13 only
_P = "/api/project/(?P<pid>[^/]+)"
ROUTES = [(re.compile(pattern), methods) for pattern, methods in [
    ("/api/ping", {"GET": "ping", "HEAD": "ping"}),
    ("/api/info", {"GET": "info"}),
    ("/api/auth/login", {"GET": "login_options", "POST": "login"}),
    ("/api/auth/logout", {"POST": "logout"}),
    ("/api/user", {"GET": "user"}),
    ("/api/user/tokens", {"GET": "tokens", "POST": "new_token"}),
    ("/api/user/tokens/[^/]+", {"DELETE": "delete_token"}),
    ("/api/projects", {"GET": "projects"}),
    (_P, {"GET": "project"}),
    (_P + "/templates", {"GET": "templates"}),
    (_P + "/templates/(?P<tid>[^/]+)", {"GET": "template"}),
    (_P + "/templates/(?P<tid>[^/]+)/tasks", {"GET": "template_tasks"}),
    (_P + "/templates/(?P<tid>[^/]+)/tasks/last", {"GET": "template_tasks"}),
    (_P + "/(?:inventory|environment|repositories|keys)", {"GET": "resources"}),
    (_P + "/tasks", {"GET": "tasks", "POST": "create_task"}),
    (_P + "/tasks/last", {"GET": "tasks"}),  # before {id}, as registered upstream
    (_P + "/tasks/(?P<id>[^/]+)", {"GET": "task", "DELETE": "delete_task"}),
    (_P + "/tasks/(?P<id>[^/]+)/output", {"GET": "output"}),
    (_P + "/tasks/(?P<id>[^/]+)/stop", {"POST": "stop"}),
    (_P + "/tasks/(?P<id>[^/]+)/confirm", {"POST": "confirm"}),
    (_P + "/tasks/(?P<id>[^/]+)/reject", {"POST": "reject"}),  # 2.13 and later
]]
