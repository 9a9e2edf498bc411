"""Live reload: read the configuration file again and apply it to the running gateway.

`Reloader.reload()` (SIGHUP, `POST /v1/reload`, `Gateway.reload()`) reads the file the gateway
was started with. Nothing is applied unless all of it can be: an invalid file, a strategy that
cannot be made, an unknown Semaphore template (`ConfigInvalid`, every error with its path), or a
change that only a restart applies (`RestartRequired`: `listen`, `data_dir`, `log_level`;
reload.py: `TOP_LEVEL`) leaves the running configuration as it was, and says why in the
result, the log (`config_reload_failed`) and the events.

A valid file is applied backend by backend, by the table in reload.py:

- added: its supervisor runs before the reload returns, so it is served at once;
- removed: taken out of routing at once (new requests: 404 `unknown_service`); requests in
  flight get `grace_period` to finish, requests waiting for its start get 503; then its backend
  is stopped;
- launch fields changed: drained and stopped like a removed one, but kept in routing: requests
  arriving meanwhile wait for the start with the new settings (at once for `keep_warm`);
- policy fields changed: taken in place, by the running backend;
- unchanged: untouched (same process, same connections).

Top-level settings follow the same rule: machines, groups, auth, `allowed_hosts`,
`service_domain`, the routes' strategies, `notify` (its webhooks start again) and `semaphore`
(a new client; the backends it runs are restarted with it) are taken at once. Reloads run one
at a time, in the reloader's own task, so a client that gives up on `POST /v1/reload` never
leaves one half applied.

```
reloader.run                       in the gateway's root nursery
 ├─ helpers nursery                each route's health probes, the webhooks (cancelled last)
 └─ added nursery                  supervisors of backends a reload added
```
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from typing import Any

import structlog
import trio

from .config import Config, load_config, upstream_warnings
from .errors import ConfigError, ConfigInvalid, GatewayError, NotReloadable, RestartRequired
from .events import EventBus
from .http.addressing import Addressing
from .http.auth import AuthGate
from .lifecycle.groups import Group
from .lifecycle.placement import Machines
from .lifecycle.supervisor import Supervisor
from .notify import Notifier
from .reload import ConfigChanges, ReloadResult, diff_configs, restart_fields
from .routing.registry import Registry
from .routing.router import Route, build_routes, load_registry, strategy_errors
from .semaphore.hub import SemaphoreHub
from .semaphore.journal import RemoteJournal
from .semaphore.tasks import check_templates
from .store import Store
from .systemd import SystemdNotifier

__all__ = ["Front", "Reloader", "config_warnings"]

log = structlog.get_logger("hestia.reload")

# What builds one backend's parts (gateway.py); passed in, since the gateway imports this.
BuildSupervisor = Callable[..., Supervisor]  # gateway.build_supervisor
BuildPlacements = Callable[[Config, str, "SemaphoreHub | None"], list[Any]]
BuildGroups = Callable[[Config, dict[str, Group]], dict[str, Group]]


class Front:
    """The ASGI app the server serves: `app`, behind an `AuthGate` while `auth.enabled` is on
    (`configure`, at start and by each reload)."""

    __slots__ = ("app", "serving")

    def __init__(self) -> None:
        self.app: Any = None
        self.serving: Any = None

    def configure(self, config: Config, store: Store, addressing: Addressing) -> None:
        """Raises `StoreError` when the sessions' table cannot be made."""
        self.serving = self.made_for(config, store, addressing)

    def made_for(self, config: Config, store: Store, addressing: Addressing) -> Any:
        """What to serve for `config` (the gate keeps its sessions when `session_ttl` is the
        same). Raises `StoreError` when the sessions' table cannot be made."""
        if not config.auth.enabled:
            return self.app
        current = self.serving
        gate = current if isinstance(current, AuthGate) else None
        sessions = (gate.sessions if gate is not None
                    and gate.sessions.ttl == config.auth.session_ttl else None)
        return AuthGate(self.app, config, store, sessions, addressing,
                        backoff=gate.login.backoff if gate is not None else None)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.serving(scope, receive, send)


