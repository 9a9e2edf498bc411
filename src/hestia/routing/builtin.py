"""The built-in strategies: each a small class plus a factory that validates its options.

Shared rules, so services behave alike whichever strategy they use:
- Health: unhealthy and FAILED backends are skipped while a healthy one exists; when none is,
  all are candidates (`strategy.eligible`).
- Failover: a backend in `exclude` is never returned; when a pick has a non-empty `exclude` (a
  retry after a connection failure) its reason is "failover", so the log tells retries apart.
- Order: "configured order" is the order of the backends in the config, which the factory gets;
  ties are broken by it unless a strategy says otherwise.
- Options are strict, like the config: an unknown option is a ValueError at creation.

State kept across picks is only a counter or a weight table; nothing here does I/O or locks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .strategy import (
    BackendView,
    Decision,
    LocalAnswer,
    NoRoute,
    Registry,
    RequestContext,
    Strategy,
    eligible,
)

__all__ = [
    "ByModel",
    "FirstReady",
    "LeastInflight",
    "RoundRobin",
    "Weighted",
    "register_builtins",
]


def _check_options(strategy: str, options: Mapping[str, Any], known: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        allowed = ", ".join(known) if known else "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for {strategy} "
                         f"(allowed: {allowed})")


class _Ordered(Strategy):
    """Knows the configured order, so positions survive changes of the eligible set."""

    def __init__(self, backends: Sequence[str]) -> None:
        self.order = list(backends)
        self._position = {name: i for i, name in enumerate(self.order)}

    def position(self, view: BackendView) -> int:
        # A backend the config did not list (never in practice) sorts after the listed ones.
        return self._position.get(view.name, len(self.order))

    def candidates(self, backends: Sequence[BackendView],
                   exclude: frozenset[str]) -> list[BackendView]:
        return sorted(eligible(backends, exclude), key=self.position)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {' '.join(self.order)}>"


def _reason(default: str, exclude: frozenset[str]) -> str:
    return "failover" if exclude else default


class RoundRobin(_Ordered):
    """In turn over the eligible backends, in configured order.

    The counter walks the configured order and skips ineligible backends, so a backend going
    unhealthy and back does not reshuffle the turn of the others.
    """

    name = "round_robin"

    def __init__(self, backends: Sequence[str]) -> None:
        super().__init__(backends)
        self.next = 0  # position in the configured order to try first

    def pick(self, ctx: RequestContext, backends: Sequence[BackendView],
             exclude: frozenset[str] = frozenset()) -> Decision:
        candidates = self.candidates(backends, exclude)
        chosen = next((b for b in candidates if self.position(b) >= self.next), candidates[0])
        self.next = self.position(chosen) + 1
        return Decision(chosen.name, _reason("balance", exclude))


def round_robin(options: Mapping[str, Any], backends: Sequence[str]) -> RoundRobin:
    """In turn over the healthy backends in configured order. No options."""
    _check_options("round_robin", options, ())
    return RoundRobin(backends)


class Weighted(_Ordered):
    """Smooth weighted round robin (nginx): each pick adds every candidate's weight to its
    current weight, picks the largest (first in configured order on ties) and subtracts the
    total from it. Weights 5,1,1 give a a b a c a a: the heavy backend is spread, not bursty."""

    name = "weighted"

    def __init__(self, backends: Sequence[str]) -> None:
        super().__init__(backends)
        self.current: dict[str, int] = {}

    def pick(self, ctx: RequestContext, backends: Sequence[BackendView],
             exclude: frozenset[str] = frozenset()) -> Decision:
        candidates = self.candidates(backends, exclude)
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
        return Decision(best.name, _reason("balance", exclude))


def weighted(options: Mapping[str, Any], backends: Sequence[str]) -> Weighted:
    """Smooth weighted round robin by each backend's `weight`. No options."""
    _check_options("weighted", options, ())
    return Weighted(backends)


