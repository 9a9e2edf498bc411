"""Configuration: frozen, strict pydantic models loaded from YAML.

Loading runs in this order, and every step reports *all* its problems with their paths:

1. The file is read as UTF-8 and parsed as YAML. These stop at their one error: a byte that
   is not UTF-8 (its offset), a syntax error (line and column), a key given twice in one
   mapping (both lines).
2. `${VAR}` and `${VAR:-default}` are interpolated in every string value (never in keys).
3. `<SERVICE>_<FIELD>` environment variables override fields of services the file declares
   (`OLLAMA_IDLE_TIMEOUT=10m`, `OLLAMA_QUEUE_MAX=5`); they never invent a service.
4. The models validate the result (`extra="forbid"`, so a typo such as `idel_timeout` is an
   error naming its path, the valid keys and the closest one), and, in the same run, what
   refers across models (ids, machines, groups, Semaphore; `config_data.reference_errors`)
   and, for `hestia check`, every routing strategy.

The steps on the data live in config_data.py.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .config_data import (
    BACKEND_SEPARATOR,
    SERVICE_ID,
    SERVICE_ONLY,
    backend_path,
    expand_backends,
    format_loc,
    interpolate,
    machine_launchers,
    read_yaml,
    reference_errors,
    semaphore_env,
    submodel,
    unknown_key,
    upstream_warnings,
)
from .errors import ConfigError
from .launch_config import (
    AuthConfig,
    CommandLauncherConfig,
    ContainerLauncherConfig,
    Duration,
    ExternalLauncherConfig,
    LauncherConfig,
    NotifyConfig,
    ProcessLauncherConfig,
    SemaphoreConfig,
    SemaphoreLauncherConfig,
    Upstream,
    WolLauncherConfig,
    _Model,
    parse_duration,
)

__all__ = [
    "ActivityConfig",
    "ActivityIgnoreConfig",
    "AuthConfig",
    "CommandLauncherConfig",
    "Config",
    "ContainerLauncherConfig",
    "ExternalLauncherConfig",
    "GroupConfig",
    "HealthConfig",
    "LauncherConfig",
    "LimitsConfig",
    "MachineConfig",
    "NotifyConfig",
    "PlacementConfig",
    "ProcessLauncherConfig",
    "QueueConfig",
    "ReadinessConfig",
    "RouteConfig",
    "SemaphoreConfig",
    "SemaphoreLauncherConfig",
    "ServiceConfig",
    "StartupConfig",
    "StrategyCheck",
    "StrategyConfig",
    "TimeoutsConfig",
    "WolLauncherConfig",
    "load_config",
    "parse_config",
    "parse_duration",
    "read_config",
    "upstream_warnings",
]

_SERVICE_ID = SERVICE_ID
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
                        r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_backend_path = backend_path
_submodel = submodel


class ReadinessConfig(_Model):
    """How Hestia knows a started backend serves. Give at most one of `http`, `tcp`, `delay`;
    with none, a TCP connect to the upstream is the probe.

    Probing is adaptive: the first probe runs a few milliseconds after the start and the interval
    grows to `interval`, so readiness is seen within `interval` of the upstream being ready.
    """

    http: str | None = None
    """GET this path on the upstream; any 2xx or 3xx answer means ready."""
    tcp: bool | None = None
    """Ready once the upstream accepts a TCP connection."""
    delay: Duration | None = None
    """Ready after this fixed delay (for programs that cannot be probed)."""
    timeout: Duration = Field(default=60.0, gt=0)
    """The start fails when the backend is not ready after this long (default 60s)."""
    interval: Duration = Field(default=0.01, gt=0)
    """The longest gap between two probes (default 10ms): the most a start's readiness can go
    unnoticed. Raise it for upstreams that should not be polled this often."""

    @model_validator(mode="after")
    def _at_most_one(self) -> ReadinessConfig:
        given = [k for k in ("http", "delay") if getattr(self, k) is not None]
        if self.tcp:
            given.append("tcp")
        if len(given) > 1:
            raise ValueError(f"give at most one of http, tcp, delay (got {', '.join(given)})")
        return self

    @field_validator("http")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("http must be a path starting with /")
        return value

    @property
    def kind(self) -> Literal["http", "tcp", "delay"]:
        if self.http is not None:
            return "http"
        if self.delay is not None:
            return "delay"
        return "tcp"

    def describe(self) -> str:
        return {"http": f"http GET {self.http}", "tcp": "tcp connect",
                "delay": f"delay {self.delay}s"}[self.kind]


class QueueConfig(_Model):
    """The hold queue: requests that wait while the backend starts (or stops and restarts)."""

    max: int = Field(default=100, ge=1)
    """At most this many requests wait; more are answered 503 at once (default 100)."""
    timeout: Duration = Field(default=60.0, gt=0)
    """A request waits at most this long, then gets 503 (default 60s)."""


class TimeoutsConfig(_Model):
    """Deadlines of one proxied exchange; each one passed gives 504. 0 means no deadline."""

    connect: Duration = 5.0
    """Connecting to the upstream (default 5s)."""
    first_byte: Duration = 300.0
    """From the request sent to the response head received (default 5m: models load slowly)."""
    total: Duration = 0.0
    """The whole exchange including a streamed body (default 0: none, streams may be long)."""


class StartupConfig(_Model):
    """How hard a start is tried. Attempt `n` (n ≥ 2) waits `delay × backoff^(n-2)`, at most
    `max_delay`, after the previous one failed. When every attempt failed, the backend is
    FAILED for `cooldown`: requests meanwhile get 503 at once, with the attempts listed; then it
    is COLD again and the next request tries afresh (a start through the API tries at once)."""

    attempts: int = Field(default=1, ge=1, le=100)
    """Attempts per start (default 1)."""
    delay: Duration = 1.0
    """Wait before the second attempt (default 1s)."""
    backoff: float = Field(default=2.0, ge=1.0)
    """Each further wait is this many times the previous one (default 2)."""
    max_delay: Duration = 30.0
    """The longest wait between two attempts (default 30s)."""
    cooldown: Duration = 5.0
    """How long a backend whose start failed stays FAILED (default 5s; 0: COLD at once)."""


class ActivityIgnoreConfig(_Model):
    paths: list[str] = []
    """Request paths (below the service, e.g. `/health`; a trailing `*` matches a prefix)."""
    user_agents: list[str] = []
    """Substrings of `User-Agent` (case-insensitive), e.g. `UptimeRobot`, `kube-probe`."""


class LimitsConfig(_Model):
    """Bounds on what one client may send through the proxy. Sizes take `64KiB`, `100MiB`,
    `1GB` or a number of bytes; 0 means no limit."""

    max_header_size: ByteSize = ByteSize(64 * 1024)
    """Request line plus headers (default 64KiB); beyond it: 431."""
    max_body_size: ByteSize = ByteSize(100 * 1024 * 1024)
    """Request body (default 100MiB, room for images in model requests); beyond it: 413,
    before the backend is woken when the request announces its length."""
    max_message_size: ByteSize = Field(default=ByteSize(16 * 1024 * 1024), ge=1)
    """One WebSocket message, either way (default 16MiB)."""


class ActivityConfig(_Model):
    """Which requests do not count as use: they never wake a cold backend (503 with
    `Retry-After` and `"state": "sleeping"`) and never reset its idle timer."""

    ignore: ActivityIgnoreConfig = ActivityIgnoreConfig()
    websockets: Literal["activity", "ignore"] = "activity"
    """`ignore`: an open WebSocket does not keep the backend awake (it is closed with 1001
    when the backend stops). A WebSocket still wakes a sleeping backend when it connects."""


class HealthConfig(_Model):
    """A periodic probe while READY (the readiness probe, again); `failures` failed probes in a
    row count as a crash: the backend is stopped and goes COLD (keep_warm restarts it)."""

    interval: Duration = Field(default=30.0, gt=0)
    failures: int = Field(default=3, ge=1)




class _HasUpstream(_Model):
    upstream: Upstream
    """Base URL of the running service, `http://host:port` (https works too). When it is on
    this machine, a `process` or `container` (with `image`) start first checks that nothing
    else listens on its port (`port_in_use`)."""

    @property
    def upstream_host(self) -> str:
        return urlsplit(self.upstream).hostname or ""

    @property
    def upstream_port(self) -> int:
        parts = urlsplit(self.upstream)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def upstream_prefix(self) -> str:
        """The upstream URL's own path (e.g. `/api`), prepended to every forwarded path."""
        return urlsplit(self.upstream).path.rstrip("/")


