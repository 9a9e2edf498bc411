"""The built-in strategies: each a small class, with its options model when it has options.

Shared rules, so services behave alike whichever strategy they use:
- Health: unhealthy and FAILED backends are skipped while a healthy one exists; when none is,
  all are candidates (`strategy.eligible`).
- Failover: a retry's `pick` is offered only the backends not yet tried (the route filters
  them, and calls the decision "failover").
- Order: "configured order" is the order of the backends in the config, which the constructor
  gets; ties are broken by it unless a strategy says otherwise.
- Options are strict, like the config: an unknown or ill-typed option is an error at its path
  before the strategy is made (`registry.Registry.create`).

State kept across picks is only a counter or a weight table; nothing here does I/O or locks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import StringConstraints, ValidationInfo, field_validator

from ..errors import NoBackendLeft, UnknownModel
from .strategy import (
    BackendName,
    BackendView,
    Decision,
    LocalAnswer,
    RequestContext,
    Strategy,
    StrategyOptions,
    eligible,
)

__all__ = [
    "BUILTINS",
    "ByModel",
    "ByModelOptions",
    "FirstReady",
    "LeastInflight",
    "LeastInflightOptions",
    "RoundRobin",
    "Weighted",
]


class _Ordered(Strategy):
    """Knows the configured order, so positions survive changes of the eligible set."""

    def __init__(self, options: StrategyOptions, backends: Sequence[str]) -> None:
        super().__init__(options, backends)
        self._position = {name: i for i, name in enumerate(self.order)}

    def position(self, view: BackendView) -> int:
        # A backend the config did not list (never in practice) sorts after the listed ones.
        return self._position.get(view.name, len(self.order))

    def candidates(self, backends: Sequence[BackendView]) -> list[BackendView]:
        return sorted(eligible(backends), key=self.position)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {' '.join(self.order)}>"


class RoundRobin(_Ordered):
    """In turn over the healthy backends, in configured order.

    The counter walks the configured order and skips ineligible backends, so a backend going
    unhealthy and back does not reshuffle the turn of the others.
    """

    name = "round_robin"

    def __init__(self, options: StrategyOptions, backends: Sequence[str]) -> None:
        super().__init__(options, backends)
        self.next = 0  # position in the configured order to try first

    def pick(self, ctx: RequestContext, backends: Sequence[BackendView]) -> Decision:
        candidates = self.candidates(backends)
        chosen = next((b for b in candidates if self.position(b) >= self.next), candidates[0])
        self.next = self.position(chosen) + 1
        return Decision(chosen.name, "balance")


class Weighted(_Ordered):
    """Smooth weighted round robin by each backend's `weight`.

    nginx's algorithm: each pick adds every candidate's weight to its current weight, picks the
    largest (first in configured order on ties) and subtracts the total from it. Weights 5,1,1
    give a a b a c a a: the heavy backend is spread, not bursty.
    """

    name = "weighted"

    def __init__(self, options: StrategyOptions, backends: Sequence[str]) -> None:
        super().__init__(options, backends)
        self.current: dict[str, int] = {}

    def pick(self, ctx: RequestContext, backends: Sequence[BackendView]) -> Decision:
        candidates = self.candidates(backends)
        total = 0
        best: BackendView | None = None
        for view in candidates:
            weight = max(1, view.weight)
            self.current[view.name] = self.current.get(view.name, 0) + weight
            total += weight
            if best is None or self.current[view.name] > self.current[best.name]:
                best = view
        assert best is not None  # eligible() never returns an empty list
        self.current[best.name] -= total
        return Decision(best.name, "balance")


class LeastInflightOptions(StrategyOptions):
    tie_break: Literal["round_robin", "order"] = "round_robin"
    """Which of the backends with equally few requests in flight: `round_robin` (default)
    rotates through them in configured order, so sequential traffic, where every count is 0,
    still spreads; `order` takes the first in configured order, which keeps the later backends
    idle (and, on demand, stopped) until load needs them."""


class LeastInflight(_Ordered):
    """The healthy backend with the fewest requests in flight (ties: option `tie_break`)."""

    name = "least_inflight"
    Options = LeastInflightOptions
    options: LeastInflightOptions

    def __init__(self, options: StrategyOptions, backends: Sequence[str]) -> None:
        super().__init__(options, backends)
        self.next = 0

    def pick(self, ctx: RequestContext, backends: Sequence[BackendView]) -> Decision:
        candidates = self.candidates(backends)
        fewest = min(b.in_flight for b in candidates)
        tied = [b for b in candidates if b.in_flight == fewest]
        if self.options.tie_break == "order":
            chosen = tied[0]
        else:
            chosen = next((b for b in tied if self.position(b) >= self.next), tied[0])
            self.next = self.position(chosen) + 1
        return Decision(chosen.name, "balance")


class FirstReady(_Ordered):
    """Prefer a backend already READY, else the first in configured order.

    The first READY healthy backend in configured order (reason "ready"), so nothing is woken
    while one is already serving; else the first eligible one, which the caller starts
    ("first").
    """

    name = "first_ready"

    def pick(self, ctx: RequestContext, backends: Sequence[BackendView]) -> Decision:
        candidates = self.candidates(backends)
        ready = next((b for b in candidates if b.state == "READY"), None)
        if ready is not None:
            return Decision(ready.name, "ready")
        return Decision(candidates[0].name, "first")


def _tagged(model: str) -> str:
    """Ollama's implicit tag: "llama3" means "llama3:latest". Only the last path segment can
    carry a tag ("host:5000/llama3" has none)."""
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


_ModelName = Annotated[str, StringConstraints(min_length=1)]


class ByModelOptions(StrategyOptions):
    field: str = "model"
    """Where the body names the model (default `model`); a dotted path such as `options.model`
    reads a nested field."""
    header: str | None = None
    """A request header naming the model (such as `x-model`), read before the body; a request
    without it (or with it empty) is routed by the body."""
    map: dict[_ModelName, BackendName]
    """Required: `{model name: backend}`, at least one model. `llama3` and `llama3:latest` are
    the same model (Ollama's implicit tag), so they may not go to different backends."""
    aliases: dict[_ModelName, _ModelName] = {}
    """`{alias: model}`: more names for a model of `map` (tagged or not); an alias may not be
    a model of `map` itself."""
    default: BackendName | None = None
    """The backend for a request naming no model or one not in `map`, and the failover for a
    model whose backend failed. None (the default): such a request is `404 unknown_model`."""

    @field_validator("field")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if not all(value.split(".")):
            raise ValueError(f"must be a dotted name like 'model' or 'options.model', "
                             f"not {value!r}")
        return value

    @field_validator("header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(f"must be a header name, not {value!r}")
        return value.strip().lower() if value is not None else None

    @field_validator("map")
    @classmethod
    def _one_backend_per_model(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("must name at least one model: {model name: backend}")
        by_tag: dict[str, str] = {}
        problems = []
        for model in value:
            other = by_tag.setdefault(_tagged(model), model)
            if value[other] != value[model]:
                problems.append(f"{other!r} and {model!r} are the same model for Ollama but go "
                                f"to different backends")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("aliases")
    @classmethod
    def _aliases_name_models(cls, value: dict[str, str],
                             info: ValidationInfo) -> dict[str, str]:
        """Each alias resolved to the `map` key it means (`llama3` → `llama3:latest`)."""
        models: dict[str, str] | None = info.data.get("map")
        if models is None:  # map itself is invalid, and reported
            return value
        by_tag = {_tagged(m): m for m in models}
        resolved: dict[str, str] = {}
        problems = []
        for alias, target in value.items():
            canonical = target if target in models else by_tag.get(_tagged(target))
            if alias in models:
                problems.append(f"{alias!r} is already a model in map")
            elif canonical is None:
                problems.append(f"{alias!r} names unknown model {target!r} "
                                f"(models: {', '.join(sorted(models))})")
            else:
                resolved[alias] = canonical
        if problems:
            raise ValueError("; ".join(problems))
        return resolved


_EPOCH = "1970-01-01T00:00:00Z"


class ByModel(Strategy):
    """Route by the request's model (`field`, `header`) through `map`/`aliases`, else `default`.

    Lookup: the `header` (when configured and present), else the body `field`; then an exact
    `map` key ("map"), an exact alias ("alias"), then the same two with Ollama's implicit
    `:latest` tag added to both sides. No or an unknown model: the `default` backend ("default")
    or 404 `unknown_model` listing the known names. Health and failover: when the model's backend
    was already tried, or is unhealthy while the default is healthy, the `default` serves
    ("failover"); a tried backend with no default left is 503 `no_backend`. Listings never wake
    a backend.
    """

    name = "by_model"
    Options = ByModelOptions
    options: ByModelOptions
    needs_body = True

    def __init__(self, options: StrategyOptions, backends: Sequence[str]) -> None:
        super().__init__(options, backends)
        self._path = self.options.field.split(".")
        self.models = dict(self.options.map)  # model -> backend
        self.aliases = dict(self.options.aliases)  # alias -> a key of `models`
        self._models_tagged = {_tagged(m): m for m in self.models}
        self._aliases_tagged = {_tagged(a): a for a in self.aliases}
        self.known = sorted(set(self.models) | set(self.aliases))

    def __repr__(self) -> str:
        return (f"<ByModel field={self.options.field} models={len(self.models)} "
                f"default={self.options.default}>")

    def model_of(self, ctx: RequestContext) -> str | None:
        """The requested model name, or None when the request names none."""
        if self.options.header:
            value = ctx.headers.get(self.options.header, "").strip()
            if value:
                return value
        data = ctx.json
        for part in self._path:
            if not isinstance(data, Mapping):
                return None
            data = data.get(part)
        return (data.strip() or None) if isinstance(data, str) else None

    def resolve(self, model: str) -> tuple[str, str] | None:
        """(backend, reason) for a model name, or None when it is not configured."""
        if model in self.models:
            return self.models[model], "map"
        if model in self.aliases:
            return self.models[self.aliases[model]], "alias"
        tagged = _tagged(model)
        if tagged in self._models_tagged:
            return self.models[self._models_tagged[tagged]], "map"
        if tagged in self._aliases_tagged:
            return self.models[self.aliases[self._aliases_tagged[tagged]]], "alias"
        return None

    def pick(self, ctx: RequestContext, backends: Sequence[BackendView]) -> Decision:
        model = self.model_of(ctx)
        hit = self.resolve(model) if model is not None else None
        default = self.options.default
        if hit is None:
            if default is None:
                detail = (f"unknown model {model!r}" if model is not None else
                          f"the request names no model ({self._where_model()})")
                raise UnknownModel(detail, model=model, models=self.known)
            hit = (default, "default")
        backend, reason = hit
        offered = {b.name: b for b in backends}  # a backend already tried is not offered
        mine = offered.get(backend)
        if mine is None or not mine.available:
            # Another backend may not serve this model; only the configured default is a
            # fallback, and for mere ill health only when it is itself healthy.
            fallback = offered.get(default) if default is not None else None
            if fallback is not None and default != backend and (mine is None
                                                                or fallback.available):
                return Decision(fallback.name, "failover")
            if mine is None:
                served = f"model {model!r}" if model is not None else "this request"
                raise NoBackendLeft(f"backend {backend!r} failed and no other backend serves "
                                    f"{served}", model=model)
        return Decision(backend, reason)

    def _where_model(self) -> str:
        body = f"body field {self.options.field!r}"
        return f"header {self.options.header!r} or {body}" if self.options.header else body

    def answer(self, ctx: RequestContext,
               backends: Sequence[BackendView]) -> LocalAnswer | None:
        if ctx.method != "GET":
            return None
        path = ctx.path.rstrip("/")
        if path.endswith("/v1/models"):
            return _json({"object": "list", "data": [_openai_model(m) for m in self.known]})
        if path.endswith("/api/tags"):
            return _json({"models": [_ollama_model(m) for m in self.known]})
        _, sep, model = path.partition("/v1/models/")
        if sep and model in self.known:
            return _json(_openai_model(model))
        return None


def _openai_model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "hestia"}


def _ollama_model(name: str) -> dict[str, Any]:
    # The fields the ollama client's ListResponse reads; sizes and digests are unknown here
    # (the model may live on a machine that is off), so they are zero and empty.
    details = {"parent_model": "", "format": "", "family": "", "families": [],
               "parameter_size": "", "quantization_level": ""}
    return {"name": name, "model": name, "modified_at": _EPOCH, "size": 0, "digest": "",
            "details": details}


def _json(payload: Any) -> LocalAnswer:
    return LocalAnswer(200, [("content-type", "application/json")],
                       json.dumps(payload).encode())


BUILTINS: tuple[type[Strategy], ...] = (RoundRobin, Weighted, LeastInflight, FirstReady, ByModel)
"""Every built-in strategy, registered (origin "builtin") by `registry.default_registry`."""
