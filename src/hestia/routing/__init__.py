"""Routing between the backends of a service: the strategy contract, the registry that selects
strategies by name, the plugin loader for `strategies/*.py`, and the built-in strategies.

Pure decisions only (no I/O, no locks); the proxy builds the views and the context, asks, and
acts on the answer.
"""

from .builtin import ByModel, FirstReady, LeastInflight, RoundRobin, Weighted, register_builtins
from .strategy import (
    BackendView,
    Decision,
    LocalAnswer,
    NoRoute,
    Registry,
    RequestContext,
    Strategy,
    StrategyError,
    StrategyFactory,
    default_registry,
    eligible,
    load_plugins,
)

__all__ = [
    "BackendView",
    "ByModel",
    "Decision",
    "FirstReady",
    "LeastInflight",
    "LocalAnswer",
    "NoRoute",
    "Registry",
    "RequestContext",
    "RoundRobin",
    "Strategy",
    "StrategyError",
    "StrategyFactory",
    "Weighted",
    "default_registry",
    "eligible",
    "load_plugins",
    "register_builtins",
]
