"""Launchers: how a backend is started and stopped (one protocol, one small module each)."""

from .base import LaunchContext, Launcher, Running
from .process import ProcessLauncher

__all__ = ["LaunchContext", "Launcher", "ProcessLauncher", "Running"]
