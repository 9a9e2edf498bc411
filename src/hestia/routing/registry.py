"""Strategies by name: the `Registry`, the loader for `strategies/*.py` plugins, and the
validation of a service's options against the named strategy's options model.

The built-ins (`builtin.py`) are registered by `default_registry`; a plugin is a `*.py` file
that defines `register_strategy(registry)` and calls `registry.register(MyStrategy)`. Every
problem with a plugin (it does not import, it raises, it registers a name twice) and every bad
option is a `StrategyError` at start naming the file and line or the option's path, never a
surprise at the first request.

Validation has two steps because plugins are only known once `strategies_dir` is loaded: the
configuration keeps a service's `strategy:` options as they are written (`StrategyConfig`), and
`Registry.create`, which runs at start and in `hestia check`, validates them against the
strategy's `Options` model, with the service's backend names in the validation context.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import itertools
import re
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from ..errors import StrategyError
from .builtin import BUILTINS
from .strategy import BACKENDS, Strategy, StrategyOptions

__all__ = [
    "COMMON_KEYS",
    "Registry",
    "StrategyFactory",
    "default_registry",
    "load_plugins",
]

log = structlog.get_logger("hestia.routing")

COMMON_KEYS = ("name", "max_body", "unhealthy_for")
"""The keys of a `strategy:` block that are not the strategy's options (`StrategyConfig`'s
fields): offered with the options when a key is unknown."""

StrategyFactory = Callable[[Mapping[str, Any], Sequence[str]], Any]
"""The older plugin form, `registry.register(name, factory)`: `factory(options, backends)`
gets the options as a plain mapping, must reject the ones it does not know with ValueError,
and returns an object with `name`, `needs_body`, `answer` and `pick`. Still accepted, so
plugins written for it keep working; a `Strategy` subclass with an `Options` model is the
contract now."""


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., Any]  # a Strategy subclass, or an older plugin's factory
    options: type[StrategyOptions] | None  # None: the factory checks a plain mapping itself
    origin: str  # "builtin" or the plugin file
    where: str  # file:line of the class (or of the register call, for a factory)


def _first_doc_line(obj: object) -> str:
    # Its own docstring: inspect.getdoc would give a subclass without one Strategy's.
    doc = inspect.cleandoc(getattr(obj, "__doc__", None) or "")
    return next((line.strip() for line in doc.splitlines() if line.strip()), "")


def _defined_at(cls: type) -> str | None:
    try:
        return f"{inspect.getsourcefile(cls)}:{inspect.getsourcelines(cls)[1]}"
    except (OSError, TypeError):  # made at run time: no source to point at
        return None


class Registry:
    """Strategies by name. Names are unique: a second registration of a name is an error naming
    both places, because silently letting a plugin shadow a built-in (or another plugin,
    depending on file order) would route traffic by accident."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __repr__(self) -> str:
        return f"<Registry {' '.join(self.names())}>"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def register(self, strategy: type[Strategy] | str, factory: StrategyFactory | None = None,
                 *, origin: str | None = None) -> None:
        """Offer the `Strategy` subclass `strategy` under its `name`, or (the older form) a
        `factory` under the name `strategy`. `origin` defaults to the calling file (a plugin).

        Raises StrategyError, naming the file and line of the call, for a name registered
        twice (naming the first place too), an empty name, something that is neither a
        `Strategy` subclass nor callable, or an `Options` that is not a strict
        `StrategyOptions` model.
        """
        caller = sys._getframe(1)
        here = f"{caller.f_code.co_filename}:{caller.f_lineno}"
        if factory is None:
            if not (isinstance(strategy, type) and issubclass(strategy, Strategy)):
                raise StrategyError(f"{here}: register a subclass of hestia.routing.Strategy "
                                    f"(or a name and a factory), not {strategy!r}")
            name, options, factory = strategy.name, strategy.Options, strategy
            where = _defined_at(strategy) or here
            what = f"{strategy.__name__}.name"
            if strategy.pick is Strategy.pick:
                raise StrategyError(f"{here}: {strategy.__name__} does not define pick")
            if not (isinstance(options, type) and issubclass(options, BaseModel)
                    and options.model_config.get("extra") == "forbid"):
                raise StrategyError(f"{here}: {strategy.__name__}.Options must be a "
                                    f"hestia.routing.StrategyOptions model (unknown options "
                                    f"must be errors), not {options!r}")
        else:
            name, options, where, what = strategy, None, here, "strategy name"
            if not callable(factory):
                raise StrategyError(f"{here}: factory for strategy {name!r} is not callable "
                                    f"({type(factory).__name__})")
        if not isinstance(name, str) or not name or name != name.strip():
            raise StrategyError(f"{here}: {what} must be a non-empty string without "
                                f"surrounding spaces, not {name!r}")
        if name in self._entries:
            first = self._entries[name]
            raise StrategyError(f"{here}: strategy {name!r} is already registered "
                                f"(by {first.origin} at {first.where})")
        self._entries[name] = _Entry(factory, options, origin or caller.f_code.co_filename,
                                     where)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def describe(self) -> list[dict[str, str]]:
        """For `GET /v1/strategies`: name, origin ("builtin" or the plugin file) and the first
        line of the strategy's (or factory's) docstring."""
        return [{"name": name, "origin": entry.origin, "doc": _first_doc_line(entry.factory)}
                for name, entry in sorted(self._entries.items())]

    def create(self, name: str, options: Mapping[str, Any], backends: Sequence[str]) -> Any:
        """Make the strategy `name` for a service with `backends` (config order), from the
        options of its `strategy:` block (a `name` key, the selector, is ignored).

        Raises StrategyError for an unknown name (listing the known ones); for options its
        model refuses, with `errors` holding each one's path and message; for a constructor or
        factory that raises (ValueError/TypeError: the message as it is; otherwise naming the
        plugin); or for an older factory's result that lacks a member of the contract.
        """
        entry = self._entries.get(name)
        if entry is None:
            raise StrategyError(f"unknown strategy {name!r}; known: {', '.join(self.names())}")
        raw = {k: v for k, v in options.items() if k != "name"}
        parsed: Any = raw
        if entry.options is not None:
            try:
                parsed = entry.options.model_validate(raw, context={BACKENDS: tuple(backends)})
            except ValidationError as exc:
                problems = [_problem(name, entry.options, err) for err in exc.errors()]
                text = "; ".join(f"{path}: {message}" if path else message
                                 for path, message in problems)
                raise StrategyError(f"strategy {name!r}: {text}", problems) from None
        try:
            strategy = entry.factory(parsed, list(backends))
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