class PlacementConfig(_HasUpstream):
    """A fallback: where else the backend can run, tried when the placements before it failed
    to start. `readiness` defaults to the service's."""

    machine: str
    launcher: LauncherConfig
    readiness: ReadinessConfig | None = None


class MachineConfig(_Model):
    """A machine backends run on. `local` (this one) always exists, and is only skipped after
    failures when it is declared here."""

    semaphore: SemaphoreLauncherConfig | None = None
    """Start and stop services on this machine through Semaphore: a service or fallback on this
    machine with no `launcher` of its own uses this one (its tasks get `HESTIA_SERVICE`)."""

    max_failures: int = Field(default=3, ge=1)
    """After this many failed start attempts in a row on it, the machine is skipped..."""
    skip_for: Duration = 300.0
    """... for this long (default 5m); a success resets the count."""


class GroupConfig(_Model):
    """An exclusive group: at most `max_running` of its members run at once (one GPU, several
    models). Starting one more stops the least recently used idle member first."""

    max_running: int = Field(default=1, ge=1)


class StrategyConfig(_Model):
    """How a service with several `backends` picks one per request: `name`, the two keys
    below, and that strategy's own options (docs/strategies.md), every other key.

    The options are validated in a second step, against the named strategy's options model
    (`Strategy.Options`), when the strategy is made: at start, before anything is served, and
    by `hestia check` with the other errors (`routing.router.strategy_errors`). Not here,
    because a plugin's strategies are known only once `strategies_dir` is loaded. An unknown or
    ill-typed option is then an error at its path (`services.<id>.strategy.<option>`)."""

    model_config = ConfigDict(frozen=True, extra="allow")  # the options: checked as above

    name: str = "round_robin"
    """A built-in strategy or one a plugin registers (default `round_robin`)."""
    max_body: ByteSize = ByteSize(1024 * 1024)
    """A strategy that reads the JSON body (`by_model`) buffers at most this much (default
    1MiB; a larger body is 413); the buffered bytes are then forwarded unchanged."""
    unhealthy_for: Duration = Field(default=10.0, gt=0)
    """A backend whose upstream refused a connection or answered 5xx is skipped this long,
    unless a probe finds it ready again sooner."""

    @property
    def options(self) -> dict[str, Any]:
        """The strategy's own options, as written: every key not declared above."""
        return dict(self.model_extra or {})


