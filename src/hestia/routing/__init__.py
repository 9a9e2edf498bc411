"""Routing between the backends of a service: the strategy contract (`strategy.py`), the
built-in strategies (`builtin.py`), the registry that selects strategies by name and loads the
plugins of `strategies/` (`registry.py`), and the route that asks a strategy per request
(`router.py`, imported on its own: it sits above the configuration and the supervisors).

Pure decisions only (no I/O, no locks); the proxy builds the views and the context, asks, and
acts on the answer. `NoRoute` and `StrategyError` live in `hestia.errors` and are offered here
too, for plugins.
"""

from ..errors import NoRoute, StrategyError
from .builtin import (
    BUILTINS,
    ByModel,
    ByModelOptions,
    FirstReady,
    LeastInflight,
    LeastInflightOptions,
    RoundRobin,
    Weighted,
)
from .registry import Registry, StrategyFactory, default_registry, load_plugins
from .strategy import (
    BackendName,
    BackendView,
    Decision,
    LocalAnswer,
    RequestContext,
    Strategy,
    StrategyOptions,
    choose,
    eligible,
)

__all__ = [
    "BUILTINS",
    "BackendName",
    "BackendView",
    "ByModel",
    "ByModelOptions",
    "Decision",
    "FirstReady",
    "LeastInflight",
    "LeastInflightOptions",
    "LocalAnswer",
    "NoRoute",
    "Registry",
    "RequestContext",
    "RoundRobin",
    "Strategy",
    "StrategyError",
    "StrategyFactory",
    "StrategyOptions",
    "Weighted",
    "choose",
    "default_registry",
    "eligible",
    "load_plugins",
]