class LeastInflight(_Ordered):
    """The eligible backend with the fewest requests in flight. Ties: `tie_break: round_robin`
    (default) rotates through the tied backends in configured order, so sequential traffic,
    where every count is 0, still spreads; `tie_break: order` takes the first in configured order,
    which keeps the later backends idle (and, on demand, stopped) until load needs them."""

    name = "least_inflight"

    def __init__(self, backends: Sequence[str], tie_break: str) -> None:
        super().__init__(backends)
        self.tie_break = tie_break
        self.next = 0

    def pick(self, ctx: RequestContext, backends: Sequence[BackendView],
             exclude: frozenset[str] = frozenset()) -> Decision:
        candidates = self.candidates(backends, exclude)
        fewest = min(b.in_flight for b in candidates)
        tied = [b for b in candidates if b.in_flight == fewest]
        if self.tie_break == "order":
            chosen = tied[0]
        else:
            chosen = next((b for b in tied if self.position(b) >= self.next), tied[0])
            self.next = self.position(chosen) + 1
        return Decision(chosen.name, _reason("balance", exclude))


def least_inflight(options: Mapping[str, Any], backends: Sequence[str]) -> LeastInflight:
    """Fewest requests in flight. Option `tie_break`: "round_robin" (default) or "order"."""
    _check_options("least_inflight", options, ("tie_break",))
    tie_break = options.get("tie_break", "round_robin")
    if tie_break not in ("round_robin", "order"):
        raise ValueError(f"tie_break must be 'round_robin' or 'order', not {tie_break!r}")
    return LeastInflight(backends, tie_break)


class FirstReady(_Ordered):
    """The first READY backend in configured order (reason "ready"), so nothing is woken while
    one is already serving; else the first eligible one, which the caller starts ("first")."""

    name = "first_ready"

    def pick(self, ctx: RequestContext, backends: Sequence[BackendView],
             exclude: frozenset[str] = frozenset()) -> Decision:
        candidates = self.candidates(backends, exclude)
        ready = next((b for b in candidates if b.state == "READY"), None)
        if ready is not None:
            return Decision(ready.name, _reason("ready", exclude))
        return Decision(candidates[0].name, _reason("first", exclude))


def first_ready(options: Mapping[str, Any], backends: Sequence[str]) -> FirstReady:
    """Prefer a backend already READY, else the first in configured order. No options."""
    _check_options("first_ready", options, ())
    return FirstReady(backends)


def _tagged(model: str) -> str:
    """Ollama's implicit tag: "llama3" means "llama3:latest". Only the last path segment can
    carry a tag ("host:5000/llama3" has none)."""
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


_EPOCH = "1970-01-01T00:00:00Z"


class ByModel(Strategy):
    """Route by model name, and answer model listings from the configuration.

    Lookup: the `header` (when configured and present), else the body `field`; then an exact
    `map` key ("map"), an exact alias ("alias"), then the same two with Ollama's implicit
    `:latest` tag added to both sides. No or an unknown model: the `default` backend ("default")
    or 404 `unknown_model` listing the known names. Health and failover: when the model's backend
    is excluded, or unhealthy while the default is healthy, the `default` serves ("failover");
    an excluded backend with no default left is 503 `no_backend`. Listings never wake a backend.
    """

    name = "by_model"
    needs_body = True

    def __init__(self, *, field: str, header: str | None, models: Mapping[str, str],
                 aliases: Mapping[str, str], default: str | None) -> None:
        self.field = field
        self._path = field.split(".")
        self.header = header
        self.models = dict(models)  # model -> backend
        self.aliases = dict(aliases)  # alias -> a key of `models`
        self.default = default
        self._models_tagged = {_tagged(m): m for m in self.models}
        self._aliases_tagged = {_tagged(a): a for a in self.aliases}
        self.known = sorted(set(self.models) | set(self.aliases))

    def __repr__(self) -> str:
        return f"<ByModel field={self.field} models={len(self.models)} default={self.default}>"

    def model_of(self, ctx: RequestContext) -> str | None:
        """The requested model name, or None when the request names none."""
        if self.header:
            value = ctx.headers.get(self.header, "").strip()
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

    def pick(self, ctx: RequestContext, backends: Sequence[BackendView],
             exclude: frozenset[str] = frozenset()) -> Decision:
        model = self.model_of(ctx)
        hit = self.resolve(model) if model is not None else None
        if hit is None:
            if self.default is None:
                detail = (f"unknown model {model!r}" if model is not None else
                          f"the request names no model ({self._where_model()})")
                raise NoRoute(404, "unknown_model", detail, model=model, models=self.known)
            hit = (self.default, "default")
        backend, reason = hit
        views = {b.name: b for b in backends}

        def available(name: str) -> bool:
            view = views.get(name)
            return view is None or view.available

        fallback = self.default
        if backend in exclude or not available(backend):
            # Another backend may not serve this model; only the configured default is a
            # fallback, and for mere ill health only when it is itself healthy.
            if (fallback is not None and fallback != backend and fallback not in exclude
                    and (backend in exclude or available(fallback))):
                return Decision(fallback, "failover")
            if backend in exclude:
                served = f"model {model!r}" if model is not None else "this request"
                raise NoRoute(503, "no_backend",
                              f"backend {backend!r} failed and no other backend serves "
                              f"{served}", retry_after=1, model=model)
        return Decision(backend, _reason(reason, exclude))

    def _where_model(self) -> str:
        body = f"body field {self.field!r}"
        return f"header {self.header!r} or {body}" if self.header else body

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


