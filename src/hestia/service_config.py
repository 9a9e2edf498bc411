"""The models of one service: its backends' placements, readiness, queue, deadlines, startup,
activity, limits and health, and how a service with several backends routes between them.

`hestia.config` is the public face: it re-exports every model here, and holds the whole
`Config` (machines, groups, the gateway's own settings) and the loading steps. The launchers'
and auth's models are in launch_config.py; this module imports nothing else of hestia, so any
layer may depend on it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    ByteSize,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from .launch_config import Duration, LauncherConfig, Upstream, _Model
from .schedule import Schedule, local_zone_name, parse_window, zone

__all__ = [
    "HOST_NAME",
    "ActivityConfig",
    "ActivityIgnoreConfig",
    "HealthConfig",
    "KeepWarmConfig",
    "LimitsConfig",
    "PlacementConfig",
    "QueueConfig",
    "ReadinessConfig",
    "RouteConfig",
    "ServiceConfig",
    "StartupConfig",
    "StrategyConfig",
    "TimeoutsConfig",
]

HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
                       r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
"""A DNS name in lower case (no scheme, port or trailing dot): `hosts`, `service_domain` and
`allowed_hosts` are checked against it."""


class ReadinessConfig(_Model):
    """How Hestia knows a started backend serves. Give at most one of `http`, `tcp`, `delay`;
    with none, a TCP connect to the upstream is the probe.

    Probing is adaptive: the first probe runs as soon as the launcher has started the backend,
    the next 2 ms after it failed, and each further wait is 1.5 times the previous one, up to
    `interval`; so readiness is seen within about `interval` of the upstream being ready.
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


def _window(text: str) -> str:
    parse_window(text)
    return text


def _zone(name: str) -> str:
    zone(name)
    return name


class KeepWarmConfig(_Model):
    """`keep_warm` by the clock: warm inside the `schedule`'s windows (and `lead` before each
    opens), on demand outside them (docs/operations.md, Schedules)."""

    schedule: list[Annotated[str, AfterValidator(_window)]] = Field(min_length=1)
    """Windows, each `[days] HH:MM-HH:MM`: `Mon-Fri 08:00-18:00`, `Sat,Sun 10:00-14:00`,
    `daily 22:00-02:00` (crossing midnight), `Fri 18:00-24:00`."""
    timezone: Annotated[str, AfterValidator(_zone)] = Field(default_factory=local_zone_name)
    """The IANA zone the windows are read in (default: this machine's, else UTC)."""
    lead: Duration | None = Field(default=None, ge=0, le=86400)
    """Start this long before a window opens (default: the service's `readiness.timeout`, the
    longest a start that succeeds can take, so the backend is READY when the window opens)."""

    def parsed(self, default_lead: float) -> Schedule:
        return Schedule.parse(self.schedule, self.timezone,
                              default_lead if self.lead is None else self.lead)


def _keep_warm_kind(value: Any) -> str:
    return "schedule[keep_warm]" if isinstance(value, dict | KeepWarmConfig) else "bool[keep_warm]"


# The tags hold "[" so that error paths leave them out, as they leave out pydantic's own steps.
KeepWarm = Annotated[Annotated[bool, Tag("bool[keep_warm]")]
                     | Annotated[KeepWarmConfig, Tag("schedule[keep_warm]")],
                     Discriminator(_keep_warm_kind)]


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
    keep_warm: KeepWarm = False
    """`true`: start at boot, never stop for idleness (whatever `idle_timeout` says), and start
    again after a crash or a failed start (with the `startup` backoff after repeated failures).
    `{schedule: [...], timezone, lead}`: the same inside the schedule's windows only."""
    depends_on: list[str] = []
    """Services started (each READY in turn) before this one, kept up while it is, and
    stopped only after it (docs/configuration.md, Dependencies)."""
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

    @property
    def always_warm(self) -> bool:
        """`keep_warm: true` (not a schedule)."""
        return self.keep_warm is True

    @property
    def warm_schedule(self) -> Schedule | None:
        """`keep_warm`'s schedule, if it has one."""
        if isinstance(self.keep_warm, KeepWarmConfig):
            return self.keep_warm.parsed(self.readiness.timeout)
        return None

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        names = [h.strip().strip(".").lower() for h in value]
        bad = [h for h in names if not HOST_NAME.match(h)]
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
