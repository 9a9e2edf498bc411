"""Configuration: frozen, strict pydantic models loaded from YAML.

Loading runs in this order, and every step reports *all* its problems with their paths:

1. The file is read as UTF-8 and parsed as YAML. These stop at their one error: a byte that
   is not UTF-8 (its offset), a syntax error (line and column), a key given twice in one
   mapping (both lines).
2. `${VAR}` and `${VAR:-default}` are interpolated in every string value (never in keys).
3. `<SERVICE>_<FIELD>` environment variables override fields of services the file declares
   (`OLLAMA_IDLE_TIMEOUT=10m`, `OLLAMA_QUEUE_MAX=5`); they never invent a service. So do
   `<SERVICE>_SEMAPHORE_ENABLED` and `<SERVICE>_SEMAPHORE_MACHINE_ID`
   (`config_env.semaphore_switches`).
4. The models validate the result (`extra="forbid"`, so a typo such as `idel_timeout` is an
   error naming its path, the valid keys and the closest one), and, in the same run, what
   refers across models (ids, machines, groups, Semaphore; `config_data.reference_errors`)
   and, for `hestia check`, every routing strategy.

This module is the public face: it holds the whole `Config` (the gateway's own settings,
machines, groups) and the loading, and re-exports every model. The models of one service are
in service_config.py, the launchers' and auth's in launch_config.py, and the steps on the
data in config_data.py.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .config_data import (
    BACKEND_SEPARATOR,
    SERVICE_ONLY,
    backend_path,
    expand_backends,
    format_loc,
    machine_launchers,
    read_yaml,
    reference_errors,
    submodel,
    unknown_key,
    upstream_warnings,
)
from .config_env import interpolate, semaphore_env, semaphore_switches
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
    WolLauncherConfig,
    _Model,
    parse_duration,
)
from .service_config import (
    HOST_NAME,
    ActivityConfig,
    ActivityIgnoreConfig,
    HealthConfig,
    LimitsConfig,
    PlacementConfig,
    QueueConfig,
    ReadinessConfig,
    RouteConfig,
    ServiceConfig,
    StartupConfig,
    StrategyConfig,
    TimeoutsConfig,
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

    _path: Path | None = PrivateAttr(default=None)
    _file_values: dict[str, Any] = PrivateAttr(default_factory=dict)  # each field as loaded

    @property
    def path(self) -> Path | None:
        """The file this configuration was read from (`load_config`, made absolute), which a
        reload reads again; None when it was given as data (the built-in demo)."""
        return self._path

    def overrides(self) -> dict[str, Any]:
        """The top-level fields set after loading, in place of the file's (`hestia serve
        --listen`): a reload applies them again to what it reads."""
        return {name: getattr(self, name) for name, value in self._file_values.items()
                if getattr(self, name) != value}

    def semaphore_launchers(self) -> list[tuple[str, SemaphoreLauncherConfig]]:
        """Every `semaphore` launcher with its path, machines first (a service that inherits
        its machine's launcher is listed too)."""
        found = [(f"machines.{mid}.semaphore", m.semaphore)
                 for mid, m in self.machines.items() if m.semaphore is not None]
        for sid, service in self.services.items():
            placements = [("launcher", service.launcher)] + [
                (f"fallbacks[{i}].launcher", f.launcher) for i, f in enumerate(service.fallbacks)]
            found += [(backend_path(f"services.{sid}.{where}.semaphore"), launcher.semaphore)
                      for where, launcher in placements if launcher.semaphore is not None]
        return found

    def project_of(self, launcher: SemaphoreLauncherConfig) -> int:
        project = launcher.project or (self.semaphore.project if self.semaphore else None)
        assert project is not None  # checked at load (config_data.reference_errors)
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
        bad = [h for h in names if not HOST_NAME.match(h.removeprefix("*."))]
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
        if not HOST_NAME.match(value):
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
            sub = submodel(annotation)
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
    of each model, the references between them (`config_data.reference_errors`) and, with
    `check_strategies` (`hestia check`), each route's strategy, whether or not the rest is
    valid."""
    env = os.environ if env is None else env
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([("", "the configuration must be a mapping")], source)
    errors: list[tuple[str, str]] = []
    # `${VAR}` in the file only: a value taken from SEMAPHORE_* (a password) stays as it is.
    data = interpolate(raw, env, "", errors)
    data = semaphore_env(data, env)
    _env_overrides(data, env)
    semaphore_switches(data, env, errors)
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
    return backend_path(format_loc(loc)), backend_path(message)


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
    """Read and validate a YAML configuration file (`Config.path` remembers it). Raises
    `ConfigError`."""
    config = parse_config(read_config(path), env=env, source=str(path),
                          check_strategies=check_strategies)
    config._path = Path(os.path.abspath(path))
    config._file_values = {name: getattr(config, name) for name in Config.model_fields}
    return config


def read_config(path: str | os.PathLike[str]) -> Any:
    """The YAML data of a configuration file, not yet validated. Raises `ConfigError` with
    one error when it cannot be read, is not UTF-8, is not YAML, or has a key twice."""
    return read_yaml(path, str(path))
