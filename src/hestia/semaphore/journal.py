"""The journal of remote backends: what Hestia started through Semaphore, written down the moment
it changes, so that a Hestia killed with -9 leaves the next one enough to find it again
(lifecycle/remote_recovery.py decides what becomes of it).

One row per backend and machine, in the store's file (table `remote_backends`, kept by this
module as sessions.py keeps its own). A row holds the placement (machine, upstream, port), the
launcher's configuration (as JSON, with its fingerprint, so that a changed configuration is
seen, and so that the recorded stop template can still run), the project, the task being
followed (id, action, status, template id, when it was created) and the Hestia that wrote it.
Its `stage` follows the backend:

```
 begin ─▶ starting ──start task succeeded──▶ started ──ready──▶ ready
              │ (task created, each status)                       │
              └── start failed, no stop template: row deleted     │
   stop task created ─▶ stopping ──succeeded──▶ row deleted       │
                            └──── failed ──▶ stop_failed ◀────────┘ (stopped again next time)
```

A backend with no stop template has its row deleted when it stops or crashes (nothing remote
can be done about it then).

Writes are synchronous (`Store.transaction`), not queued for the store's writer: a queued write
is still in memory for up to a batch's time, which is exactly when a kill -9 would lose it. A
committed WAL transaction survives the process being killed. There are a handful per start or
stop, each one small row. A write that fails is logged (`remote_journal_failed`) and never fails
the start or stop: it costs only the recovery of that backend after a crash.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from sqlite_utils import Database

from ..store import Store, StoreError
from .tasks import TaskRecord

if TYPE_CHECKING:
    from ..events import Event

__all__ = ["FINISHED", "STAGES", "BackendJournal", "RemoteJournal", "RemoteRow"]

log = structlog.get_logger("hestia.semaphore")

TABLE = "remote_backends"
STAGES = ("starting", "started", "ready", "stopping", "stop_failed")
FINISHED = frozenset({"success", "error", "stopped", "rejected", "not_created"})


@dataclass(frozen=True, slots=True)
class RemoteRow:
    """One remote backend as the journal last recorded it."""

    service: str            # the backend's id (the supervisor's name)
    machine: str
    backend: str
    upstream: str
    port: int
    config: str             # the launcher configuration, as JSON
    fingerprint: str
    project: int
    semaphore_url: str      # the Semaphore the task ids and templates belong to
    stop_template: str | None
    task_timeout: float
    stage: str
    task_id: int | None
    task_action: str | None
    task_status: str | None
    task_template_id: int | None
    task_template: str | None
    task_created_at: float | None  # wall clock
    owner_pid: int
    owner_start_time: int | None
    owner_boot_id: str | None
    updated_at: float

    @property
    def task_unfinished(self) -> bool:
        return self.task_id is not None and self.task_status not in FINISHED

    def task_record(self) -> TaskRecord:
        """The recorded task, as the launcher follows one."""
        assert self.task_action is not None
        return TaskRecord(self.task_action, self.project, self.task_template_id,
                          self.task_template or str(self.task_template_id), self.machine,
                          self.task_id, self.task_status or "waiting",
                          started_at=self.task_created_at or time.time())


def _create_table(db: Database) -> None:
    db[TABLE].create({
        "service": str, "machine": str, "backend": str, "upstream": str, "port": int,
        "config": str, "fingerprint": str, "project": int, "semaphore_url": str,
        "stop_template": str,
        "task_timeout": float, "stage": str, "task_id": int, "task_action": str,
        "task_status": str, "task_template_id": int, "task_template": str,
        "task_created_at": float, "owner_pid": int, "owner_start_time": int,
        "owner_boot_id": str, "updated_at": float,
    }, pk=("service", "machine"), not_null={"stage"}, if_not_exists=True)


class RemoteJournal:
    """The journal; it writes nothing until `attach`ed to the store (the gateway does that once
    the store is open; launchers built without one, as in tests, journal nothing)."""

    def __init__(self) -> None:
        self._store: Store | None = None
        self._owner: tuple[int, int | None, str | None] = (0, None, None)

    def __repr__(self) -> str:
        return f"<RemoteJournal {'attached' if self._store is not None else 'detached'}>"

    def attach(self, store: Store, owner: tuple[int, int | None, str | None]) -> None:
        """Write to `store` from now on, as `owner` (pid, start time, boot id: this Hestia).
        Raises `StoreError` when the table cannot be created."""
        with store.transaction("create the remote_backends table") as db:
            _create_table(db)
        self._store = store
        self._owner = owner

    def of(self, service: str) -> BackendJournal:
        return BackendJournal(self, service)

    # --- reads ---------------------------------------------------------------------------------

    def rows(self) -> list[RemoteRow]:
        """Every row, by backend and machine."""
        if self._store is None:
            return []
        return [RemoteRow(**row) for row in self._store.db[TABLE].rows_where(
            order_by="service, machine")]

    def find(self, service: str, machine: str) -> RemoteRow | None:
        if self._store is None:
            return None
        found = list(self._store.db[TABLE].rows_where("service = ? AND machine = ?",
                                                      [service, machine]))
        return RemoteRow(**found[0]) if found else None

    # --- writes --------------------------------------------------------------------------------

    def begin(self, service: str, *, machine: str, backend: str, upstream: str, port: int,
              config: str, fingerprint: str, project: int, semaphore_url: str,
              stop_template: int | str | None, task_timeout: float) -> None:
        """A start on `machine` begins (its task is about to be created)."""
        pid, start_time, boot = self._owner
        self._write(f"record the start of {service!r}", lambda db: db[TABLE].insert({
            "service": service, "machine": machine, "backend": backend, "upstream": upstream,
            "port": port, "config": config, "fingerprint": fingerprint, "project": project,
            "semaphore_url": semaphore_url,
            "stop_template": None if stop_template is None else str(stop_template),
            "task_timeout": task_timeout, "stage": "starting", "task_id": None,
            "task_action": None, "task_status": None, "task_template_id": None,
            "task_template": None, "task_created_at": None, "owner_pid": pid,
            "owner_start_time": start_time, "owner_boot_id": boot, "updated_at": time.time(),
        }, replace=True))

    def task(self, service: str, record: TaskRecord, finished: bool) -> None:
        """A task of `service` was created, changed status, or finished (see the stages in the
        module docstring)."""
        key = (service, record.machine_id)
        if self._store is None or (record.task_id is None and not finished):
            return
        row = self.find(*key)
        if row is None and record.action == "start":
            return  # begun without a journal (none attached then): nothing to follow
        fields: dict[str, Any] = {
            "task_id": record.task_id, "task_action": record.action,
            "task_status": record.status, "task_template_id": record.template_id,
            "task_template": record.template, "task_created_at": record.started_at}
        if not finished:
            fields["stage"] = "starting" if record.action == "start" else "stopping"
        elif record.error == "cancelled":
            # Cut short here, not in Semaphore: the task goes on there; the next Hestia
            # follows it (a cancelled start's clean-up, if any, is recorded next).
            del fields["task_status"]
        elif record.action == "start" and record.status == "success" and record.error is None:
            fields["stage"] = "started"
        elif record.action == "start":
            if row is not None and row.stop_template is None:
                self.forget(*key)  # nothing will stop it: nothing to recover
                return
            # The stop template runs next (the launcher cleans up a failed start).
        elif record.status == "success" and record.error is None:
            self.forget(*key)
            return
        else:
            fields["stage"] = "stop_failed"
        if row is None:  # a stop of a backend begun without a journal: nothing to update
            return
        self._update(key, fields)

    def stage(self, service: str, machine: str, stage: str) -> None:
        assert stage in STAGES
        self._update((service, machine), {"stage": stage})

    def forget(self, service: str, machine: str) -> None:
        self._write(f"forget the remote backend {service!r} on {machine!r}",
                    lambda db: db.execute(f"DELETE FROM {TABLE} WHERE service = ? AND "
                                          "machine = ?", [service, machine]))

    def listen(self, event: Event) -> None:
        """An `EventBus` listener: a backend READY is `ready`; one without a stop template
        that stopped or crashed is forgotten."""
        if self._store is None or event.service is None:
            return
        if event.kind == "ready" and event.data.get("launcher") == "semaphore":
            self._update((event.service, str(event.data.get("machine"))), {"stage": "ready"})
        elif event.kind in ("stopped", "crashed"):
            for row in self.rows():
                if row.service == event.service and row.stop_template is None:
                    self.forget(row.service, row.machine)

    def _update(self, key: tuple[str, str], fields: dict[str, Any]) -> None:
        # The writer is this Hestia now (one that follows a task its killed predecessor began).
        pid, start_time, boot = self._owner
        fields = {**fields, "owner_pid": pid, "owner_start_time": start_time,
                  "owner_boot_id": boot, "updated_at": time.time()}
        columns = ", ".join(f"{name} = ?" for name in fields)  # names written out above
        self._write(f"record the remote backend {key[0]!r} on {key[1]!r}",
                    lambda db: db.execute(f"UPDATE {TABLE} SET {columns} WHERE service = ? "
                                          "AND machine = ?", [*fields.values(), *key]))

    def _write(self, what: str, write: Callable[[Database], object]) -> None:
        if self._store is None:
            return
        try:
            with self._store.transaction(what) as db:
                write(db)
        except StoreError as exc:
            log.warning("remote_journal_failed", detail=str(exc))


class BackendJournal:
    """The journal as one backend's launchers write it."""

    __slots__ = ("journal", "service")

    def __init__(self, journal: RemoteJournal, service: str) -> None:
        self.journal = journal
        self.service = service

    def __repr__(self) -> str:
        return f"<BackendJournal {self.service}>"

    def begin(self, **fields: Any) -> None:
        self.journal.begin(self.service, **fields)

    def task(self, record: TaskRecord, finished: bool) -> None:
        self.journal.task(self.service, record, finished)

