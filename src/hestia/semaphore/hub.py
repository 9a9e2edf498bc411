"""One gateway's connection to Semaphore: the client, the template ids, and each backend's
task records, shared by every `semaphore` launcher of the configuration (which
`SemaphoreLauncher.from_hub` builds: this package knows nothing of launchers)."""

from __future__ import annotations

import httpx

from ..config import Config
from ..events import EventBus
from .client import SemaphoreClient
from .journal import RemoteJournal
from .tasks import Automation, TaskRecord, Templates, check_templates

__all__ = ["SemaphoreHub"]


class SemaphoreHub:
    """Built by the gateway when the configuration has `semaphore`; close it with `aclose`."""

    def __init__(self, config: Config, *, events: EventBus | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 journal: RemoteJournal | None = None) -> None:
        assert config.semaphore is not None
        self.config = config
        self.events = events
        self.client = SemaphoreClient(config.semaphore, transport=transport)
        self.templates = Templates(self.client)
        self.automations: dict[str, Automation] = {}
        # What runs remotely, for the next Hestia after a crash: the gateway's one journal
        # (which it attaches to the store), shared by the hubs a reload makes.
        self.journal = journal if journal is not None else RemoteJournal()

    def __repr__(self) -> str:
        assert self.config.semaphore is not None
        return (f"<SemaphoreHub {self.config.semaphore.url} "
                f"automations={len(self.automations)}>")

    def automation(self, service: str) -> Automation:
        """`service`'s task records, one for all its `semaphore` launchers."""
        automation = self.automations.get(service)
        if automation is None:
            automation = self.automations[service] = Automation(
                lambda record: self._publish(service, record))
            automation.on_change = self.journal.of(service).task
        return automation

    def _publish(self, service: str, record: TaskRecord) -> None:
        if self.events is not None:
            task = record.as_dict()
            self.events.publish("semaphore_task", service, **{
                k: task[k] for k in ("action", "task_id", "template_id", "template",
                                     "project_id", "status", "machine_id", "duration_ms",
                                     "error")})

    async def check(self) -> tuple[list[tuple[str, str]], str | None]:
        """See `check_templates`."""
        return await check_templates(self.config, self.templates)

    async def aclose(self) -> None:
        await self.client.aclose()
