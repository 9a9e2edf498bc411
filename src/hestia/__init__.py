"""Hestia: a personal on-demand service gateway.

Start a service when its first request arrives, hold requests while it starts, forward them
(streaming both ways) the moment it is ready, and stop it again once it has been idle.
"""

from .config import Config, load_config, parse_config
from .errors import (
    BackendCrashed,
    BackendSleeping,
    BackendStopped,
    BackendUnavailable,
    BadFraming,
    BodyTooLarge,
    ConfigError,
    GatewayError,
    HeadersTooLarge,
    HestiaError,
    QueueFull,
    QueueTimeout,
    RequestRejected,
    StartCancelled,
    StartFailed,
    UnknownService,
    UpstreamError,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from .events import Event, EventBus
from .gateway import Gateway, run
from .lifecycle.supervisor import Lease, State, Supervisor
from .reload import ReloadResult

__all__ = [
    "BackendCrashed",
    "BackendSleeping",
    "BackendStopped",
    "BackendUnavailable",
    "BadFraming",
    "BodyTooLarge",
    "Config",
    "ConfigError",
    "Event",
    "EventBus",
    "Gateway",
    "GatewayError",
    "HeadersTooLarge",
    "HestiaError",
    "Lease",
    "QueueFull",
    "QueueTimeout",
    "ReloadResult",
    "RequestRejected",
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
