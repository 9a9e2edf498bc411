"""The routing contract: what a strategy sees, what it answers, and how strategies are found.

A service with several backends asks its strategy, once per request, which backend to use. The
strategy is a small policy (STYLE rule 9): it gets a snapshot of the backends (`BackendView`) and
of the request (`RequestContext`) and returns a `Decision`, answers the request itself
(`LocalAnswer`, e.g. a model listing that must not wake anything), or refuses (`NoRoute`). It does
no I/O and holds no locks: everything runs on the one trio thread, between two awaits, so a
decision can never be interrupted halfway and needs no synchronisation.

Strategies are selected by name from a `Registry`: the built-ins (`builtin.py`) plus user
plugins, every `strategies/*.py` that defines `register_strategy(registry)`. Every problem with a
plugin (it does not import, it raises, it registers a name twice) is a `StrategyError` at start
naming the file and line, never a surprise at the first request.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import re
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog

from ..errors import GatewayError, HestiaError

__all__ = [
    "BackendView",
    "Decision",
    "LocalAnswer",
    "NoRoute",
    "Registry",
    "RequestContext",
    "Strategy",
    "StrategyError",
    "StrategyFactory",
    "default_registry",
    "eligible",
    "load_plugins",
]

log = structlog.get_logger("hestia.routing")

STATES = frozenset({"COLD", "STARTING", "READY", "STOPPING", "FAILED"})


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
    "balance", "ready", "first", "failover", or a plugin's own word)."""

    backend: str
    reason: str


@dataclass(frozen=True)
class LocalAnswer:
    """A response the strategy gives itself, so no backend is woken (e.g. a model listing)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class NoRoute(GatewayError):
    """The request cannot be routed; answered with `status` and the common JSON error body
    (`error`, `detail`, plus `extra` fields such as the known `models`). A `GatewayError`, so
    `errors.error_response` maps it like every other error; the caller fills in `service`."""

    def __init__(self, status: int, error: str, detail: str, *, service: str | None = None,
                 retry_after: float | None = None, **extra: Any) -> None:
        super().__init__(detail, service=service, retry_after=retry_after, **extra)
        self.status = status
        self.code = error


class StrategyError(HestiaError):
    """A strategy cannot be registered, loaded or created. Raised at start, never per request;
    the message names the plugin file and line where that is known."""


@runtime_checkable
class Strategy(Protocol):
    """A routing policy. Subclass it to inherit the defaults (`needs_body = False`, no local
    answers); any object with these members works too.

    `pick` must never return a backend named in `exclude` (backends already tried by a failover
    retry) and raises `NoRoute(503, "no_backend", …)` when none is left; see `eligible`.
    """

    name: str
    needs_body: bool = False

    def answer(self, ctx: RequestContext,
               backends: Sequence[BackendView]) -> LocalAnswer | None:
        """Answer the request without a backend, or None to route it (the default)."""
        return None

    def pick(self, ctx: RequestContext, backends: Sequence[BackendView],
             exclude: frozenset[str] = frozenset()) -> Decision:
        """Choose one backend. Raises `NoRoute`."""
        ...


# (options from the config without `name`, backend names in config order) -> strategy.
# Raises ValueError (or TypeError) with a clear message on bad options.
StrategyFactory = Callable[[Mapping[str, Any], Sequence[str]], Strategy]


def eligible(backends: Sequence[BackendView],
             exclude: frozenset[str] = frozenset()) -> list[BackendView]:
    """The backends a strategy may choose from, in the given order: the non-excluded ones that
    are `available`, or, when none is, all the non-excluded ones (an unhealthy backend may still
    answer; refusing outright would turn a flaky health check into an outage).

    Raises NoRoute(503, "no_backend") when every backend is excluded (or there is none).
    """
    candidates = [b for b in backends if b.name not in exclude]
    if not candidates:
        tried = ", ".join(sorted(exclude)) or "none"
        raise NoRoute(503, "no_backend", f"no backend left to try (already tried: {tried})",
                      retry_after=1)
    healthy = [b for b in candidates if b.available]
    return healthy or candidates


@dataclass(frozen=True)
class _Entry:
    factory: StrategyFactory
    origin: str  # "builtin" or the plugin file
    where: str  # file:line of the register call


def _first_doc_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return next((line.strip() for line in doc.splitlines() if line.strip()), "")


class Registry:
    """Strategy factories by name. Names are unique: a second registration of a name is an
    error naming both places, because silently letting a plugin shadow a built-in (or another
    plugin, depending on file order) would route traffic by accident."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __repr__(self) -> str:
        return f"<Registry {' '.join(self.names())}>"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def register(self, name: str, factory: StrategyFactory, *, origin: str | None = None) -> None:
        """Offer `factory` under `name`. `origin` defaults to the calling file (a plugin).

        Raises StrategyError on a duplicate name (naming the first and the second file:line), an
        empty name or a factory that is not callable.
        """
        caller = sys._getframe(1)
        where = f"{caller.f_code.co_filename}:{caller.f_lineno}"
        if not isinstance(name, str) or not name or name != name.strip():
            raise StrategyError(f"{where}: strategy name must be a non-empty string without "
                                f"surrounding spaces, not {name!r}")
        if not callable(factory):
            raise StrategyError(f"{where}: factory for strategy {name!r} is not callable "
                                f"({type(factory).__name__})")
        if name in self._entries:
            first = self._entries[name]
            raise StrategyError(f"{where}: strategy {name!r} is already registered "
                                f"(by {first.origin} at {first.where})")
        self._entries[name] = _Entry(factory, origin or caller.f_code.co_filename, where)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def describe(self) -> list[dict[str, str]]:
        """For `GET /v1/strategies`: name, origin ("builtin" or the plugin file) and the first
        line of the factory's docstring."""
        return [{"name": name, "origin": entry.origin, "doc": _first_doc_line(entry.factory)}
                for name, entry in sorted(self._entries.items())]

    def create(self, name: str, options: Mapping[str, Any], backends: Sequence[str]) -> Strategy:
        """Build the strategy `name` for a service with `backends` (config order). `options` is
        the config's `strategy:` block; its `name` key, the selector, is not passed on.

        Raises StrategyError for an unknown name (listing the known ones), bad options (the
        factory's ValueError/TypeError message), a factory that fails otherwise, or a result
        that lacks a member of the `Strategy` protocol.
        """
        entry = self._entries.get(name)
        if entry is None:
            raise StrategyError(f"unknown strategy {name!r}; known: {', '.join(self.names())}")
        try:
            options = {k: v for k, v in options.items() if k != "name"}
            strategy = entry.factory(options, list(backends))
        except (ValueError, TypeError) as exc:
            raise StrategyError(f"strategy {name!r}: {exc}") from exc
        except Exception as exc:  # a plugin's bug: say whose, at start
            raise StrategyError(f"strategy {name!r} (from {entry.where}) failed to build: "
                                f"{type(exc).__name__}: {exc}") from exc
        missing = [m for m in ("name", "needs_body", "answer", "pick") if not hasattr(strategy, m)]
        if missing or not callable(strategy.pick) or not callable(strategy.answer):
            raise StrategyError(
                f"strategy {name!r} (from {entry.where}) built {type(strategy).__name__}, which "
                f"lacks {', '.join(missing) or 'callable pick/answer'} (subclass "
                f"hestia.routing.Strategy to inherit the defaults)")
        return strategy


