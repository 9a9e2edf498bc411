"""Launcher configuration, the services Hestia talks to (Semaphore, webhooks), API keys, and the
building blocks every configuration model uses.

Split from `config.py` (which re-exports everything here) to keep both modules readable: the
models here say how a backend is started and stopped and what Hestia connects to; `config.py`
says what a service is.
"""

from __future__ import annotations

import re
import shlex
import signal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

__all__ = [
    "AuthConfig",
    "CommandLauncherConfig",
    "ContainerLauncherConfig",
    "Duration",
    "ExternalLauncherConfig",
    "LauncherConfig",
    "NotifyConfig",
    "ProcessLauncherConfig",
    "SemaphoreConfig",
    "SemaphoreLauncherConfig",
    "Upstream",
    "WolLauncherConfig",
    "parse_duration",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """`250ms`, `30s`, `5m`, `1h`, `7d`, or a number of seconds → seconds (float, never
    negative)."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 250ms, 30s, 5m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(
            f"invalid duration {value!r}: use a number of seconds or 250ms, 30s, 5m, 1h, 7d")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_upstream(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("upstream must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ValueError("upstream cannot have a query or fragment")
    try:
        parts.port  # noqa: B018 - raises on an out-of-range port
    except ValueError as exc:
        raise ValueError(f"invalid port: {exc}") from None
    return value.rstrip("/")


Upstream = Annotated[str, AfterValidator(_check_upstream)]


class ProcessLauncherConfig(_Model):
    """Start the backend as a local child process in its own process group.

    Its stdout and stderr go to `<data_dir>/logs/<service>.log`. The environment is Hestia's own,
    plus `env`, plus `HESTIA_SERVICE`, `HESTIA_BACKEND`, `HESTIA_MACHINE`, `HESTIA_UPSTREAM`,
    `HESTIA_PORT` (the upstream's port, so a program can bind where Hestia will look for it) and
    `HESTIA_ACTION=start`.
    """

    command: list[str] = Field(min_length=1)
    """The program and its arguments; a string is split like a shell would (no shell runs)."""
    cwd: Path | None = None
    """Working directory (default: Hestia's); `~` is expanded."""
    env: dict[str, str] = {}
    stop_signal: str = "SIGTERM"
    """Sent to the whole process group to stop it."""
    stop_timeout: Duration = 10.0
    """After this long, the process group gets SIGKILL (default 10s)."""

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value

    @field_validator("cwd")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("stop_signal")
    @classmethod
    def _signal(cls, value: str) -> str:
        name = value.upper() if value.upper().startswith("SIG") else "SIG" + value.upper()
        if not isinstance(getattr(signal, name, None), signal.Signals):
            raise ValueError(f"unknown signal {value!r}")
        return name

    @property
    def signal(self) -> signal.Signals:
        return signal.Signals[self.stop_signal]


class CommandLauncherConfig(_Model):
    """Start and stop through shell commands (`/bin/sh -c`), e.g. `ssh gpu-box systemctl start
    ollama`. A start command that exits 0 means "started, now probe readiness"; one that keeps
    running is supervised like a process (its exit while ready is a crash); one that exits with
    another status fails the start. Output goes to the backend's log file. The environment gets
    `HESTIA_SERVICE`, `HESTIA_BACKEND`, `HESTIA_MACHINE`, `HESTIA_UPSTREAM`, `HESTIA_PORT` and
    `HESTIA_ACTION` (`start` or `stop`)."""

    start: str = Field(min_length=1)
    stop: str | None = None
    """Run on stop (after the start command's process group, if still running, is stopped)."""
    cwd: Path | None = None
    env: dict[str, str] = {}
    stop_timeout: Duration = 10.0
    """How long the stop command may take, and how long a running start command gets after
    SIGTERM before SIGKILL (default 10s)."""

    @field_validator("cwd")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None


class ContainerLauncherConfig(_Model):
    """A container through the podman or docker command line.

    With `image`: `RUNTIME run --rm --name NAME [run_args] IMAGE [args]`, kept in the
    foreground and supervised like a process; stopped with `RUNTIME stop -t SECONDS NAME`.
    Without `image`: the existing container NAME is started with `RUNTIME start NAME` and
    stopped with `RUNTIME stop -t SECONDS NAME`."""

    runtime: Literal["podman", "docker"] = "podman"
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    image: str | None = None
    args: list[str] = []
    """Arguments after the image (the container's command)."""
    run_args: list[str] = []
    """Options for `run` before the image, e.g. `["-p", "127.0.0.1:11434:11434"]`."""
    stop_timeout: Duration = 10.0


class WolLauncherConfig(_Model):
    """Wake a machine with a Wake-on-LAN magic packet, then probe readiness. Optionally stop
    with a shell command (e.g. `ssh gpu-box poweroff`)."""

    mac: str = Field(pattern=r"^[0-9A-Fa-f]{2}([:-]?[0-9A-Fa-f]{2}){5}$")
    broadcast: str = "255.255.255.255"
    port: int = Field(default=9, ge=1, le=65535)
    stop: str | None = None
    stop_timeout: Duration = 30.0


class ExternalLauncherConfig(_Model):
    """Never started or stopped by Hestia: the backend is only probed. When it is not ready,
    requests are answered 503 as soon as one probe fails (no waiting)."""


def _template_ref(value: Any) -> Any:
    # An environment override arrives as a string: "7" means template 7, as it would in YAML.
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


TemplateRef = Annotated[int | str, BeforeValidator(_template_ref)]


class SemaphoreLauncherConfig(_Model):
    """Start and stop through Ansible Semaphore task templates (see docs/semaphore.md).

    A start runs `start_template` and waits for the task to succeed; then the supervisor probes
    the upstream's readiness. A stop runs `stop_template` (if given) and waits for it. The task's
    `environment` is a JSON object with `HESTIA_SERVICE`, `HESTIA_BACKEND`, `HESTIA_MACHINE`,
    `HESTIA_UPSTREAM`, `HESTIA_PORT`, `HESTIA_ACTION` (and `HESTIA_LIMIT` with `limit`) plus
    `environment` below; `send_variables` narrows that."""

    start_template: TemplateRef
    """Template id (a number) or name; a name is looked up in the project's templates at start
    and must match exactly one."""
    stop_template: TemplateRef | None = None
    """Run on stop (idle, API, shutdown), and after a start task failed, timed out or was
    cancelled, so that a half-done start is cleaned up. Without it a stop does nothing remote."""
    project: int | None = Field(default=None, ge=1)
    """The Semaphore project (default `semaphore.project`)."""
    environment: dict[str, str | int | float | bool] = {}
    """Extra variables for the playbook (Ansible extra vars), next to the `HESTIA_*` ones."""
    limit: str | None = None
    """Ansible `--limit` for the tasks, also passed as `HESTIA_LIMIT`. From Semaphore 2.13 a
    template drops a task's limit unless its "Allow override limit" setting is on: Hestia then
    refuses to run it (at start and in `hestia check`) rather than run on every host."""
    arguments: list[str] | None = None
    """Extra CLI arguments; Semaphore uses them only when the template allows overriding."""
    git_branch: str | None = None
    """The repository branch for the task; Semaphore ignores it before 2.10.31."""
    send_variables: Literal["all", "configured", "none"] = "all"
    """Which variables the tasks get: `all` (the `HESTIA_*` ones and `environment`),
    `configured` (only `environment`) or `none`. A Terraform/OpenTofu template passes each as
    `-var`, which fails for a variable the module does not declare: declare the `HESTIA_*`
    variables in the module, or send fewer."""
    message: str | None = None
    """Shown in Semaphore's UI (default: `hestia: start <service> on <machine>`)."""
    confirm: bool = False
    """Confirm a task that waits for confirmation (a Terraform plan); otherwise such a task
    fails the start with a clear message."""
    task_timeout: Duration | None = Field(default=None, gt=0)
    """How long one task may take (default `semaphore.task_timeout`)."""


class LauncherConfig(_Model):
    """How the backend is started and stopped: exactly one key."""

    process: ProcessLauncherConfig | None = None
    command: CommandLauncherConfig | None = None
    container: ContainerLauncherConfig | None = None
    wol: WolLauncherConfig | None = None
    external: ExternalLauncherConfig | None = None
    semaphore: SemaphoreLauncherConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> LauncherConfig:
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            names = ", ".join(type(self).model_fields)
            raise ValueError(f"give exactly one launcher: {names}")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)


class NotifyConfig(_Model):
    """A webhook: lifecycle events (see `GET /v1/events`) are POSTed to `url` as JSON."""

    url: Upstream
    events: list[str] = []
    """Event kinds to send (`ready`, `start_failed`, `crashed`, …); empty: all of them."""
    services: list[str] = []
    """Services whose events are sent; empty: all of them."""
    timeout: Duration = Field(default=5.0, gt=0)
    """Bound on one delivery attempt."""
    attempts: int = Field(default=3, ge=1, le=10)
    """Tries per event, 1s then 2s, 4s … apart; after the last the event is dropped (logged)."""


class AuthConfig(_Model):
    """API keys (see docs/configuration.md#api-keys); keys are made with `hestia keys`."""

    enabled: bool = False
    """When on, every route needs a key with the right scope (or a browser session made with
    one), but `/__health`, the login page's paths and services with `auth: none`."""
    forward_authorization: bool = False
    """Pass the header that carried the key on to the upstream (off: it is removed)."""
    session_ttl: Duration = Field(default=7 * 86400.0, gt=0)
    """How long a browser stays logged in after pasting a key on the login page (default 7
    days, 604800 seconds; `168h` says the same), counted from the login, not from the last
    use. A session ends sooner at logout, or within seconds when its key is revoked."""


class SemaphoreConfig(_Model):
    """Where Ansible Semaphore is and how to log in (see docs/semaphore.md). `url`, `token`,
    `username` and `password` default to `SEMAPHORE_BASE_URL`, `SEMAPHORE_API_TOKEN`,
    `SEMAPHORE_USERNAME` and `SEMAPHORE_PASSWORD` from the environment."""

    url: Upstream
    """Semaphore's base URL, e.g. `http://semaphore:3000` (a trailing `/api` is accepted)."""
    token: SecretStr | None = None
    """An API token (Bearer). Takes precedence over `username`/`password`."""
    username: str | None = None
    password: SecretStr | None = None
    """With `username`: log in once, and again whenever the session is refused (401)."""
    project: int | None = Field(default=None, ge=1)
    """The default project of every `semaphore` launcher."""
    poll_interval: Duration = Field(default=1.0, gt=0)
    """How often a running task's status is asked for (default 1s)."""
    task_timeout: Duration = Field(default=1800.0, gt=0)
    """How long a task may take before Hestia asks Semaphore to stop it and gives up (default
    30m; Semaphore itself never times out a task that lost its runner)."""
    request_timeout: Duration = Field(default=10.0, gt=0)
    """Bound on each HTTP request to Semaphore (default 10s)."""
    output_timeout: Duration = Field(default=60.0, gt=0)
    """Bound on fetching a finished task's output (default 60s): Semaphore sends a task's whole
    log, which can be large; Hestia keeps its last lines."""
    verify_tls: bool = True

    @model_validator(mode="after")
    def _credentials(self) -> SemaphoreConfig:
        if self.token is None and (self.username is None or self.password is None):
            raise ValueError("give token (or SEMAPHORE_API_TOKEN), or username and password "
                             "(or SEMAPHORE_USERNAME and SEMAPHORE_PASSWORD)")
        return self