def _string_map(option: str, value: Any, problems: list[str]) -> dict[str, str]:
    if not isinstance(value, Mapping):
        problems.append(f"{option} must be a mapping, not {type(value).__name__}")
        return {}
    bad = [k for k, v in value.items() if not (isinstance(k, str) and k and isinstance(v, str))]
    if bad:
        problems.append(f"{option}: keys and values must be non-empty strings ({bad!r})")
    return {k: v for k, v in value.items() if k not in bad}


def by_model(options: Mapping[str, Any], backends: Sequence[str]) -> ByModel:
    """Route by the request's model (`field`, `header`) through `map`/`aliases`, else `default`.

    Options: `field` (default "model"; dotted paths like "options.model"), `header` (e.g.
    "x-model", read before the body), `map` ({model: backend}, required), `aliases` ({alias:
    model in map}), `default` (a backend for unknown or missing models; else 404).
    """
    _check_options("by_model", options, ("field", "header", "map", "aliases", "default"))
    problems: list[str] = []
    known_backends = ", ".join(backends)
    field = options.get("field", "model")
    if not isinstance(field, str) or not all(field.split(".")):
        problems.append(f"field must be a dotted name like 'model' or 'options.model', "
                        f"not {field!r}")
        field = "model"
    header = options.get("header")
    if header is not None and (not isinstance(header, str) or not header.strip()):
        problems.append(f"header must be a header name, not {header!r}")
        header = None
    if "map" not in options:
        problems.append("map is required: {model name: backend}")
    models = _string_map("map", options.get("map", {}), problems)
    if "map" in options and not models:
        problems.append("map must name at least one model")
    for model, backend in models.items():
        if backend not in backends:
            problems.append(f"map[{model!r}]: unknown backend {backend!r} "
                            f"(backends: {known_backends})")
    by_tag: dict[str, str] = {}
    for model in models:
        other = by_tag.setdefault(_tagged(model), model)
        if models[other] != models[model]:
            problems.append(f"map: {other!r} and {model!r} are the same model for Ollama "
                            f"but go to different backends")
    aliases: dict[str, str] = {}
    for alias, target in _string_map("aliases", options.get("aliases") or {}, problems).items():
        canonical = target if target in models else by_tag.get(_tagged(target))
        if alias in models:
            problems.append(f"aliases[{alias!r}]: {alias!r} is already a model in map")
        elif canonical is None:
            problems.append(f"aliases[{alias!r}]: unknown model {target!r} "
                            f"(models: {', '.join(sorted(models))})")
        else:
            aliases[alias] = canonical
    default = options.get("default")
    if default is not None and default not in backends:
        problems.append(f"default: unknown backend {default!r} (backends: {known_backends})")
    if problems:
        raise ValueError("; ".join(problems))
    return ByModel(field=field, header=header.strip().lower() if header else None,
                   models=models, aliases=aliases, default=default)

def register_builtins(registry: Registry) -> None:
    """Register every built-in strategy (origin "builtin")."""
    for factory in (round_robin, weighted, least_inflight, first_ready, by_model):
        registry.register(factory.__name__, factory, origin="builtin")

