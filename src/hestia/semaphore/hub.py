"""One gateway's connection to Semaphore: the client, the template ids, and each backend's
task records, shared by every `semaphore` launcher of the configuration."""

from __future__ import annotations

from pathlib import Path

import httpx

from ..config import Config, SemaphoreLauncherConfig
from ..launchers.semaphore import SemaphoreLauncher
from .client import SemaphoreClient
from .tasks import Automation, Templates, check_templates

__all__ = ["SemaphoreHub"]


class SemaphoreHub:
    """Built by the gateway when the configuration has `semaphore`; close it with `aclose`."""

    def __init__(self, config: Config, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        assert config.semaphore is not None
        self.config = config
        self.client = SemaphoreClient(config.semaphore, transport=transport)
        self.templates = Templates(self.client)
        self.automations: dict[str, Automation] = {}

    def launcher(self, service: str, launcher: SemaphoreLauncherConfig,
                 log_path: Path) -> SemaphoreLauncher:
        assert self.config.semaphore is not None
        automation = self.automations.setdefault(service, Automation())
        return SemaphoreLauncher(launcher, self.config.semaphore, self.client, self.templates,
                                 automation, project=self.config.project_of(launcher),
                                 log_path=log_path)

    async def check(self) -> tuple[list[tuple[str, str]], str | None]:
        """See `check_templates`."""
        return await check_templates(self.config, self.templates)

    async def aclose(self) -> None:
        await self.client.aclose()
