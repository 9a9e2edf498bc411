"""Hestia: a personal on-demand service gateway.

Start a service when its first request arrives, hold requests while it starts, forward them
(streaming both ways) the moment it is ready, and stop it again once it has been idle.
"""

from .config import Config, load_config, parse_config
from .errors import (
    BackendCrashed,
    BackendSleeping,
    BackendUnavailable,
    ConfigError,
    GatewayError,
    HestiaError,
    QueueFull,
    QueueTimeout,
    StartCancelled,
    StartFailed,
    UnknownService,
    UpstreamError,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from .gateway import Gateway, run
from .lifecycle.supervisor import Lease, State, Supervisor

__all__ = [
    "BackendCrashed",
    "BackendSleeping",
    "BackendUnavailable",
    "Config",
    "ConfigError",
    "Gateway",
    "GatewayError",
    "HestiaError",
    "Lease",
    "QueueFull",
    "QueueTimeout",
    "StartCancelled",
    "StartFailed",
    "State",
    "Supervisor",
    "UnknownService",
    "UpstreamError",
    "UpstreamReset",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "load_config",
    "parse_config",
    "run",
]
