"""The routing contract: what a strategy sees, what it answers, and how it declares its options.

A service with several backends asks its strategy, once per request, which backend to use. Like
a Caddy selection policy, a strategy is a small class with one method (STYLE rule 9):

    class Mine(Strategy):
        name = "mine"                      # what `strategy: {name: mine}` selects
        Options = MineOptions              # a StrategyOptions model; default: no options

        def pick(self, ctx, backends) -> Decision: ...

`pick` gets a snapshot of the request (`RequestContext`) and of the backends it may choose from
(`BackendView`; a failover retry leaves out the ones already tried) and returns a `Decision`, or
refuses with `NoRoute`. Optionally `needs_body = True` (the request's JSON body in `ctx.json`)
and `answer`, to answer a request itself (`LocalAnswer`, e.g. a model listing that must wake
nothing). A strategy does no I/O and holds no locks: it runs on the one trio thread, between two
awaits, so a decision can never be interrupted halfway and needs no synchronisation.

Options are validated before the strategy is made, at start and by `hestia check`, against its
`Options` model, with the service's backend names in the validation context (`BackendName`), so
each bad option is reported at its own path (`services.llm.strategy.map.llama3`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo

from ..errors import GatewayError, NoBackendLeft

__all__ = [
    "BACKENDS",
    "BackendName",
    "BackendView",
    "Decision",
    "LocalAnswer",
    "RequestContext",
    "Strategy",
    "StrategyOptions",
    "choose",
    "eligible",
]

STATES = frozenset({"COLD", "STARTING", "READY", "STOPPING", "FAILED"})

BACKENDS = "backends"
"""The key of the validation context that holds the service's backend names, in config order."""


@dataclass(frozen=True, slots=True)
class BackendView:
    """What a strategy may know of one backend: a snapshot taken for this one decision.

    `state` is the supervisor's state name (one of `STATES`). `healthy` is False while passive or
    active health checks mark the backend down. `last_used` is wall-clock seconds (None: never).
    `weight` is the configured weight (≥ 1), used by `weighted`.
    """

    name: str
    state: str
    in_flight: int
    healthy: bool
    last_used: float | None
    weight: int = 1

    @property
    def available(self) -> bool:
        """Healthy and not FAILED: a FAILED backend is in cool-down and would only fail again."""
        return self.healthy and self.state != "FAILED"


@dataclass(frozen=True)
class RequestContext:
    """The request as a strategy sees it. `path` is below the service (`/v1/models`), `headers`
    have lower-case names, and `json` is the parsed body only when the strategy declared
    `needs_body` (and the body was JSON); otherwise None, so unneeded bodies stay streamed."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    client: str | None
    json: Any = None


@dataclass(frozen=True)
class Decision:
    """The backend to use and why: `reason` is logged and counted ("map", "alias", "default",
    "balance", "ready", "first", or a plugin's own word). The route makes it "failover" for a
    retry, whatever the strategy said, so the log tells retries apart."""

    backend: str
    reason: str


@dataclass(frozen=True)
class LocalAnswer:
    """A response the strategy gives itself, so no backend is woken (e.g. a model listing)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class StrategyOptions(BaseModel):
    """A strategy's options: the keys of the service's `strategy:` block other than `name`,
    `max_body` and `unhealthy_for`. Strict like the configuration (frozen; an unknown option is
    an error naming the closest valid one and all of them). Each field's docstring is its
    documentation. With no fields (this class itself) the strategy takes no options."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


def _known_backend(value: str, info: ValidationInfo) -> str:
    names = (info.context or {}).get(BACKENDS)
    if names is not None and value not in names:
        raise ValueError(f"unknown backend {value!r} (backends: {', '.join(names)})")
    return value


BackendName = Annotated[str, AfterValidator(_known_backend)]
"""An option naming one of the service's backends: an unknown name is an error at its path."""


class Strategy:
    """A routing policy. Subclass it, set `name`, and implement `pick`; the rest is optional.

    The registry makes one instance per service, `cls(options, backends)`: `options` an instance
    of `Options`, already validated, and `backends` the service's backend names in configured
    order. The default constructor keeps them as `self.options` and `self.order`.
    """

    name: ClassVar[str] = ""
    """The name the configuration selects it by (`strategy: {name: ...}`); unique."""
    Options: ClassVar[type[StrategyOptions]] = StrategyOptions
    """Its options model (default: no options)."""
    needs_body: ClassVar[bool] = False
    """True: the request's JSON body is read (up to `strategy.max_body`) into `ctx.json`."""

    def __init__(self, options: StrategyOptions, backends: Sequence[str]) -> None:
        self.options = options
        self.order = tuple(backends)

    def pick(self, ctx: RequestContext, backends: Sequence[BackendView]) -> Decision:
        """Choose one of `backends` (never empty; a retry leaves out those already tried).
        Raises `NoRoute` to refuse the request."""
        raise NotImplementedError

    def answer(self, ctx: RequestContext,
               backends: Sequence[BackendView]) -> LocalAnswer | None:
        """Answer the request without a backend, or None to route it (the default)."""
        return None


def eligible(backends: Sequence[BackendView],
             exclude: frozenset[str] = frozenset()) -> list[BackendView]:
    """The backends a strategy may choose from, in the given order: the ones that are
    `available`, or, when none is, all of them (an unhealthy backend may still answer; refusing
    outright would turn a flaky health check into an outage). `exclude` is for strategies
    written for the older contract, whose `pick` was given the tried backends to skip.

    Raises NoBackendLeft (503 "no_backend") when there is no backend (or every one is excluded).
    """
    candidates = [b for b in backends if b.name not in exclude]
    if not candidates:
        tried = ", ".join(sorted(exclude)) or "none"
        raise NoBackendLeft(f"no backend left to try (already tried: {tried})")
    healthy = [b for b in candidates if b.available]
    return healthy or candidates


def choose(strategy: Strategy, ctx: RequestContext, backends: Sequence[BackendView],
           exclude: frozenset[str] = frozenset()) -> Decision:
    """Ask `strategy` to pick among `backends` less `exclude` (those a failover retry already
    tried), as a route does. A retry's decision has the reason "failover".

    Raises NoBackendLeft when every backend is excluded, the strategy's `NoRoute`, or a
    GatewayError (500) when the strategy picks a backend it was not offered (a plugin's bug:
    the request must not go to a backend that just failed, or to none).
    """
    offered = [b for b in backends if b.name not in exclude]
    if not offered:
        tried = ", ".join(sorted(exclude)) or "none"
        raise NoBackendLeft(f"no backend left to try (already tried: {tried})")
    decision = strategy.pick(ctx, offered)
    if not any(b.name == decision.backend for b in offered):
        name = getattr(strategy, "name", type(strategy).__name__)
        raise GatewayError(f"strategy {name!r} picked {decision.backend!r}, which is not one "
                           f"of the backends offered "
                           f"({', '.join(b.name for b in offered)})")
    return Decision(decision.backend, "failover") if exclude else decision
