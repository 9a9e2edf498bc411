"""What Hestia keeps about Semaphore: template ids by name, and the tasks it ran.

Templates are addressed by id only, and names are not unique (CONTRACT §4), so a name is looked
up by listing the project's templates, and a name that matches no template, or more than one,
is a configuration error. The lookup runs at start (`check_templates`, also behind
`hestia check`); when Semaphore cannot be reached then, it runs again before the first task.
The check also reads each template by id and reports what its release would do wrong with the
launcher's tasks (`releases.problems`: a dropped `limit`, undeclared variables).

`Automation` holds one backend's task records for the status API: the task in progress and the
last finished one, plus a short history. They live in memory until issue 6's storage exists.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..observability import iso_time
from .client import SemaphoreClient, SemaphoreError
from .releases import problems, variable_names

__all__ = ["Automation", "TaskRecord", "TemplateError", "Templates", "check_templates"]

HISTORY = 20


class TemplateError(Exception):
    """A template name matches no template, or several."""


class Templates:
    """Template ids by (project, name), listed from Semaphore once and then kept."""

    def __init__(self, client: SemaphoreClient) -> None:
        self.client = client
        self._names: dict[int, dict[str, list[int]]] = {}
        self._titles: dict[tuple[int, int], str] = {}

    async def id_of(self, project: int, ref: int | str) -> int:
        """The template id `ref` names. Raises `TemplateError` or `SemaphoreError`."""
        if isinstance(ref, int):
            return ref
        ids = self._names.get(project, {}).get(ref)
        if ids is None:  # not listed yet, or created since: list (again)
            await self.refresh(project)
            ids = self._names[project].get(ref)
        if not ids:
            known = ", ".join(repr(n) for n in sorted(self._names[project])) or "none"
            raise TemplateError(f"no template named {ref!r} in Semaphore project {project} "
                                f"(templates: {known})")
        if len(ids) > 1:
            raise TemplateError(f"template name {ref!r} is ambiguous in Semaphore project "
                                f"{project}: templates {sorted(ids)} have it; use the id")
        return ids[0]

    async def get(self, project: int, ref: int | str) -> dict[str, Any]:
        """The template `ref` names, read by id (the list leaves fields null, CONTRACT §4).
        Raises `TemplateError` (no such template) or `SemaphoreError`. An id is asked for:
        a task for an unknown id would only get a bare 500 from 2.10."""
        template_id = await self.id_of(project, ref)
        try:
            template = await self.client.template(project, template_id)
        except SemaphoreError as exc:
            if exc.status != 404:
                raise
            if isinstance(ref, str):
                # The name's template was deleted (and perhaps made again, with a new id)
                # since it was listed: list again, once.
                self._names.pop(project, None)
                fresh = await self.id_of(project, ref)
                if fresh != template_id:
                    return await self.get(project, fresh)
            raise TemplateError(f"no such template (or project): Semaphore project {project} "
                                f"has no template with id {template_id}, or the project does "
                                "not exist or the user is not a member of it (404)") from None
        if not isinstance(template, dict):
            raise SemaphoreError(f"GET /project/{project}/templates/{template_id}: not a "
                                 "template object", reason="bad_response")
        if isinstance(template.get("name"), str):
            self._titles[(project, template_id)] = template["name"]
        return template

    def title(self, project: int, template_id: int) -> str | None:
        return self._titles.get((project, template_id))

    async def refresh(self, project: int) -> None:
        names: dict[str, list[int]] = {}
        for template in await self.client.templates(project):
            tid, name = template.get("id"), template.get("name")
            if isinstance(tid, int) and isinstance(name, str):
                names.setdefault(name, []).append(tid)
                self._titles[(project, tid)] = name
        self._names[project] = names


async def check_templates(config: Config, templates: Templates,
                          ) -> tuple[list[tuple[str, str]], str | None]:
    """Resolve every template the configuration uses, and check each launcher's tasks against
    it: (errors with their paths, None), or ([], why Semaphore could not be asked). Each
    problem is reported once, at the first launcher that has it (machines come first)."""
    errors: list[tuple[str, str]] = []
    read: dict[tuple[int, int | str], dict[str, Any] | None] = {}
    said: set[tuple[int, int | str, str]] = set()
    for path, launcher in config.semaphore_launchers():
        project = config.project_of(launcher)
        refs = [("start_template", launcher.start_template),
                ("stop_template", launcher.stop_template)]
        for key, ref in refs:
            if ref is None:
                continue
            try:
                if (project, ref) not in read:
                    read[(project, ref)] = None  # an error is reported once
                    read[(project, ref)] = await templates.get(project, ref)
                template = read[(project, ref)]
                if template is None:
                    continue
                for problem in problems(template, launcher, variable_names(launcher)):
                    if (project, ref, problem.message) not in said:
                        said.add((project, ref, problem.message))
                        errors.append((f"{path}.{problem.field or key}", problem.message))
            except TemplateError as exc:
                errors.append((f"{path}.{key}", str(exc)))
            except SemaphoreError as exc:
                if exc.reason in ("unreachable", "timeout") or (exc.status or 0) >= 500:
                    return [], exc.message
                # Semaphore answered, and said no: the credentials or the project are wrong.
                where = f"{path}.project" if exc.status == 404 else "semaphore"
                errors.append((where, exc.message))
                return errors, None
    return errors, None


@dataclass
class TaskRecord:
    """One Semaphore task Hestia ran."""

    action: str                 # start | stop
    project_id: int
    template_id: int | None
    template: str               # as configured: a name, or the id
    machine_id: str
    task_id: int | None = None
    status: str = "creating"    # Semaphore's status once the task exists
    started_at: float = field(default_factory=time.time)
    completed_at: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        duration = None if self.completed_at is None else \
            round((self.completed_at - self.started_at) * 1000, 1)
        return {"task_id": self.task_id, "action": self.action, "status": self.status,
                "template_id": self.template_id, "template": self.template,
                "project_id": self.project_id, "machine_id": self.machine_id,
                "started_at": iso_time(self.started_at),
                "completed_at": iso_time(self.completed_at),
                "duration_ms": duration, "error": self.error}


class Automation:
    """The Semaphore tasks of one backend, across its placements."""

    def __init__(self, on_finish: Callable[[TaskRecord], None] | None = None) -> None:
        self.on_finish = on_finish  # the gateway publishes each finished task as an event
        # Told of every task created, changed or finished, with whether it finished: the
        # journal of remote backends (journal.py) writes each change down at once.
        self.on_change: Callable[[TaskRecord, bool], None] | None = None
        self.current: TaskRecord | None = None
        self.last: TaskRecord | None = None
        self.history: deque[TaskRecord] = deque(maxlen=HISTORY)

    def __repr__(self) -> str:
        def task(record: TaskRecord | None) -> str:
            return "none" if record is None else f"{record.action}:{record.status}"
        return f"<Automation current={task(self.current)} last={task(self.last)}>"

    def begin(self, record: TaskRecord) -> None:
        self.current = record

    def changed(self, record: TaskRecord) -> None:
        """`record` was created in Semaphore, or its status changed."""
        if self.on_change is not None:
            self.on_change(record, False)

    def finish(self, record: TaskRecord, status: str | None = None,
               error: str | None = None) -> None:
        if status is not None:
            record.status = status
        record.error = error
        record.completed_at = time.time()
        if self.current is record:
            self.current = None
        self.last = record
        self.history.append(record)
        if self.on_change is not None:
            self.on_change(record, True)
        if self.on_finish is not None:
            self.on_finish(record)

    def restore(self, rows: list[dict[str, Any]]) -> None:
        """Task records from the store (newest first), as the history before this run."""
        for row in reversed(rows[:HISTORY]):
            record = TaskRecord(
                row.get("action") or "?", row.get("project_id") or 0, row.get("template_id"),
                str(row.get("template") or row.get("template_id")), row.get("machine_id") or "",
                row.get("task_id"), row.get("status") or "?",
                started_at=row.get("started_at") or 0.0, completed_at=row.get("completed_at"),
                error=row.get("error"))
            self.history.append(record)
            self.last = record

    def status(self, machine_id: str | None) -> dict[str, Any]:
        current = self.current
        return {"enabled": True, "provider": "semaphore", "machine_id": machine_id,
                "current_task": None if current is None else {
                    k: v for k, v in current.as_dict().items()
                    if k not in ("completed_at", "duration_ms")},
                "last_task": None if self.last is None else self.last.as_dict(),
                "tasks": [r.as_dict() for r in reversed(self.history)]}