def config_warnings(config: Config, inherited: list[tuple[str, bool]] | None = None) -> None:
    """What the gateway warns about at start, and again after each reload. `inherited`: the
    sockets systemd passed (address, loopback), served in place of `listen`."""
    for path, warning in upstream_warnings(config):
        log.warning("upstream_shared", path=path, detail=warning)
    loopback = (all(lo for _, lo in inherited) if inherited
                else _is_loopback(config.listen))
    if not loopback and not config.auth.enabled:
        listen = ", ".join(a for a, _ in inherited) if inherited else config.listen
        log.warning("listening_beyond_loopback", listen=listen,
                    detail="auth is off: anyone who can reach this address can use every "
                           "service and the whole API; set auth.enabled and make keys "
                           "with `hestia keys create`")


def _is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Reloader:
    """The running gateway's configuration, and the one place that changes it. Every layer
    that serves holds the same `supervisors` and `routes` dicts and `addressing`: they are
    changed in place."""

    def __init__(self, config: Config, *, events: EventBus, store: Store,
                 supervisors: dict[str, Supervisor], routes: dict[str, Route],
                 machines: Machines, groups: dict[str, Group], registry: Registry,
                 addressing: Addressing, front: Front,
                 semaphore: SemaphoreHub | None, hubs: list[SemaphoreHub],
                 build_supervisor: BuildSupervisor, build_placements: BuildPlacements,
                 build_groups: BuildGroups, on_config: Callable[[Config, Config], None],
                 systemd: SystemdNotifier | None = None,
                 journal: RemoteJournal | None = None,
                 inherited: list[tuple[str, bool]] | None = None) -> None:
        self.config = config
        self.systemd = systemd or SystemdNotifier()  # told RELOADING=1 … READY=1 around each
        self.inherited = inherited or []
        # The gateway's one journal of remote backends: a new hub writes to it too.
        self.journal = journal if journal is not None else RemoteJournal()
        self.events = events
        self.store = store
        self.supervisors = supervisors
        self.routes = routes
        self.machines = machines
        self.groups = groups
        self.registry = registry
        self.addressing = addressing
        self.front = front
        self.semaphore = semaphore
        self.hubs = hubs  # every hub made: closed when the gateway ends
        self._build_supervisor = build_supervisor
        self._build_placements = build_placements
        self._build_groups = build_groups
        self._on_config = on_config  # (old, new): the gateway's own part (hypercorn, CLI key)
        self.last: ReloadResult | None = None
        self.supervisors_done = trio.Event()  # those a reload added have all returned
        self._lock = trio.Lock()
        self._send, self._receive = trio.open_memory_channel[
            tuple[trio.Event, list[ReloadResult]]](math.inf)
        self._retiring: dict[str, Supervisor] = {}
        self._scopes: dict[str, trio.CancelScope] = {}  # each route's task, by service
        self._notifier: trio.CancelScope | None = None
        self._closed = False

    def __repr__(self) -> str:
        last = "never" if self.last is None else ("ok" if self.last.ok else "failed")
        return (f"<Reloader {self.source} services={len(self.routes)} "
                f"retiring={len(self._retiring)} last={last}>")

    @property
    def source(self) -> str | None:
        """The file reloads read (None: the gateway was given its configuration as data)."""
        return str(self.config.path) if self.config.path is not None else None

    def every_supervisor(self) -> list[Supervisor]:
        """The running ones, and those being drained after a reload removed them."""
        return [*self.supervisors.values(), *self._retiring.values()]

    async def reload(self) -> ReloadResult:
        """Read the file again and apply it; one reload at a time. Never raises for a bad
        file: the result says what went wrong (`error`, `errors`). A caller that is cancelled
        does not cancel the reload: it runs in the reloader's task. Every reload goes through
        here (SIGHUP, `POST /v1/reload`, `Gateway.reload()`); what must happen around each one
        (systemd told RELOADING=1, then READY=1) is done in `run`, around the reload itself."""
        async with self._lock:
            done, box = trio.Event(), []
            try:
                self._send.send_nowait((done, box))
            except trio.ClosedResourceError:
                return self._failed(NotReloadable("the gateway is shutting down"))
            await done.wait()
            if not box:  # the gateway was cancelled in the middle of it
                return self._failed(NotReloadable("the gateway is shutting down"))
            return box[0]

    def close(self) -> None:
        """The gateway is stopping: no more reloads; `run` returns once the supervisors it
        added have returned (the caller closes them) and it is cancelled."""
        self._closed = True
        self._send.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        async with trio.open_nursery() as helpers:
            for route in self.routes.values():
                await self._start_route(helpers, route)
            if self.config.notify:
                await self._start_notifier(helpers, self.config)
            try:
                async with trio.open_nursery() as added:
                    task_status.started()
                    async for done, box in self._receive:
                        try:
                            # Here, not in `reload`: a caller that left (an HTTP client gone)
                            # must not end the notice while the reload goes on.
                            async with self.systemd.reloading():
                                box.append(await self._reload(added, helpers))
                        except Exception as exc:  # a bug: reported, the gateway goes on
                            log.exception("config_reload_crashed", source=self.source)
                            box.append(self._failed(GatewayError(
                                f"the reload failed unexpectedly ({type(exc).__name__}: "
                                f"{exc}); part of it may be applied. The log has the "
                                "details (config_reload_crashed)")))
                        finally:
                            done.set()
            finally:
                self.supervisors_done.set()
            # The webhooks and probes run on until the gateway cancels its root, as at start.
            await trio.sleep_forever()

    # --- reading and checking ------------------------------------------------------------------

    async def _reload(self, added: trio.Nursery, helpers: trio.Nursery) -> ReloadResult:
        path = self.config.path
        if path is None:
            return self._failed(NotReloadable(
                "this gateway was started without a configuration file (the built-in demo): "
                "there is no file to read again; start it with -c FILE to reload"))
        try:
            loaded = load_config(path)
            # What the command line set in place of the file's (`--listen`) stays set.
            new = loaded.model_copy(update=self.config.overrides())
            registry = (self.registry if new.strategies_dir == self.config.strategies_dir
                        else load_registry(new.strategies_dir))
            errors = strategy_errors(new.routes, registry)
            if errors:
                raise ConfigError(errors, str(path))
        except ConfigError as exc:
            return self._invalid(exc.errors)
        restart = restart_fields(self.config, new)
        if restart:
            return self._failed(RestartRequired(
                f"{', '.join(restart)} changed, which only a restart applies: nothing was "
                "reloaded (restart the gateway, or change it back)", fields=restart))
        hub, errors = await self._semaphore_for(new)
        if errors:
            return self._invalid(errors)
        changes = diff_configs(self.config, new)
        await self._apply(new, changes, registry, hub, added, helpers)
        result = ReloadResult(True, self.source, changes)
        self.last = result
        log.info("config_reloaded", source=self.source, **changes.as_dict())
        self.events.publish("config_reloaded", None, source=self.source, **changes.as_dict())
        return result

    def _invalid(self, errors: list[tuple[str, str]]) -> ReloadResult:
        listed = [{"path": p, "message": m} for p, m in errors]
        return self._failed(ConfigInvalid(
            f"{self.source}: {len(errors)} error(s); the running configuration stays",
            errors=listed), errors)

    def _failed(self, error: GatewayError,
                errors: list[tuple[str, str]] | None = None) -> ReloadResult:
        result = ReloadResult(False, self.source, error=error, errors=errors or [])
        self.last = result
        log.error("config_reload_failed", source=self.source, error=error.code,
                  detail=error.detail, errors=[f"{p}: {m}" if p else m
                                               for p, m in errors or []])
        self.events.publish("config_reload_failed", None, source=self.source,
                            error=error.code, detail=error.detail,
                            errors=[{"path": p, "message": m} for p, m in errors or []])
        return result

    async def _semaphore_for(self, new: Config,
                             ) -> tuple[SemaphoreHub | None, list[tuple[str, str]]]:
        """The Semaphore connection `new` needs: the current one, or a new one when
        `semaphore` changed; and the errors of its template names (when Semaphore can be
        asked now; else they are looked up before the first task, as at start)."""
        if new.semaphore is None:
            return None, []
        hub = self.semaphore
        fresh = hub is None or new.semaphore != self.config.semaphore
        if fresh:
            hub = SemaphoreHub(new, events=self.events, journal=self.journal)
        assert hub is not None
        errors, unreachable = await check_templates(new, hub.templates)
        if errors:
            if fresh:
                await hub.aclose()
            return None, errors
        if unreachable is not None:
            log.warning("semaphore_unreachable", detail=unreachable,
                        consequence="template names are looked up before the first task")
        return hub, []

    # --- applying ------------------------------------------------------------------------------

    async def _apply(self, new: Config, changes: ConfigChanges, registry: Registry,
                     hub: SemaphoreHub | None, added: trio.Nursery,
                     helpers: trio.Nursery) -> None:
        """First what takes time and nobody sees yet (the added backends' supervisors start);
        then the rest in one synchronous step, so that no request sees half of it (a removed
        backend still routed, a new route without its backend)."""
        old = self.config
        grace = new.grace_period
        # First what may fail (the sessions' table of a new auth gate): nothing is changed yet.
        try:
            serving = (self.front.made_for(new, self.store, self.addressing)
                       if not changes.empty else self.front.serving)
        except BaseException:
            if hub is not None and hub is not self.semaphore:
                with trio.CancelScope(shield=True):
                    await hub.aclose()  # made for this reload, which goes no further
            raise
        if hub is not None and hub is not self.semaphore:
            self.hubs.append(hub)  # the old one stays open: its backends stop through it
        elif hub is not None:
            hub.config = new
        self.semaphore = hub
        self.machines.reconfigure(new)
        self.groups = self._build_groups(new, self.groups)
        started: dict[str, Supervisor] = {}
        for name in changes.added:
            leaving = self._retiring.get(name)
            if leaving is not None:  # removed by an earlier reload: it may hold the port still
                await leaving.closed.wait()
            supervisor = started[name] = self._build_supervisor(
                new, name, self.machines, hub, self.events, self.groups,
                peers=self.supervisors)
            await added.start(supervisor.run)
        # --- one step from here: no await until the routes serve the new configuration ---
        for name in changes.removed:
            supervisor = self._retiring[name] = self.supervisors.pop(name)
            supervisor.retire()
            helpers.start_soon(self._forget, name, supervisor)
        for name in changes.restarted:
            service = new.services[name]
            self.supervisors[name].replace_launch(
                service, self._build_placements(new, name, hub),
                self.groups[service.group] if service.group is not None else None, grace)
        for name, supervisor in self.supervisors.items():
            if name in changes.updated:
                supervisor.update_policy(new.services[name], grace)
            elif name not in changes.restarted:
                supervisor.drain_timeout = grace
        self.supervisors.update(started)
        if self._closed:  # the gateway began to stop meanwhile: it closed the others
            for supervisor in started.values():
                supervisor.close()
        self._apply_routes(new, registry, helpers)
        self.addressing.reconfigure(new)  # the gate made above holds this same object
        self.front.serving = serving
        self.config = new
        self._on_config(old, new)
        # --- done: what follows only starts the webhooks again ---
        if new.notify != old.notify:
            if self._notifier is not None:
                self._notifier.cancel()
                self._notifier = None
            if new.notify:
                await self._start_notifier(helpers, new)
        config_warnings(new, self.inherited)

    def _apply_routes(self, new: Config, registry: Registry, helpers: trio.Nursery) -> None:
        """A route is kept (its decisions, its health marks) unless its backends or its
        strategy changed."""
        fresh = build_routes(new, self.supervisors, registry)
        for service_id in [s for s in self.routes if s not in fresh]:
            del self.routes[service_id]
            self._scopes.pop(service_id).cancel()
        for service_id, route in fresh.items():
            current = self.routes.get(service_id)
            if (current is not None and registry is self.registry
                    and current.config == route.config
                    and list(current.backends.items()) == list(route.backends.items())):
                continue
            if current is not None:
                self._scopes.pop(service_id).cancel()
            self.routes[service_id] = route
            scope = self._scopes[service_id] = trio.CancelScope()
            helpers.start_soon(_in_scope, scope, route.run)
        self.registry = registry

    async def _start_route(self, helpers: trio.Nursery, route: Route) -> None:
        scope = self._scopes[route.service] = trio.CancelScope()
        await helpers.start(_in_scope, scope, route.run)

    async def _start_notifier(self, helpers: trio.Nursery, config: Config) -> None:
        scope = self._notifier = trio.CancelScope()
        await helpers.start(_in_scope, scope, Notifier(config.notify, self.events).run)

    async def _forget(self, name: str, supervisor: Supervisor) -> None:
        await supervisor.closed.wait()
        if self._retiring.get(name) is supervisor:
            del self._retiring[name]


async def _in_scope(scope: trio.CancelScope, run: Any, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with scope:
        await run(task_status=task_status)