_module_serials = itertools.count(1)


def _line_in(exc: BaseException, path: Path) -> int | None:
    """The line in `path` where `exc` happened: a SyntaxError knows it; otherwise the last
    traceback frame inside that file (the frames below it are library code it called)."""
    if isinstance(exc, SyntaxError) and exc.filename and Path(exc.filename).resolve() == path:
        return exc.lineno
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == path:
            line = frame.lineno
    return line


def _plugin_error(path: Path, what: str, exc: BaseException) -> StrategyError:
    line = _line_in(exc, path)
    where = f"{path}:{line}" if line is not None else str(path)
    message = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    return StrategyError(f"{where}: strategy plugin {what}: {type(exc).__name__}: {message}")


def load_plugins(registry: Registry, directory: Path) -> list[Path]:
    """Import every `*.py` in `directory` (sorted, not recursive, skipping `_*.py`) and call its
    `register_strategy(registry)`. A file without that hook is ignored (logged at debug); a
    missing directory loads nothing. Returns the files whose hook ran.

    Raises StrategyError naming the file and line when a plugin fails to import, its hook raises,
    or it registers a name already taken. A failing plugin's registrations are rolled back.
    """
    directory = Path(directory)
    if not directory.exists():
        log.debug("strategy_plugins_absent", directory=str(directory))
        return []
    if not directory.is_dir():
        raise StrategyError(f"{directory}: strategy plugin directory is not a directory")
    loaded: list[Path] = []
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_") or not path.is_file():
            continue
        path = path.resolve()
        if _load_one(registry, path):
            loaded.append(path)
    return loaded


def _load_one(registry: Registry, path: Path) -> bool:
    # A unique module name per load: two files with one stem, or the same directory loaded twice
    # (tests, a reload), must not share or replace each other's module.
    stem = re.sub(r"\W", "_", path.stem)  # "my-plugin.v2" is a file name, not a module path
    module_name = f"hestia_strategy_plugin_{next(_module_serials)}_{stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise StrategyError(f"{path}: cannot be imported as a strategy plugin")
    module = importlib.util.module_from_spec(spec)
    # In sys.modules while it executes: dataclasses and typing resolve names through it.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise _plugin_error(path, "failed to import", exc) from exc
    hook = getattr(module, "register_strategy", None)
    if hook is None:
        del sys.modules[module_name]
        log.debug("strategy_plugin_skipped", file=str(path), reason="no register_strategy")
        return False
    if not callable(hook):
        raise StrategyError(f"{path}: register_strategy is not a function")
    before = dict(registry._entries)
    try:
        hook(registry)
    except StrategyError:
        registry._entries = before  # already names the file:line of the bad register call
        raise
    except Exception as exc:
        registry._entries = before
        raise _plugin_error(path, "register_strategy failed", exc) from exc
    added = sorted(set(registry._entries) - set(before))
    log.info("strategy_plugin_loaded", file=str(path), strategies=added)
    return True


def default_registry() -> Registry:
    """A registry holding the built-in strategies (no plugins)."""
    from .builtin import register_builtins  # builtin.py imports this module: import on use

    registry = Registry()
    register_builtins(registry)
    return registry
