"""What a reload changes: the one table that says how each field is applied, and the diff of
two configurations by it (pure functions; the gateway applies the diff, reloader.py).

Each field of a service (backend) is one of:

- **policy**: the running backend takes the new value in place (same process, no connection
  dropped): the supervisor reads it from its `config` for the next decision;
- **launch**: the backend must be started again to take it: it is drained (in-flight requests
  get `grace_period`), stopped, and the next request starts it with the new settings (a
  `keep_warm` backend at once).

A field missing from `SERVICE_FIELDS` counts as launch: a new field is safe by default (at
worst a backend restarts that did not need to). At the top level, `listen`, `data_dir` and
`log_level` need a restart, and so does any field missing from `TOP_LEVEL`: a reload changing
one of them is refused whole, nothing of it applied.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .config import BACKEND_SEPARATOR, Config, ServiceConfig
from .errors import GatewayError
from .observability import iso_time

__all__ = ["SERVICE_FIELDS", "TOP_LEVEL", "ConfigChanges", "ReloadResult", "Reloads",
           "diff_configs", "field_kind", "restart_fields"]

Kind = Literal["policy", "launch"]

SERVICE_FIELDS: dict[str, Kind] = {
    # Read by the supervisor, the proxy or the hold queue at each decision: taken in place.
    "idle_timeout": "policy",
    "keep_warm": "policy",  # a new schedule is followed from now (warmth.set_schedule)
    "max_connections": "policy",
    "queue": "policy",
    "timeouts": "policy",
    "startup": "policy",
    "activity": "policy",
    "limits": "policy",
    "health": "policy",
    "auth": "policy",
    "weight": "policy",
    "hosts": "policy",
    "preserve_host": "policy",
    "rewrite_cookie_path": "policy",
    "waiting_page": "policy",
    "shared_upstream": "policy",
    "on_restart": "policy",  # read only when the gateway starts
    "depends_on": "policy",  # read at each start; holds already taken stay until COLD
    # What the running backend was started with: a new one must be started.
    "upstream": "launch",
    "launcher": "launch",
    "readiness": "launch",
    "machine": "launch",
    "fallbacks": "launch",
    "group": "launch",  # its slot is held in the old group while it runs
}

TOP_LEVEL: dict[str, Literal["reload", "restart"]] = {
    "listen": "restart",      # the listening socket is bound once
    "data_dir": "restart",    # the store, the process records and the logs are open there
    "log_level": "restart",   # the loggers are configured once per process
    "grace_period": "reload",
    "auth": "reload",
    "semaphore": "reload",    # a new client; the services it runs are restarted with it
    "notify": "reload",
    "machines": "reload",
    "groups": "reload",
    "services": "reload",
    "routes": "reload",
    "allowed_hosts": "reload",
    "service_domain": "reload",
    "strategies_dir": "reload",
}


def field_kind(name: str) -> Kind:
    """How a service field is applied: `policy` or `launch` (also for a field not in the
    table)."""
    return SERVICE_FIELDS.get(name, "launch")


def restart_fields(old: Config, new: Config) -> list[str]:
    """The changed top-level fields that only a restart applies (`listen`, `data_dir`, and
    any field `TOP_LEVEL` does not name)."""
    return [name for name in Config.model_fields
            if TOP_LEVEL.get(name, "restart") == "restart"
            and getattr(old, name) != getattr(new, name)]


@dataclass(frozen=True)
class ConfigChanges:
    """What a reload changes, by backend id (`<service>` or `<service>@<backend>`)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restarted: dict[str, list[str]] = field(default_factory=dict)
    """Backends with a launch field changed (and any policy fields changed with it)."""
    updated: dict[str, list[str]] = field(default_factory=dict)
    """Backends with only policy fields changed; services (by id) whose `strategy` changed."""
    unchanged: int = 0
    top_level: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.restarted or self.updated
                    or self.top_level)

    def as_dict(self) -> dict[str, Any]:
        return {"added": self.added, "removed": self.removed, "restarted": self.restarted,
                "updated": self.updated, "unchanged": self.unchanged,
                "topLevel": self.top_level}


def service_changes(old: ServiceConfig, new: ServiceConfig) -> tuple[list[str], list[str]]:
    """`(launch, policy)`: the names of the fields that differ, by kind, in field order."""
    changed = [name for name in ServiceConfig.model_fields
               if getattr(old, name) != getattr(new, name)]
    launch = [name for name in changed if field_kind(name) == "launch"]
    return launch, [name for name in changed if name not in launch]


def diff_configs(old: Config, new: Config) -> ConfigChanges:
    """Compare two configurations, field by field. Restart-only top-level fields are listed in
    `top_level` like the others (`restart_fields` says which ones they are). A backend whose
    placements use Semaphore is restarted when `semaphore` itself changed: its launcher holds
    the old connection."""
    top_level = [name for name in Config.model_fields
                 if name not in ("services", "routes") and getattr(old, name) != getattr(new, name)]
    added = [sid for sid in new.services if sid not in old.services]
    removed = [sid for sid in old.services if sid not in new.services]
    restarted: dict[str, list[str]] = {}
    updated: dict[str, list[str]] = {}
    unchanged = 0
    semaphore_changed = "semaphore" in top_level
    for sid, service in new.services.items():
        before = old.services.get(sid)
        if before is None:
            continue
        launch, policy = service_changes(before, service)
        if semaphore_changed and _uses_semaphore(service):
            launch.append("semaphore")
        if launch:
            restarted[sid] = launch + policy
        elif policy:
            updated[sid] = policy
        else:
            unchanged += 1
    for service_id, route in new.routes.items():
        before_route = old.routes.get(service_id)
        if (before_route is not None and len(route.backends) > 1
                and before_route.strategy != route.strategy):
            updated.setdefault(service_id, []).append("strategy")
    return ConfigChanges(added, removed, restarted, updated, unchanged, top_level)


def _uses_semaphore(service: ServiceConfig) -> bool:
    return service.launcher.semaphore is not None or any(
        f.launcher.semaphore is not None for f in service.fallbacks)


def service_of(backend_id: str) -> str:
    return backend_id.partition(BACKEND_SEPARATOR)[0]


@dataclass
class ReloadResult:
    """The outcome of one reload: applied (`ok`, with its `changes`), or refused (`error`, a
    `GatewayError` of the error tree, and for an invalid file every `(path, message)`)."""

    ok: bool
    source: str | None
    changes: ConfigChanges | None = None
    error: GatewayError | None = None
    errors: list[tuple[str, str]] = field(default_factory=list)
    at: float = field(default_factory=time.time)

    def __repr__(self) -> str:
        what = "ok" if self.ok else f"failed {self.error.code if self.error else '?'}"
        return f"<ReloadResult {what} {self.source}>"

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "at": iso_time(self.at), "source": self.source,
                "changes": self.changes.as_dict() if self.changes is not None else None,
                "error": self.error.code if self.error is not None else None,
                "detail": self.error.detail if self.error is not None else None,
                "errors": [{"path": p, "message": m} for p, m in self.errors]}


class Reloads(Protocol):
    """What the API asks of the gateway's reloader (reloader.py: `Reloader`)."""

    last: ReloadResult | None

    @property
    def source(self) -> str | None: ...

    async def reload(self) -> ReloadResult: ...
