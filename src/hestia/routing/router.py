"""Routes: one service's backends, and the strategy that picks one of them per request.

A service with one backend has a route too, with no strategy: the proxy takes its one
supervisor at once (the hot path does nothing more). A service with several backends asks its
strategy, giving it a snapshot of each backend (state, in flight, health, last use, weight).

Health is the route's business, not the strategy's:

- passive: a backend whose upstream refused a connection, or answered 5xx, is marked unhealthy
  for `strategy.unhealthy_for`; strategies skip it while a healthy backend exists;
- active: while a backend is marked unhealthy and READY, the route probes it every
  `PROBE_EVERY` seconds, and a probe that succeeds marks it healthy again at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
import trio

from ..config import BACKEND_SEPARATOR, Config, RouteConfig, StrategyConfig
from ..errors import ConfigError, StrategyError
from ..lifecycle.leases import State
from ..lifecycle.supervisor import Supervisor
from .registry import Registry, default_registry, load_plugins
from .strategy import BackendView, Decision, LocalAnswer, RequestContext, Strategy, choose

__all__ = ["PROBE_EVERY", "Route", "build_routes", "load_registry", "strategy_errors"]

log = structlog.get_logger("hestia.routing")

PROBE_EVERY = 1.0


class Route:
    """One service: `single` when it has one backend, else `strategy` over `backends`."""

    def __init__(self, service: str, backends: Sequence[tuple[str, Supervisor]],
                 strategy: Strategy | None = None,
                 config: StrategyConfig | None = None) -> None:
        self.service = service
        self.backends = dict(backends)  # backend name → supervisor, in configured order
        self.single = backends[0][1] if len(backends) == 1 else None
        self.first = backends[0][1]
        self.strategy = strategy
        self.config = config or StrategyConfig()
        self.decisions: Counter[tuple[str, str]] = Counter()
        self._unhealthy_until: dict[str, float] = {}

    def __repr__(self) -> str:
        how = "single" if self.single is not None else getattr(self.strategy, "name", "?")
        return f"<Route {self.service} {how} backends={list(self.backends)}>"

    @property
    def needs_body(self) -> bool:
        return self.strategy is not None and bool(self.strategy.needs_body)

    def healthy(self, name: str) -> bool:
        until = self._unhealthy_until.get(name)
        if until is not None and trio.current_time() >= until:
            del self._unhealthy_until[name]
            until = None
        return until is None

    def views(self) -> list[BackendView]:
        return [BackendView(name, sup.state.value, sup.in_flight, self.healthy(name),
                            sup.last_used, sup.config.weight)
                for name, sup in self.backends.items()]

    def answer(self, ctx: RequestContext) -> LocalAnswer | None:
        assert self.strategy is not None
        return self.strategy.answer(ctx, self.views())

    def pick(self, ctx: RequestContext,
             exclude: frozenset[str] = frozenset()) -> tuple[Supervisor, Decision]:
        """The backend for this request, not one of `exclude` (tried by a failover retry).
        Raises `NoRoute` (a `GatewayError`); see `strategy.choose`."""
        assert self.strategy is not None
        decision = choose(self.strategy, ctx, self.views(), exclude)
        self.decisions[decision.backend, decision.reason] += 1
        return self.backends[decision.backend], decision

    def mark_unhealthy(self, name: str, detail: str) -> None:
        if self.single is not None:
            return
        self._unhealthy_until[name] = trio.current_time() + self.config.unhealthy_for
        log.warning("backend_unhealthy", service=self.service, backend=name, detail=detail,
                    for_s=self.config.unhealthy_for)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Active health: probe the unhealthy READY backends until they answer again."""
        task_status.started()
        if self.single is not None:
            return
        while True:
            await trio.sleep(PROBE_EVERY)
            for name in list(self._unhealthy_until):
                supervisor = self.backends[name]
                if self.healthy(name) or supervisor.state is not State.READY:
                    continue
                if await supervisor.probe.check():
                    self._unhealthy_until.pop(name, None)
                    log.info("backend_healthy", service=self.service, backend=name)

    def status(self) -> dict[str, Any]:
        return {
            "serviceId": self.service,
            "strategy": None if self.single is not None else self.config.name,
            "options": self.config.options,
            "backends": [{"name": name, "id": sup.name, "state": sup.state.value,
                          "healthy": self.healthy(name), "weight": sup.config.weight,
                          "inFlight": sup.in_flight} for name, sup in self.backends.items()],
            "decisions": [{"backend": b, "reason": r, "count": n}
                          for (b, r), n in sorted(self.decisions.items())],
        }


def load_registry(directory: Path) -> Registry:
    """The built-ins and every plugin in `directory`. Raises `ConfigError` naming the plugin
    file and line when one is broken or registers a name twice."""
    registry = default_registry()
    try:
        load_plugins(registry, directory)
    except StrategyError as exc:
        raise ConfigError([("strategies_dir", str(exc))]) from None
    return registry


def _make(service: str, route: RouteConfig, backends: Sequence[str], registry: Registry,
          errors: list[tuple[str, str]]) -> Strategy | None:
    """The route's strategy, or None with its problems added to `errors`, each at its path
    (`services.<id>.strategy`, or below it for one option: `services.<id>.strategy.map.x`)."""
    try:
        return registry.create(route.strategy.name, route.strategy.options, backends)
    except StrategyError as exc:
        base = f"services.{service}.strategy"
        errors += [(f"{base}.{path}" if path else base, message) for path, message in exc.errors]
        return None


def strategy_errors(routes: Mapping[str, RouteConfig],
                    registry: Registry) -> list[tuple[str, str]]:
    """Make every service's strategy once, as the gateway will (for `hestia check`): the
    `(path, message)` of each problem (unknown name, each bad option)."""
    errors: list[tuple[str, str]] = []
    for service, route in routes.items():
        if len(route.backends) > 1:
            _make(service, route, [b.partition(BACKEND_SEPARATOR)[2] for b in route.backends],
                  registry, errors)
    return errors


def build_routes(config: Config, supervisors: Mapping[str, Supervisor],
                 registry: Registry) -> dict[str, Route]:
    """A route per service. Raises `ConfigError` listing every strategy problem (unknown name,
    each bad option), with its path."""
    routes: dict[str, Route] = {}
    errors: list[tuple[str, str]] = []
    for service, route in config.routes.items():
        backends = [(bid.partition(BACKEND_SEPARATOR)[2] or bid, supervisors[bid])
                    for bid in route.backends]
        if not backends:
            continue
        strategy: Strategy | None = None
        if len(backends) > 1:
            strategy = _make(service, route, [name for name, _ in backends], registry, errors)
            if strategy is None:
                continue
        routes[service] = Route(service, backends, strategy, route.strategy)
    if errors:
        raise ConfigError(errors)
    return routes