def _problem(strategy: str, model: type[BaseModel], err: Any) -> tuple[str, str]:
    """`(path, message)` of one pydantic error in a strategy's options."""
    # Validator steps (`function-after[...]`) and dict-key markers (`[key]`) are pydantic's,
    # not places in the file.
    loc = [str(x) for x in err["loc"] if not (isinstance(x, str) and "[" in x)]
    path = "".join(f"[{x!r}]" if not x or "." in x or " " in x else f".{x}" if i else x
                   for i, x in enumerate(loc))
    if err["type"] == "extra_forbidden" and len(loc) == 1:
        return path, _unknown_option(strategy, model, loc[0])
    if err["type"] == "extra_forbidden":
        return path, f"unknown option {loc[-1]!r}"
    if err["type"] == "missing":
        return path, f"required by {strategy}"
    return path, err["msg"].removeprefix("Value error, ")


def _unknown_option(strategy: str, model: type[BaseModel], key: str) -> str:
    valid = [*model.model_fields, *COMMON_KEYS]
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    what = f" for {strategy}" if model.model_fields else f": {strategy} takes no options"
    return f"unknown option {key!r}{what}{hint}; valid: {', '.join(valid)}"


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
    # In sys.modules while it executes (and after): dataclasses, typing and pydantic resolve
    # names through it, and `inspect` finds a strategy class's source by it.
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
    registry = Registry()
    for strategy in BUILTINS:
        registry.register(strategy, origin="builtin")
    return registry
