"""Hestia's state in SQLite: what survives a restart, and the history the API shows.

One file (sqlite-utils, WAL mode) with these tables:

- `services`: each backend's last state and machine, last use, last error (JSON), number of
  starts and the duration of its last cold start;
- `machines`: whether a person disabled a machine, its failures in a row and the last one;
- `activity`: every `EventBus` event (kind, reason, duration and the whole event as JSON),
  bounded to the newest `keep_activity` rows per service;
- `tasks`: the Semaphore tasks Hestia ran;
- `processes`: the children Hestia launched (pid, start time, boot id…), for crash recovery;
- `auth_keys`: API keys by hash only (never the key), with scope, use and revocation.

Writers never wait: `record_event` (the bus listener), `save_*`, `forget_process` and
`touch_key` queue a write on a memory channel, and the one writer task, `run`, applies what is
queued in batches, one transaction per batch, in a worker thread, so the event loop never waits
on SQLite (a commit can take milliseconds, a busy lock seconds). On cancellation `run` still
writes what is queued (shielded, for at most `SHUTDOWN_FLUSH_S`): a clean shutdown loses nothing.
With no writer running (the CLI, tests), writes wait in the queue for `flush` or `flush_sync`.

Reads are synchronous: small indexed queries at start-up, in the CLI and for the API, which WAL
lets run while the writer writes. API keys are written synchronously too (`transaction`): the
CLI creates them with no gateway running, and that is rare.

The file (and the `-wal` and `-shm` SQLite makes with its mode) is 0600 in a 0700 directory
whatever the umask (private_files.py): it holds key hashes and the history. A file that is not a
database, or a damaged one, is refused with a `StoreError` that says how to start afresh and
what that loses (`open_error`).

The schema, its migrations and opening the file are in store/schema.py; the writes the writer
applies, and how values become columns, in store/rows.py. `Store` is the one way in: other
modules that keep a table of their own in this file (sessions.py, semaphore/journal.py) use
`Store.db` and `Store.transaction`, as `add_key` does.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio
from sqlite_utils import Database

from ..events import Event
from ..private_files import FILE_MODE, tighten
from . import rows
from .rows import JSON_FIELDS, MACHINE_FIELDS, PROCESS_FIELDS, SERVICE_FIELDS
from .schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    StoreError,
    connect,
    create_private,
    migrate,
    open_error,
    transaction,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SCOPES", "Store", "StoreError", "open_error"]

log = structlog.get_logger("hestia.store")

SHUTDOWN_FLUSH_S = 5.0    # how long a cancelled `run` goes on writing what is queued
BATCH_MAX = 1000          # writes per transaction
COALESCE_S = 0.05         # how long the writer lets a burst of writes gather
MAX_QUEUED = 100_000      # beyond this the writer is hopelessly behind: writes are dropped
SCOPES = ("admin", "read", "proxy")
KEY_COLUMNS = "name, prefix, scope, created_at, last_used_at, revoked_at"

Write = Callable[[Database], None]


class Store:
    """Hestia's database. Queue writes from the event loop; `run` applies them."""

    SCHEMA_VERSION = SCHEMA_VERSION

    def __init__(self, path: Path, *, keep_activity: int = 10_000,
                 prune_every: int = 500) -> None:
        """Open (or create) the database at `path`, creating its directory, and migrate it.
        Raises `StoreError` when it cannot be opened or is from a newer Hestia."""
        self._path = Path(path)
        self.keep_activity = keep_activity
        self.prune_every = prune_every
        self._send, self._receive = trio.open_memory_channel[Write](MAX_QUEUED)
        self._sent = self._done = self._dropped = self._since_prune = 0
        self.batches = 0          # transactions the writer committed
        self._progress = trio.Event()
        # Held by whoever applies queued writes (`run`, or `flush` when `run` does not run):
        # one applier at a time keeps the writes in the order they were queued.
        self._role = trio.Lock()
        self._writer_running = False
        self._closed = False
        try:
            create_private(self._path)
            self._db = connect(self._path)
        except (OSError, sqlite3.Error) as exc:
            raise open_error(self._path, exc) from exc
        try:
            self._db.enable_wal()
            # MIGRATIONS as this module has it now (a test adds one).
            migrate(self._db, self._path, MIGRATIONS, self.SCHEMA_VERSION)
            self._wdb = connect(self._path)
        except BaseException as exc:
            self._db.close()
            if isinstance(exc, sqlite3.Error):
                raise open_error(self._path, exc) from exc
            raise
        for suffix in ("-wal", "-shm"):  # made by an older Hestia, with the umask's mode
            tighten(self._path.with_name(self._path.name + suffix), FILE_MODE)

    def __repr__(self) -> str:
        running = " running" if self._writer_running else ""
        return (f"<Store {self._path} queued={self._pending()} written={self._done} "
                f"batches={self.batches} dropped={self._dropped}{running}>")

    @property
    def path(self) -> Path:
        return self._path

    @property
    def db(self) -> Database:
        """The connection of the synchronous reads and writes, for whoever keeps a table of its
        own in this file (sessions.py). Only the thread that calls the store's synchronous
        methods (the event loop's, or the CLI's) may use it; the writer task has its own."""
        return self._db

    @contextmanager
    def transaction(self, what: str) -> Iterator[Database]:
        """A synchronous write on `db`: one transaction, taken with the write lock (waiting up
        to the busy timeout for another process's), committed at the end, rolled back if
        anything raises. Raises `StoreError` ("cannot WHAT: …") when SQLite fails."""
        try:
            with transaction(self._db):
                yield self._db
        except sqlite3.Error as exc:
            raise StoreError(f"cannot {what}: {exc}") from exc

    def close(self) -> None:
        """Write what is still queued (no writer may be running), then close the file."""
        if self._closed:
            return
        self.flush_sync()
        self._closed = True
        self._wdb.close()
        self._db.close()

    # --- writes: queued, applied by `run` ------------------------------------------------------

    def _queue(self, write: Write) -> None:
        try:
            self._send.send_nowait(write)
        except trio.WouldBlock:
            self._dropped += 1
            if self._dropped % 1000 == 1:
                log.error("store_queue_full", dropped=self._dropped,
                          detail="the store's writer is not keeping up; writes are dropped")
            return
        self._sent += 1

    def record_event(self, event: Event) -> None:
        """The `EventBus` listener: the event as an activity row, plus what it says about its
        service, machine or Semaphore task."""
        data, service = event.data, event.service
        self._queue(partial(rows.insert, "activity", {
            "at": event.at, "service": service, "kind": event.kind,
            "reason": rows.text(data.get("reason")),
            "duration_ms": rows.number(data.get("duration_ms")), "detail": rows.to_json(data)}))
        if event.kind in ("state", "ready") and service is not None:
            ready = event.kind == "ready"  # a start completed: one more start, and its duration
            fields = ({"last_start_duration_ms": rows.number(data.get("duration_ms"))} if ready
                      else {"state": rows.text(data.get("state"))})
            if data.get("machine") is not None:
                fields["machine"] = data["machine"]
            self._save("services", "service_id", service, fields, SERVICE_FIELDS,
                       ("starts",) if ready else ())
        if event.kind == "ready" and service is not None:
            # What runs for the service now; a stop or a crash forgets it.
            self.save_process(service, pid=data.get("pid"), started_at=event.at,
                              machine=data.get("machine"), launcher=data.get("launcher"),
                              upstream=data.get("upstream"))
        elif event.kind in ("stopped", "crashed") and service is not None:
            self.forget_process(service)
        elif event.kind == "semaphore_task":
            self._queue(partial(rows.insert, "tasks", rows.task_row(event)))
        elif event.kind == "machine" and data.get("machine") is not None:
            self.save_machine(data["machine"], enabled=bool(data.get("enabled")))
        self._since_prune += 1
        if self._since_prune >= self.prune_every:
            self._since_prune = 0
            self._queue(partial(rows.prune, self.keep_activity))

    def save_service(self, service: str, **fields: Any) -> None:
        """Queue an upsert of `service`'s row: only the given columns change. Raises
        `TypeError` for a column that does not exist."""
        self._save("services", "service_id", service, fields, SERVICE_FIELDS)

    def save_machine(self, machine: str, **fields: Any) -> None:
        self._save("machines", "machine_id", machine, fields, MACHINE_FIELDS)

    def save_process(self, service: str, **fields: Any) -> None:
        self._save("processes", "service", service, fields, PROCESS_FIELDS)

    def forget_process(self, service: str) -> None:
        self._queue(partial(rows.delete, "processes", "service", service))

    def touch_key(self, name: str) -> None:
        self._queue(partial(rows.touch_key, name, time.time()))

    def _save(self, table: str, pk: str, key: str, fields: dict[str, Any],
              allowed: frozenset[str], increment: tuple[str, ...] = ()) -> None:
        unknown = set(fields) - allowed
        if unknown:
            raise TypeError(f"{table} has no column {', '.join(sorted(unknown))}")
        values = {name: rows.to_json(value) if name in JSON_FIELDS and value is not None
                  else int(value) if isinstance(value, bool) else value
                  for name, value in fields.items()}
        values["updated_at"] = time.time()
        self._queue(partial(rows.upsert, table, pk, key, values, increment))

    # --- the writer ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Apply queued writes until cancelled, then those still queued (for at most
        `SHUTDOWN_FLUSH_S`). Raises `RuntimeError` if another `run` is running."""
        if self._writer_running:
            raise RuntimeError("Store.run() is already running")
        self._writer_running = True
        try:
            async with self._role:
                try:
                    task_status.started()
                    while True:
                        first = await self._receive.receive()
                        # Writes come in bursts (a start publishes several events at the
                        # moment its waiters are released): let the burst, and the requests it
                        # releases, go first, then write it all in one transaction.
                        try:
                            await trio.sleep(COALESCE_S)
                        finally:
                            with trio.CancelScope(shield=True):  # a write taken is written
                                await self._write_batch([first])
                finally:
                    # Deadline checked between batches: a batch taken is always written.
                    deadline = trio.current_time() + SHUTDOWN_FLUSH_S
                    while self._pending() and trio.current_time() < deadline:
                        await self._write_batch([])
                    if self._pending():
                        log.error("store_flush_incomplete", left=self._pending())
        finally:
            self._writer_running = False
            self._wake()

    async def flush(self) -> None:
        """Wait until every write queued so far is applied (applying them itself when `run`
        does not run)."""
        target = self._sent
        await trio.lowlevel.checkpoint()
        while self._done < target:
            if self._writer_running:
                await self._progress.wait()
                continue
            async with self._role:
                while self._pending():
                    await self._write_batch([])

    def flush_sync(self) -> None:
        """Apply every queued write now, blocking (for the CLI, which has no event loop).
        Raises `RuntimeError` while `run` or `flush` applies writes."""
        if self._writer_running or self._role.locked():
            raise RuntimeError("Store.flush_sync() while the writer runs: await flush()")
        while batch := self._take(BATCH_MAX):
            self._apply(batch)
            self._done += len(batch)

    def _pending(self) -> int:
        return self._receive.statistics().current_buffer_used

    def _take(self, most: int) -> list[Write]:
        batch: list[Write] = []
        while len(batch) < most:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        return batch

    async def _write_batch(self, batch: list[Write]) -> None:
        # Shielded: writes taken off the channel must be applied and counted, even when the
        # caller is being cancelled, or they would be lost (and `flush` would wait for ever).
        with trio.CancelScope(shield=True):
            batch.extend(self._take(BATCH_MAX - len(batch)))
            if batch:
                await trio.to_thread.run_sync(self._apply, batch)
                self._done += len(batch)
                self._wake()

    def _wake(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def _apply(self, batch: list[Write]) -> None:
        """Apply `batch` in one transaction, on the writer's connection (in a worker thread, or
        in `flush_sync`). The writer must outlive any bad write: one that SQLite refuses is
        logged and dropped, and the rest of its batch is written without it."""
        try:
            with transaction(self._wdb):
                for write in batch:
                    write(self._wdb)
            self.batches += 1
            return
        except sqlite3.OperationalError as exc:
            # Locked past the busy timeout, disk full, I/O error: no write of the batch would
            # fare better alone.
            log.error("store_write_failed", writes=len(batch), detail=str(exc))
            return
        except Exception:
            if len(batch) == 1:
                log.exception("store_write_failed", writes=1)
                return
        for write in batch:
            try:
                with transaction(self._wdb):
                    write(self._wdb)
                self.batches += 1
            except Exception:
                log.exception("store_write_failed", writes=1)

    # --- reads ---------------------------------------------------------------------------------

    def services(self) -> dict[str, dict[str, Any]]:
        return {row["service_id"]: rows.decoded(row) for row in self._db["services"].rows}

    def machines(self) -> dict[str, dict[str, Any]]:
        return {row["machine_id"]: {**row, "enabled": bool(row["enabled"])}
                for row in self._db["machines"].rows}

    def processes(self) -> dict[str, dict[str, Any]]:
        return {row["service"]: rows.decoded(row) for row in self._db["processes"].rows}

    def start_durations(self, service: str, limit: int = 20) -> list[float]:
        """The last `limit` cold-start durations of `service`, in seconds, oldest first."""
        rows = self._db.execute(
            "SELECT duration_ms FROM activity WHERE service = ? AND kind = 'ready' "
            "AND duration_ms IS NOT NULL ORDER BY at DESC, id DESC LIMIT ?",
            [service, limit]).fetchall()
        return [ms / 1000 for (ms,) in reversed(rows)]

    def activity(self, service: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Events, newest first (all services' when `service` is None). `at` is Unix seconds,
        as stored (ordered and pruned by it); `/v1/activity` shows it as ISO 8601."""
        return self._newest("activity", service, limit, "at DESC, id DESC")

    def tasks(self, service: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Semaphore tasks, newest first."""
        return self._newest("tasks", service, limit, "id DESC")

    def _newest(self, table: str, service: str | None, limit: int,
                order: str) -> list[dict[str, Any]]:
        where, args = ("service = ?", [service]) if service is not None else (None, None)
        return [rows.decoded(row) for row in self._db[table].rows_where(
            where, args, order_by=order, limit=limit)]

    # --- API keys (synchronous) ----------------------------------------------------------------

    def add_key(self, name: str, scope: str, key_hash: str, prefix: str) -> None:
        """Store a new API key. Raises `StoreError` for an unknown scope, or when an active
        key has this name (a revoked key's name may be used again: it replaces that key)."""
        if scope not in SCOPES:
            raise StoreError(f"unknown API key scope {scope!r} (one of {', '.join(SCOPES)})")
        with self.transaction(f"add the API key {name!r}"):
            rows = self._db.execute("SELECT revoked_at FROM auth_keys WHERE name = ?",
                                    [name]).fetchall()
            if rows and rows[0][0] is None:
                raise StoreError(f"an API key named {name!r} exists; revoke it first, or "
                                 "choose another name")
            self._db["auth_keys"].insert({
                "name": name, "key_hash": key_hash, "prefix": prefix, "scope": scope,
                "created_at": time.time(), "last_used_at": None, "revoked_at": None,
            }, replace=True)

    def revoke_key(self, name: str) -> bool:
        """Revoke the active key `name`; False if there is none."""
        with self.transaction(f"revoke the API key {name!r}"):
            cursor = self._db.execute("UPDATE auth_keys SET revoked_at = ? "
                                      "WHERE name = ? AND revoked_at IS NULL", [time.time(), name])
        return cursor.rowcount > 0

    def keys(self) -> list[dict[str, Any]]:
        """Every key, revoked ones too, oldest first; without their hashes."""
        return list(self._db.query(f"SELECT {KEY_COLUMNS} FROM auth_keys "
                                   "ORDER BY created_at, name"))

    def find_key(self, key_hash: str) -> dict[str, Any] | None:
        """The active key with this hash, or None. The row carries the stored hash, for the
        caller's constant-time comparison."""
        rows = list(self._db.query(f"SELECT {KEY_COLUMNS}, key_hash FROM auth_keys "
                                   "WHERE key_hash = ? AND revoked_at IS NULL", [key_hash]))
        return rows[0] if rows else None