class RouteConfig(_Model):
    """Computed at load (never written): a service's backends (ids in `services`) in order."""

    backends: list[str]
    strategy: StrategyConfig = StrategyConfig()


class ServiceConfig(_HasUpstream):
    """One backend: a whole service, or (`<service>@<backend>`) one of a service's `backends`."""

    launcher: LauncherConfig
    machine: str = "local"
    """The machine of the primary placement (`upstream` + `launcher`)."""
    fallbacks: list[PlacementConfig] = []
    """Placements tried in order when the primary failed every attempt."""
    group: str | None = None
    """The exclusive group this backend belongs to (declared under `groups`)."""
    readiness: ReadinessConfig = ReadinessConfig()
    idle_timeout: Duration = 300.0
    """Stop after this long without a request in flight (default 5m; 0 never idle-stops)."""
    keep_warm: bool = False
    """Start at boot, never stop for idleness (whatever `idle_timeout` says), and start again
    after a crash or a failed start (with the `startup` backoff after repeated failures)."""
    max_connections: int = Field(default=32, ge=0)
    """Requests in flight to this backend at once (default 32; 0: no cap); the others wait in
    the hold queue, in order, within `queue.timeout`. An open WebSocket counts only until its
    handshake is done; requests matched by `activity.ignore` never count."""
    queue: QueueConfig = QueueConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    startup: StartupConfig = StartupConfig()
    activity: ActivityConfig = ActivityConfig()
    limits: LimitsConfig = LimitsConfig()
    health: HealthConfig | None = None
    """Off unless given."""
    auth: Literal["required", "none"] = "required"
    """With `auth.enabled`: `none` lets anyone use this service without a key."""
    weight: int = Field(default=1, ge=1)
    """With several backends: this one's share under the `weighted` strategy."""
    on_restart: Literal["stop", "adopt"] = "stop"
    """What to do at start with a backend process a previous Hestia launched and left behind
    (it was killed): stop it (default), or adopt it when it still passes its readiness probe."""
    hosts: list[str] = []
    """Host names that reach this service with the path unchanged, besides
    `<id>.<service_domain>` (matched case-insensitively, port ignored)."""

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        names = [h.strip().strip(".").lower() for h in value]
        bad = [h for h in names if not _HOST_NAME.match(h)]
        if bad:
            raise ValueError(f"not a host name: {', '.join(map(repr, bad))} (no scheme, port "
                             "or path: e.g. notebook.example.net)")
        return names

    preserve_host: bool = False
    """Send the client's `Host` upstream instead of the upstream's own (for apps that check
    it against `Origin`)."""
    rewrite_cookie_path: bool = False
    """On path routes, give each `Set-Cookie` with `Path=/…` the `/services/<id>` prefix."""
    waiting_page: bool = True
    """A browser navigation to this service while it is not READY gets an HTML page that
    follows the start and reloads into the app (other requests are held as always)."""
    shared_upstream: bool = False
    """This service's upstream address (host and port) is another service's too, on purpose
    (several services in front of one server): without it on each of them, `hestia check`
    and the gateway warn. Only one of them can launch the server there."""


