"""`run(config)`: the root of Hestia's task tree.

```
run(config)                         root nursery
 ├─ store writer                    the one SQLite writer (hestia.store), fed by the event bus
 ├─ periodic save                   each service's last use, every 30 s and at the end
 ├─ reloader                        reloads (reloader.py), one at a time; owns the webhooks
 │    │                             (notify.py), the routes' health probes, and the
 │    └─ supervisor × added         supervisors of backends a reload added
 ├─ systemd                         STATUS= and WATCHDOG=1 to NOTIFY_SOCKET (systemd.py)
 ├─ signal watcher                  SIGINT/SIGTERM → graceful shutdown; a second → at once
 ├─ reload watcher                  SIGHUP → `Gateway.reload()`
 └─ backends nursery
      ├─ supervisor × service       each owns its backend (see lifecycle/supervisor.py)
      └─ HTTP server                hypercorn's trio worker serving the Quart-Trio app
```

Every supervisor publishes its lifecycle events on one `EventBus` (events.py); the store, the
metrics, `GET /v1/events` and the webhooks listen to it. Before the supervisors run, what the
previous run stored is restored: last use, last error, start history, disabled machines,
Semaphore tasks.

Before any of that runs, `recover` deals with what a previous Hestia that was killed left
running (lifecycle/recovery.py): every backend process is recorded under `<data_dir>/run/` while
it runs, and a leftover is stopped, or adopted by its supervisor (`on_restart: adopt`).
A backend started through Semaphore is journaled in the store at each stage instead; what a
killed Hestia left is settled in its supervisor's task while the server already listens, the
backend holding its requests meanwhile (lifecycle/remote_recovery.py).

Every layer that serves (the app, the proxy, the auth gate, the metrics) holds the same
`supervisors` and `routes` dicts and `Addressing`, which a reload changes in place (reloader.py:
`Reloader`, the one owner of the running configuration; `Gateway.reload()`, SIGHUP and
`POST /v1/reload` all go through `Reloader.reload()`).

Shutdown order: the server stops accepting and gives in-flight requests `grace_period` to
finish; then every supervisor stops its backend (stop signal, then SIGKILL to the process group);
then `run` returns. A backend that was never started is left alone.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from .config import BACKEND_SEPARATOR, Config
from .errors import ConfigError
from .events import EventBus
from .http import hypercorn_fixes
from .http.addressing import Addressing
from .http.app import create_app
from .http.auth import hash_key, new_key
from .launchers import make_launcher
from .launchers.registry import boot_id, proc_stat, record_path
from .lifecycle.groups import Group
from .lifecycle.history import StartHistory
from .lifecycle.placement import Machines, Placement
from .lifecycle.readiness import make_probe
from .lifecycle.recovery import recover
from .lifecycle.remote_recovery import resume_remote
from .lifecycle.supervisor import Supervisor
from .metrics import Metrics
from .private_files import data_dir_warning, private_dir
from .reload import ReloadResult
from .reloader import Front, Reloader, config_warnings
from .routing.router import build_routes, load_registry
from .semaphore.hub import SemaphoreHub
from .semaphore.journal import RemoteJournal
from .store import Store, StoreError, open_error
from .systemd import InheritedSocket, SystemdNotifier, listen_fds, status_line

__all__ = ["Gateway", "build_groups", "build_placements", "build_supervisor",
           "build_supervisors", "run"]

log = structlog.get_logger("hestia.gateway")

# What hypercorn accepts as a request head when a service sets no header limit.
HEADER_CAP = 1024 * 1024
DB_NAME = "hestia.db"
# An admin key for `hestia status|start|stop` on this machine, written (mode 0600) at each start.
CLI_KEY_FILE = "cli.key"
CLI_KEY_NAME = "hestia-cli"
SAVE_EVERY_S = 30.0


@dataclass
class Gateway:
    """What `run` hands to `task_status.started()`: where it listens and what it runs."""

    urls: list[str]
    supervisors: dict[str, Supervisor]  # changed in place by reloads
    _shutdown: trio.Event = field(repr=False)
    events: EventBus = field(default_factory=EventBus, repr=False)
    _reloader: Reloader | None = field(default=None, repr=False)
    # Told READY, RELOADING, STATUS, STOPPING and WATCHDOG (systemd.py); a no-op without systemd.
    systemd: SystemdNotifier = field(default_factory=SystemdNotifier, repr=False)

    @property
    def url(self) -> str:
        return self.urls[0]

    async def reload(self) -> ReloadResult:
        """Read the configuration file again and apply what changed (reloader.py), as SIGHUP
        and `POST /v1/reload` do; one reload at a time. Never raises for a bad file or a
        refused change: `result.ok` is False, and `result.error` says why."""
        assert self._reloader is not None
        return await self._reloader.reload()

    @property
    def config_file(self) -> Path | None:
        """The file reloads read; None for a configuration given as data."""
        source = self._reloader.source if self._reloader is not None else None
        return Path(source) if source is not None else None

    @property
    def last_reload(self) -> ReloadResult | None:
        return self._reloader.last if self._reloader is not None else None

    def shutdown(self) -> None:
        """Begin a graceful shutdown, as SIGTERM does."""
        self._shutdown.set()


def build_supervisors(config: Config, machines: Machines | None = None,
                      semaphore: SemaphoreHub | None = None,
                      events: EventBus | None = None,
                      groups: dict[str, Group] | None = None) -> dict[str, Supervisor]:
    machines = machines or Machines(config)
    groups = groups if groups is not None else build_groups(config)
    supervisors: dict[str, Supervisor] = {}
    for name in config.services:
        supervisors[name] = build_supervisor(config, name, machines, semaphore, events, groups,
                                             peers=supervisors)
    return supervisors


def build_groups(config: Config, groups: dict[str, Group] | None = None) -> dict[str, Group]:
    """The exclusive groups of `config`; those of `groups` (a reload's current ones) are kept,
    with their new `max_running`, so that the members they hold stay counted."""
    made = {}
    for name, settings in config.groups.items():
        group = (groups or {}).get(name) or Group(name, settings.max_running)
        if group.max_running != settings.max_running:
            group.max_running = settings.max_running
            group.notify()  # a start waiting for a slot may have one now
        made[name] = group
    return made


def build_placements(config: Config, name: str,
                     semaphore: SemaphoreHub | None) -> list[Placement]:
    """Backend `name`'s placements (primary first), each with its launcher and probe."""
    service = config.services[name]
    log_path = config.data_dir / "logs" / f"{name}.log"
    # One record per service: whichever placement runs it, only one runs at a time.
    record = record_path(config.data_dir, name)
    launcher = partial(make_launcher, log_path=log_path, record_path=record, service=name,
                       semaphore=semaphore)
    return [Placement.primary(service, launcher(service.launcher), make_probe(service)), *(
        Placement(f.machine, f.upstream, f.upstream_host, f.upstream_port,
                  f.upstream_prefix.encode(), launcher(f.launcher),
                  make_probe(f, f.readiness or service.readiness),
                  f.readiness or service.readiness)
        for f in service.fallbacks)]


def build_supervisor(config: Config, name: str, machines: Machines,
                     semaphore: SemaphoreHub | None, events: EventBus | None,
                     groups: dict[str, Group], *,
                     peers: dict[str, Supervisor]) -> Supervisor:
    """Backend `name`'s supervisor. `peers` is the gateway's dict of them all (which a reload
    changes in place): dependencies are looked up in it by id when needed, never held."""
    service = config.services[name]
    primary, *fallbacks = build_placements(config, name, semaphore)
    return Supervisor(
        name, service, primary.launcher, primary.probe,
        backend=name.partition(BACKEND_SEPARATOR)[2] or "default",
        fallbacks=fallbacks, machines=machines,
        group=groups[service.group] if service.group is not None else None,
        drain_timeout=config.grace_period, events=events, peers=peers)


def _hypercorn_config(config: Config,
                      inherited: list[InheritedSocket] | None = None) -> HypercornConfig:
    hc = HypercornConfig()
    # Socket activation: the sockets systemd passed (fd://N, which hypercorn serves as they
    # are), in place of binding `listen`.
    hc.bind = [s.bind for s in inherited] if inherited else [config.listen]
    hc.accesslog = None  # Hestia logs each request itself, with its request id
    hc.errorlog = logging.getLogger("hypercorn.error")  # rendered like Hestia's own events
    hc.keep_alive_timeout = 30
    # Bursts of new connections (many clients waiting for one cold start) must not overflow
    # the accept queue: a dropped SYN costs the client a 1 s retransmit.
    hc.backlog = 2048
    hc.include_server_header = False  # the upstream's own Server and Date headers pass through
    hc.include_date_header = False
    _set_limits(hc, config)
    return hc


def _set_limits(hc: HypercornConfig, config: Config) -> None:
    """What a reload may change of the server's settings: hypercorn reads them from `hc` for
    each new connection, and at shutdown."""
    hc.graceful_timeout = config.grace_period
    # Hypercorn's own bounds must let every service's `limits` through, so that a request over a
    # service's limit gets that service's 431 (hypercorn's own answer is a bare 400), and a
    # WebSocket message as large as a service allows passes.
    # From hypercorn's defaults, not the current values: a reload may lower them again.
    defaults = HypercornConfig()
    limits = [s.limits for s in config.services.values()]
    hc.h11_max_incomplete_size = max(
        [HEADER_CAP if not lim.max_header_size else lim.max_header_size for lim in limits]
        + [defaults.h11_max_incomplete_size]) + 4096
    hc.websocket_max_message_size = max([lim.max_message_size for lim in limits]
                                        + [defaults.websocket_max_message_size])


async def run(config: Config, *, handle_signals: bool = True,
              task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `config` until SIGINT/SIGTERM (or `Gateway.shutdown()`), then stop everything."""
    # First, before anything starts: a hypercorn whose internals changed stops the start here.
    hypercorn_fixes.apply()
    # Read (and removed from the environment) before any backend can inherit them.
    inherited = listen_fds()
    systemd = SystemdNotifier.from_environ()
    if inherited:
        log.info("socket_activated", sockets=[s.address for s in inherited],
                 fds=[s.fd for s in inherited],
                 detail=f"serving on the sockets systemd passed; {config.listen} is not bound")
    config_warnings(config, [(s.address, s.loopback) for s in inherited])
    events = EventBus()
    # What runs through Semaphore is journaled in the store (semaphore/journal.py): one journal,
    # whichever hub (a reload may make another) started it.
    journal = RemoteJournal()
    semaphore = (SemaphoreHub(config, events=events, journal=journal)
                 if config.semaphore is not None else None)
    hubs = [semaphore] if semaphore is not None else []  # and those reloads make
    try:
        if semaphore is not None:
            await _check_templates(semaphore)
        await _run(config, events, semaphore, hubs, handle_signals, task_status,
                   systemd=systemd, inherited=inherited, journal=journal)
    finally:
        with trio.CancelScope(shield=True):
            for hub in hubs:
                await hub.aclose()
    log.info("gateway_stopped")


async def _check_templates(semaphore: SemaphoreHub) -> None:
    """Template names must name one template each: a configuration error otherwise. When
    Semaphore cannot be asked now, they are looked up before the first task instead."""
    errors, unreachable = await semaphore.check()
    if errors:
        raise ConfigError(errors, "configuration (checked against Semaphore)")
    if unreachable is not None:
        log.warning("semaphore_unreachable", detail=unreachable,
                    consequence="template names are looked up before the first task")


async def _run(config: Config, events: EventBus, semaphore: SemaphoreHub | None,
               hubs: list[SemaphoreHub], handle_signals: bool,
               task_status: trio.TaskStatus[Gateway], *, systemd: SystemdNotifier,
               inherited: list[InheritedSocket], journal: RemoteJournal) -> None:
    machines = Machines(config)
    groups = build_groups(config)
    supervisors = build_supervisors(config, machines, semaphore, events, groups)
    registry = load_registry(config.strategies_dir)
    routes = build_routes(config, supervisors, registry)
    _prepare_data_dir(config)
    store = Store(config.data_dir / DB_NAME)
    try:
        try:
            _restore(store, supervisors, machines, semaphore)
        except sqlite3.DatabaseError as exc:  # a damaged page the opening did not touch
            raise open_error(store.path, exc) from exc
        if config.auth.enabled:
            _write_cli_key(store, config)
        stat = proc_stat(os.getpid())
        journal.attach(store, (os.getpid(), stat.start_time if stat is not None else None,
                               boot_id()))
        events.add_listener(journal.listen)
        hc = _hypercorn_config(config, inherited)

        def on_config(old: Config, new: Config) -> None:
            _set_limits(hc, new)
            if new.auth.enabled and not old.auth.enabled:
                _write_cli_key(store, new)

        metrics = Metrics(supervisors)
        shutdown = trio.Event()
        addressing = Addressing.from_config(config)
        front = Front()
        reloader = Reloader(
            config, events=events, store=store, supervisors=supervisors, routes=routes,
            machines=machines, groups=groups, registry=registry, addressing=addressing,
            front=front, semaphore=semaphore, hubs=hubs,
            build_supervisor=build_supervisor, build_placements=build_placements,
            build_groups=build_groups, on_config=on_config, systemd=systemd, journal=journal,
            inherited=[(s.address, s.loopback) for s in inherited])
        front.app = create_app(supervisors, machines, events=events, metrics=metrics,
                               store=store, shutdown=shutdown, routes=routes,
                               registry=registry, addressing=addressing, reloads=reloader)
        front.configure(config, store, addressing)
        await _serve_all(config, events, store, metrics, reloader, front, hc, shutdown,
                         handle_signals, task_status,
                         partial(resume_remote, config, supervisors, journal, semaphore),
                         systemd=systemd)
    finally:
        store.close()


async def _serve_all(config: Config, events: EventBus, store: Store, metrics: Metrics,
                     reloader: Reloader, front: Front, hc: HypercornConfig,
                     shutdown: trio.Event, handle_signals: bool,
                     task_status: trio.TaskStatus[Gateway],
                     resume: Callable[[], list[Callable[[], Awaitable[None]]]], *,
                     systemd: SystemdNotifier) -> None:
    supervisors = reloader.supervisors
    events.add_listener(metrics.listen)
    events.add_listener(store.record_event)
    async with trio.open_nursery() as root:
        # The writer first, and out last: it writes what the supervisors' stops publish.
        await root.start(store.run)
        root.start_soon(_save_periodically, store, supervisors)
        await root.start(reloader.run)  # the routes' probes and the webhooks, at once
        events.add_listener(lambda event: systemd.status_changed()
                            if event.kind == "state" else None)
        await root.start(partial(systemd.run, lambda: status_line(supervisors.values()),
                                 shutdown))
        # The signal watcher outlives the forced stop, so that a third signal cannot kill
        # Hestia while its backends are being stopped.
        with trio.CancelScope() as stop_now:
            serving = trio.Event()
            if handle_signals:
                root.start_soon(_watch_signals, shutdown, stop_now)
                root.start_soon(_watch_reloads, reloader, serving)
            # Before the server listens and before any backend starts: a leftover may still
            # hold its upstream's port. Shielded, like every stop of a backend: it is bounded
            # (a probe window plus the largest stop_timeout), and what it adopts must reach a
            # supervisor, which stops it again on the way out.
            with trio.CancelScope(shield=True):
                await recover(config, supervisors)
            # Remote backends a killed Hestia left: decided now, settled in their supervisors'
            # tasks, which hold their requests meanwhile (lifecycle/remote_recovery.py).
            for settle in resume():
                root.start_soon(settle)
            async with trio.open_nursery() as backends:
                # Shielded too: a second signal arriving here must not keep a later supervisor
                # (and the backend it adopted) from ever running. `run` reports started() at
                # once, and a cancelled supervisor stops its backend before it returns.
                with trio.CancelScope(shield=True):
                    for supervisor in supervisors.values():
                        await backends.start(supervisor.run)
                urls = await backends.start(partial(_serve, front, hc, shutdown, reloader,
                                                    events))
                log.info("gateway_listening", urls=urls, services=sorted(supervisors))
                systemd.ready()
                serving.set()
                task_status.started(Gateway(urls, supervisors, shutdown, events, reloader,
                                            systemd=systemd))
            # Those a reload added, stopped by `_serve` on its way out like the others.
            with trio.CancelScope(shield=True):
                await reloader.supervisors_done.wait()
        _save(store, supervisors)
        root.cancel_scope.cancel()


def _prepare_data_dir(config: Config) -> None:
    """The data directory and Hestia's directories in it, private (private_files.py); an
    existing data directory keeps its mode, with a warning when others can list it. Raises
    `StoreError` when they cannot be made (not `OSError`: that would read as the listen
    address's problem)."""
    try:
        private_dir(config.data_dir, tighten_existing=False)
        for name in ("logs", "run"):
            private_dir(config.data_dir / name)
    except OSError as exc:
        raise StoreError(f"cannot make the data directory {config.data_dir}: "
                         f"{exc.strerror or exc}") from exc
    warning = data_dir_warning(config.data_dir)
    if warning is not None:
        log.warning("data_dir_not_private", path=str(config.data_dir), detail=warning)


def _restore(store: Store, supervisors: dict[str, Supervisor], machines: Machines,
             semaphore: SemaphoreHub | None) -> None:
    """What the previous run knew: last use, last error, start history, machines a person
    disabled, Semaphore tasks."""
    rows = store.services()
    for name, supervisor in supervisors.items():
        row = rows.get(name)
        if row is None:
            continue
        supervisor.last_used = row.get("last_used")
        supervisor.last_error = row.get("last_error")
        supervisor.starts = row.get("starts") or 0
        durations = store.start_durations(name)
        supervisor.history = StartHistory(durations)
        if durations:
            supervisor.last_start_duration = durations[-1]
        if semaphore is not None and name in semaphore.automations:
            semaphore.automations[name].restore(store.tasks(name))
    for machine_id, row in store.machines().items():
        if machine_id in machines and row.get("enabled") is not None:
            machines.set_enabled(machine_id, bool(row["enabled"]))


def _save(store: Store, supervisors: dict[str, Supervisor]) -> None:
    for name, supervisor in supervisors.items():
        store.save_service(name, state=supervisor.state.name, last_used=supervisor.last_used,
                           last_error=supervisor.last_error, starts=supervisor.starts)


async def _save_periodically(store: Store, supervisors: dict[str, Supervisor]) -> None:
    # `last_used` changes with every request: saved now and then, and at the end, not each time.
    while True:
        await trio.sleep(SAVE_EVERY_S)
        _save(store, supervisors)


def _write_cli_key(store: Store, config: Config) -> None:
    """A fresh admin key for the CLI on this machine, readable by this user only."""
    key = new_key()
    store.revoke_key(CLI_KEY_NAME)
    store.add_key(CLI_KEY_NAME, "admin", hash_key(key), key[:12])
    path = config.data_dir / CLI_KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file was there before, with other permissions
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")


async def _serve(app: object, hconfig: HypercornConfig, shutdown: trio.Event,
                 reloader: Reloader, events: EventBus, *,
                 task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    async def trigger() -> None:
        await shutdown.wait()
        # Event streams never end by themselves: end them, or the graceful shutdown would
        # wait its whole grace period for every open `GET /v1/events`.
        events.close()

    try:
        await serve(app, hconfig, shutdown_trigger=trigger,  # type: ignore[arg-type]
                    task_status=task_status)
    finally:
        reloader.close()
        for supervisor in reloader.every_supervisor():
            supervisor.close()


async def _watch_signals(shutdown: trio.Event, stop_now: trio.CancelScope) -> None:
    """First signal: graceful shutdown. Second: stop at once (backends are still stopped, each
    within its stop_timeout). Later ones are only logged."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not shutdown.is_set():
                log.info("gateway_stopping", signal=name)
                shutdown.set()
            elif not stop_now.cancel_called:
                log.warning("gateway_stopping_now", signal=name)
                stop_now.cancel()
            else:
                log.warning("gateway_already_stopping", signal=name)


async def _watch_reloads(reloader: Reloader, serving: trio.Event) -> None:
    """SIGHUP: reload the configuration file, once the gateway serves (one at a time: a signal
    arriving during a reload is served after it). The result is logged by the reload itself.
    Caught from the start, so that an early SIGHUP does not end the process."""
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        await serving.wait()
        async for _ in signals:
            log.info("config_reload_requested", signal="SIGHUP")
            await reloader.reload()
