"""The `external` launcher: a backend Hestia never starts or stops, only probes.

For a service that runs on its own (a server someone else manages, a machine that is always
on). A "start" is one readiness probe: when the upstream is not there, requests are answered
503 at once rather than held for a start that Hestia cannot make happen. An idle "stop" only
forgets that it was ready, so that the next request probes again.
"""

from __future__ import annotations

import trio

from .base import LaunchContext, Launcher

__all__ = ["ExternalLauncher", "ExternalRunning"]


class ExternalRunning:
    pid: int | None = None

    def __repr__(self) -> str:
        return "<ExternalRunning>"

    async def wait(self) -> int | None:
        await trio.sleep_forever()  # nothing of ours runs, so nothing can end
        raise AssertionError("unreachable")

    async def stop(self) -> None:
        return None

    def describe_exit(self, status: int | None) -> str:
        return "is not reachable"

    def log_tail(self, lines: int = 20) -> list[str]:
        return []


class ExternalLauncher(Launcher):
    kind = "external"
    probe_only = True  # the supervisor decides with one probe instead of waiting

    def __repr__(self) -> str:
        return "<ExternalLauncher>"

    async def start(self, context: LaunchContext) -> ExternalRunning:
        return ExternalRunning()
