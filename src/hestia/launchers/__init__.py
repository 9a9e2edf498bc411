"""Launchers: how a backend is started and stopped (one protocol, one small module each)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..config import LauncherConfig
from .base import LaunchContext, Launcher, Running
from .command import CommandLauncher
from .container import ContainerLauncher
from .external import ExternalLauncher
from .process import ProcessLauncher
from .semaphore import SemaphoreLauncher
from .wol import WolLauncher

if TYPE_CHECKING:
    from ..semaphore.hub import SemaphoreHub

__all__ = [
    "CommandLauncher",
    "ContainerLauncher",
    "ExternalLauncher",
    "LaunchContext",
    "Launcher",
    "ProcessLauncher",
    "SemaphoreLauncher",
    "Running",
    "WolLauncher",
    "make_launcher",
]


def make_launcher(config: LauncherConfig, log_path: Path, record_path: Path | None = None, *,
                  service: str = "", semaphore: SemaphoreHub | None = None) -> Launcher:
    """The launcher a configuration asks for; `log_path` is where what it runs writes, and
    `record_path` where the process it keeps running is recorded for recovery after a crash
    (launchers/registry.py; None: not recorded). Only the launchers that keep a local process
    running as the backend use it. A `semaphore` launcher needs the gateway's `semaphore` hub
    and the `service` it starts."""
    if config.process is not None:
        return ProcessLauncher(config.process, log_path, record_path)
    if config.command is not None:
        return CommandLauncher(config.command, log_path, record_path)
    if config.container is not None:
        return ContainerLauncher(config.container, log_path, record_path)
    if config.semaphore is not None:
        assert semaphore is not None, "a semaphore launcher needs the gateway's SemaphoreHub"
        return SemaphoreLauncher.from_hub(semaphore, service, config.semaphore, log_path)
    if config.wol is not None:
        return WolLauncher(config.wol, log_path)
    assert config.external is not None  # LauncherConfig holds exactly one
    return ExternalLauncher()