class Config(_Model):
    """The whole configuration."""

    listen: str = "127.0.0.1:8080"
    """`host:port` to serve on (default loopback only). `[::1]:8080` for IPv6."""
    data_dir: Path = Field(default=Path("~/.local/share/hestia"), validate_default=True)
    """Where backend logs (`logs/`) and process records (`run/`) live; `~` is expanded."""
    grace_period: Duration = 10.0
    """In-flight requests get this long to finish when the gateway shuts down, and when a
    service is stopped through the API (default 10s)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    auth: AuthConfig = AuthConfig()
    semaphore: SemaphoreConfig | None = None
    """Needed by `semaphore` launchers."""
    notify: list[NotifyConfig] = []
    """Webhooks for lifecycle events."""
    machines: dict[str, MachineConfig] = {}
    """Machines placements can name; `local` needs no entry."""
    groups: dict[str, GroupConfig] = {}
    services: dict[str, ServiceConfig] = {}
    """Each backend by its id: a service's own id, or `<service>@<backend>` for one of its
    `backends` (expanded at load; `routes` says which belong to which service)."""
    routes: dict[str, RouteConfig] = {}
    """Computed at load from `services`: never write it."""
    allowed_hosts: list[str] = []
    """Host names the gateway answers to besides addresses, `localhost` and its names,
    `service_domain` and `hosts` (exact, or `*.example.net` for every name under it); a request
    naming any other host is refused (DNS rebinding)."""
    service_domain: str | None = None
    """Serve each service at `<id>.<service_domain>` too, with its path unchanged (`localhost`
    needs no DNS: browsers resolve `*.localhost` to loopback)."""
    strategies_dir: Path = Path("strategies")
    """Where routing strategy plugins are loaded from (`*.py`; relative to the working
    directory; a missing directory loads nothing)."""

    def semaphore_launchers(self) -> list[tuple[str, SemaphoreLauncherConfig]]:
        """Every `semaphore` launcher with its path, machines first (a service that inherits
        its machine's launcher is listed too)."""
        found = [(f"machines.{mid}.semaphore", m.semaphore)
                 for mid, m in self.machines.items() if m.semaphore is not None]
        for sid, service in self.services.items():
            placements = [("launcher", service.launcher)] + [
                (f"fallbacks[{i}].launcher", f.launcher) for i, f in enumerate(service.fallbacks)]
            found += [(_backend_path(f"services.{sid}.{where}.semaphore"), launcher.semaphore)
                      for where, launcher in placements if launcher.semaphore is not None]
        return found

    def project_of(self, launcher: SemaphoreLauncherConfig) -> int:
        project = launcher.project or (self.semaphore.project if self.semaphore else None)
        assert project is not None  # checked at load (config_checks.reference_errors)
        return project

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _unique_hosts(self) -> Config:
        owner: dict[str, str] = {}
        for sid, service in self.services.items():
            service_id = sid.split(BACKEND_SEPARATOR, 1)[0]
            for host in service.hosts:
                if owner.setdefault(host, service_id) != service_id:
                    raise ValueError(f"services.{service_id}.hosts: {host!r} is already a host "
                                     f"of {owner[host]!r}")
        return self

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, value: list[str]) -> list[str]:
        names = [h.strip().rstrip(".").lower() for h in value]
        bad = [h for h in names if not _HOST_NAME.match(h.removeprefix("*."))]
        if bad:
            raise ValueError(f"not a host name: {', '.join(map(repr, bad))} (a name such as "
                             "gpu-box.lan, or *.example.net for every name under it)")
        return names

    @field_validator("service_domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().strip(".").lower()
        if not _HOST_NAME.match(value):
            raise ValueError("service_domain must be a host name such as localhost or "
                             "apps.example.net")
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("listen must be host:port, e.g. 127.0.0.1:8080")
        return value


# --- loading --------------------------------------------------------------------------------

def _env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """Apply `<SERVICE>_<FIELD>` variables to the services `raw` declares, in place."""
    services = raw.get("services")
    if not isinstance(services, dict):
        return
    # Longest ids first, so that `my_app_` wins over `my_` for MY_APP_IDLE_TIMEOUT.
    prefixes = sorted(((re.sub(r"[^A-Za-z0-9]", "_", sid).upper() + "_", sid)
                       for sid in services), key=lambda p: -len(p[0]))
    for name, value in sorted(env.items()):
        for prefix, sid in prefixes:
            if not name.startswith(prefix) or not isinstance(services[sid], dict):
                continue
            keys = _field_path(ServiceConfig, name[len(prefix):].lower())
            if keys is None:
                break
            node = services[sid]
            for key in keys[:-1]:
                child = node.get(key)
                if not isinstance(child, dict):
                    child = node[key] = {}
                node = child
            # The string as given: the models coerce it ("5", "true", "10m") by the field's type.
            node[keys[-1]] = value
            break


def _field_path(model: type[BaseModel], rest: str) -> list[str] | None:
    """Match `queue_max` against the model's fields: `['queue', 'max']`, or None."""
    for field_name in sorted(model.model_fields, key=len, reverse=True):
        if rest == field_name:
            return [field_name]
        if rest.startswith(field_name + "_"):
            annotation = model.model_fields[field_name].annotation
            sub = _submodel(annotation)
            if sub is not None:
                tail = _field_path(sub, rest[len(field_name) + 1:])
                if tail is not None:
                    return [field_name, *tail]
    return None


StrategyCheck = Callable[[Path, Mapping[str, RouteConfig]], list[tuple[str, str]]]
"""Makes each route's strategy from the plugins in a `strategies_dir`; returns the errors."""


def parse_config(raw: Any, *, env: Mapping[str, str] | None = None,
                 source: str = "configuration",
                 check_strategies: StrategyCheck | None = None) -> Config:
    """Validate already-parsed YAML data. Raises `ConfigError` listing every problem: those
    of each model, the references between them (`config_checks.reference_errors`) and, with
    `check_strategies` (`hestia check`), each route's strategy, whether or not the rest is
    valid."""
    env = os.environ if env is None else env
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([("", "the configuration must be a mapping")], source)
    errors: list[tuple[str, str]] = []
    data = semaphore_env(raw, env)
    data = interpolate(data, env, "", errors)
    _env_overrides(data, env)
    expand_backends(data, errors)
    machine_launchers(data)
    errors += reference_errors(data)
    if check_strategies is not None:
        errors += _strategy_errors(data, check_strategies)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        errors += [_model_error(err) for err in exc.errors()]
        raise ConfigError(errors, source) from None
    if errors:
        raise ConfigError(errors, source)
    return config


def _model_error(err: Any) -> tuple[str, str]:
    # Tagged-union steps (`function-after[...]`) are pydantic's, not places in the file.
    loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and "[" in x))
    if err["type"] == "extra_forbidden":
        plain_service = len(loc) == 3 and loc[0] == "services" and \
            BACKEND_SEPARATOR not in str(loc[1])
        message = unknown_key(Config, loc, {"ServiceConfig": SERVICE_ONLY} if plain_service
                              else {})
    else:
        message = err["msg"].removeprefix("Value error, ")
    return _backend_path(format_loc(loc)), _backend_path(message)


def _strategy_errors(data: dict[str, Any], check: StrategyCheck) -> list[tuple[str, str]]:
    """Each route whose own part is valid, checked by `check`. A route or `strategies_dir`
    that is itself invalid is skipped: the models report it."""
    directory = data.get("strategies_dir", Config.model_fields["strategies_dir"].default)
    if not isinstance(directory, str | Path):
        return []
    routes: dict[str, RouteConfig] = {}
    for sid, route in (data.get("routes") or {}).items():
        try:
            routes[sid] = RouteConfig.model_validate(route)
        except ValidationError:
            continue
    return check(Path(directory), routes)


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None,
                check_strategies: StrategyCheck | None = None) -> Config:
    """Read and validate a YAML configuration file. Raises `ConfigError`."""
    return parse_config(read_config(path), env=env, source=str(path),
                        check_strategies=check_strategies)


def read_config(path: str | os.PathLike[str]) -> Any:
    """The YAML data of a configuration file, not yet validated. Raises `ConfigError` with
    one error when it cannot be read, is not UTF-8, is not YAML, or has a key twice."""
    return read_yaml(path, str(path))
