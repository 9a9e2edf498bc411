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
lets run while the writer writes. API keys are written synchronously too: the CLI creates them
with no gateway running, and that is rare.

The file (and the `-wal` and `-shm` SQLite makes with its mode) is 0600 in a 0700 directory
whatever the umask (private_files.py): it holds key hashes and the history. A file that is not a
database, or a damaged one, is refused with a `StoreError` that says how to start afresh and
what that loses (`open_error`).

Migrations: `meta.schema_version` counts the `MIGRATIONS` applied. Opening a database applies
the missing ones in order, all in one transaction with the version bump, so a failed migration
leaves the file as it was. To change the schema, append a function to `MIGRATIONS`. A database
written by a newer Hestia is refused with `StoreError` rather than misread.
"""

from __future__ import annotations

import json
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

from .events import Event
from .private_files import FILE_MODE, open_private, private_dir, tighten

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SCOPES", "Store", "StoreError", "open_error"]

log = structlog.get_logger("hestia.store")

BUSY_TIMEOUT_S = 5.0      # how long a connection waits for another's write lock (CLI vs gateway)
SHUTDOWN_FLUSH_S = 5.0    # how long a cancelled `run` goes on writing what is queued
BATCH_MAX = 1000          # writes per transaction
COALESCE_S = 0.05         # how long the writer lets a burst of writes gather
MAX_QUEUED = 100_000      # beyond this the writer is hopelessly behind: writes are dropped
KEEP_TASKS = 1000         # Semaphore tasks kept per service
SCOPES = ("admin", "read", "proxy")

Write = Callable[[Database], None]

# Columns each `save_*` accepts. Table and column names are only ever taken from here or written
# out below, which is what makes the f-string SQL of `_upsert` and `_prune` safe.
SERVICE_FIELDS = frozenset({"state", "machine", "last_used", "last_error",
                            "last_start_duration_ms", "starts"})
MACHINE_FIELDS = frozenset({"enabled", "failures_in_a_row", "last_failure"})
PROCESS_FIELDS = frozenset({"pid", "pgid", "start_time", "started_at", "boot_id", "command",
                            "upstream", "machine", "launcher", "config", "stop_signal"})
JSON_FIELDS = frozenset({"last_error", "command", "detail"})
KEY_COLUMNS = "name, prefix, scope, created_at, last_used_at, revoked_at"


class StoreError(Exception):
    """The database cannot be opened (unreadable, damaged, or from a newer Hestia), or an API
    key cannot be added or revoked as asked."""


# SQLite's primary result codes for a file that is not a database, or one that is damaged.
_DAMAGED = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


def open_error(path: Path, exc: BaseException) -> StoreError:
    """The `StoreError` for a database that cannot be used. A damaged one is a dead end for
    the person reading it, unless the message says how out and what it costs (one line)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None or code & 0xFF not in _DAMAGED:
        return StoreError(f"cannot open the database {path}: {exc}")
    return StoreError(
        f"the database {path} is damaged ({exc}); Hestia cannot use it. Move it aside with "
        f"its -wal and -shm files (`mv {path} {path}.damaged`) and start again: a new, empty "
        "one is made, which loses the API keys (make new ones with `hestia keys create`) and "
        "the history (last use, start durations, activity, Semaphore tasks); the "
        "configuration and the services are not affected")


def _v1(db: Database) -> None:
    db["services"].create({
        "service_id": str, "state": str, "machine": str, "last_used": float, "last_error": str,
        "last_start_duration_ms": float, "starts": int, "updated_at": float,
    }, pk="service_id", not_null={"starts"}, defaults={"starts": 0})
    db["machines"].create({
        "machine_id": str, "enabled": int, "failures_in_a_row": int, "last_failure": float,
        "updated_at": float,
    }, pk="machine_id", not_null={"enabled", "failures_in_a_row"},
        defaults={"enabled": 1, "failures_in_a_row": 0})
    db["activity"].create({
        "id": int, "at": float, "service": str, "kind": str, "reason": str,
        "duration_ms": float, "detail": str,
    }, pk="id")
    # "Newest" is the latest `at`, then the highest id: these indexes hold rows in that order
    # (an index ends with the rowid), so reads and pruning walk them with no sort.
    db["activity"].create_index(["service", "at"])
    db["activity"].create_index(["service", "kind", "at"])
    db["activity"].create_index(["at"])
    db["tasks"].create({
        "id": int, "service": str, "action": str, "task_id": int, "template_id": int,
        "template": str, "project_id": int, "machine_id": str, "status": str,
        "started_at": float, "completed_at": float, "duration_ms": float, "error": str,
    }, pk="id")
    db["tasks"].create_index(["service"])
    # start_time (clock ticks since boot) and boot_id name the process, as in the JSON registry;
    # started_at is the wall clock, for people.
    db["processes"].create({
        "service": str, "pid": int, "pgid": int, "start_time": int, "started_at": float,
        "boot_id": str, "command": str, "upstream": str, "machine": str, "launcher": str,
        "config": str, "stop_signal": str, "updated_at": float,
    }, pk="service")
    db["auth_keys"].create({
        "name": str, "key_hash": str, "prefix": str, "scope": str, "created_at": float,
        "last_used_at": float, "revoked_at": float,
    }, pk="name", not_null={"key_hash", "scope", "created_at"})
    db["auth_keys"].create_index(["key_hash"], unique=True)


# MIGRATIONS[n] takes a database from schema version n to n + 1.
MIGRATIONS: list[Callable[[Database], None]] = [_v1]
SCHEMA_VERSION = len(MIGRATIONS)


def _create_private(path: Path) -> None:
    """The database file and its directory, private whatever the umask (private_files.py).
    SQLite gives the -wal and -shm files it makes the database file's mode."""
    private_dir(path.parent, tighten_existing=False)
    with open_private(path, "ab"):
        pass


def _connect(path: Path) -> Database:
    # check_same_thread=False: the writer's connection is used from trio's worker threads, and
    # `to_thread.run_sync` may run each batch on a different cached thread. That is safe because
    # no connection is ever used by two threads at once: the writer's only by whoever holds
    # `Store._role` (or by `flush_sync`, which refuses while anyone does), the other only by the
    # one thread that calls the synchronous methods (the event loop's, or the CLI's).
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    # In WAL mode NORMAL survives a crash of Hestia; a power cut may lose the last commits.
    conn.execute("PRAGMA synchronous=NORMAL")
    return Database(conn, execute_plugins=False)


@contextmanager
def _transaction(db: Database) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, waiting (busy timeout) for another process's; a
    # deferred transaction that read first would fail at once with SQLITE_BUSY on its first write.
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.conn.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise


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
            _create_private(self._path)
            self._db = _connect(self._path)
        except (OSError, sqlite3.Error) as exc:
            raise open_error(self._path, exc) from exc
        try:
            self._db.enable_wal()
            self._migrate(self._db)
            self._wdb = _connect(self._path)
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

    def _migrate(self, db: Database) -> None:
        # One transaction, taken with the write lock: a second process opening the file at the
        # same time waits, then finds the schema up to date.
        with _transaction(db):
            db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
            rows = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
            version = int(rows[0][0]) if rows else 0
            if version > self.SCHEMA_VERSION:
                raise StoreError(
                    f"the database {self._path} has schema version {version}, but this Hestia "
                    f"knows only up to {self.SCHEMA_VERSION}: it was written by a newer Hestia. "
                    "Upgrade Hestia, or point it at another data directory")
            for step in range(version, self.SCHEMA_VERSION):
                MIGRATIONS[step](db)
            if version != self.SCHEMA_VERSION:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES "
                           "('schema_version', ?)", [str(self.SCHEMA_VERSION)])
                log.info("store_migrated", path=str(self._path), previous=version,
                         version=self.SCHEMA_VERSION)

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
        self._queue(partial(_insert, "activity", {
            "at": event.at, "service": service, "kind": event.kind,
            "reason": _text(data.get("reason")), "duration_ms": _number(data.get("duration_ms")),
            "detail": _json(data)}))
        if event.kind in ("state", "ready") and service is not None:
            ready = event.kind == "ready"  # a start completed: one more start, and its duration
            fields = ({"last_start_duration_ms": _number(data.get("duration_ms"))} if ready
                      else {"state": _text(data.get("state"))})
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
            self._queue(partial(_insert, "tasks", _task_row(event)))
        elif event.kind == "machine" and data.get("machine") is not None:
            self.save_machine(data["machine"], enabled=bool(data.get("enabled")))
        self._since_prune += 1
        if self._since_prune >= self.prune_every:
            self._since_prune = 0
            self._queue(partial(_prune, self.keep_activity))

    def save_service(self, service: str, **fields: Any) -> None:
        """Queue an upsert of `service`'s row: only the given columns change. Raises
        `TypeError` for a column that does not exist."""
        self._save("services", "service_id", service, fields, SERVICE_FIELDS)

    def save_machine(self, machine: str, **fields: Any) -> None:
        self._save("machines", "machine_id", machine, fields, MACHINE_FIELDS)

    def save_process(self, service: str, **fields: Any) -> None:
        self._save("processes", "service", service, fields, PROCESS_FIELDS)

    def forget_process(self, service: str) -> None:
        self._queue(partial(_delete, "processes", "service", service))

    def touch_key(self, name: str) -> None:
        self._queue(partial(_touch_key, name, time.time()))

    def _save(self, table: str, pk: str, key: str, fields: dict[str, Any],
              allowed: frozenset[str], increment: tuple[str, ...] = ()) -> None:
        unknown = set(fields) - allowed
        if unknown:
            raise TypeError(f"{table} has no column {', '.join(sorted(unknown))}")
        values = {name: _json(value) if name in JSON_FIELDS and value is not None
                  else int(value) if isinstance(value, bool) else value
                  for name, value in fields.items()}
        values["updated_at"] = time.time()
        self._queue(partial(_upsert, table, pk, key, values, increment))

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
            with _transaction(self._wdb):
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
                with _transaction(self._wdb):
                    write(self._wdb)
                self.batches += 1
            except Exception:
                log.exception("store_write_failed", writes=1)

    # --- reads ---------------------------------------------------------------------------------

    def services(self) -> dict[str, dict[str, Any]]:
        return {row["service_id"]: _decoded(row) for row in self._db["services"].rows}

    def machines(self) -> dict[str, dict[str, Any]]:
        return {row["machine_id"]: {**row, "enabled": bool(row["enabled"])}
                for row in self._db["machines"].rows}

    def processes(self) -> dict[str, dict[str, Any]]:
        return {row["service"]: _decoded(row) for row in self._db["processes"].rows}

    def start_durations(self, service: str, limit: int = 20) -> list[float]:
        """The last `limit` cold-start durations of `service`, in seconds, oldest first."""
        rows = self._db.execute(
            "SELECT duration_ms FROM activity WHERE service = ? AND kind = 'ready' "
            "AND duration_ms IS NOT NULL ORDER BY at DESC, id DESC LIMIT ?",
            [service, limit]).fetchall()
        return [ms / 1000 for (ms,) in reversed(rows)]

    def activity(self, service: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Events, newest first (all services' when `service` is None)."""
        return self._newest("activity", service, limit, "at DESC, id DESC")

    def tasks(self, service: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Semaphore tasks, newest first."""
        return self._newest("tasks", service, limit, "id DESC")

    def _newest(self, table: str, service: str | None, limit: int,
                order: str) -> list[dict[str, Any]]:
        where, args = ("service = ?", [service]) if service is not None else (None, None)
        return [_decoded(row) for row in self._db[table].rows_where(
            where, args, order_by=order, limit=limit)]

    # --- API keys (synchronous) ----------------------------------------------------------------

    @contextmanager
    def _key_write(self, what: str) -> Iterator[None]:
        try:
            with _transaction(self._db):
                yield
        except sqlite3.Error as exc:
            raise StoreError(f"cannot {what}: {exc}") from exc

    def add_key(self, name: str, scope: str, key_hash: str, prefix: str) -> None:
        """Store a new API key. Raises `StoreError` for an unknown scope, or when an active
        key has this name (a revoked key's name may be used again: it replaces that key)."""
        if scope not in SCOPES:
            raise StoreError(f"unknown API key scope {scope!r} (one of {', '.join(SCOPES)})")
        with self._key_write(f"add the API key {name!r}"):
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
        with self._key_write(f"revoke the API key {name!r}"):
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


# --- writes, as the writer applies them -----------------------------------------------------------

def _insert(table: str, row: dict[str, Any], db: Database) -> None:
    db[table].insert(row)


def _delete(table: str, pk: str, key: str, db: Database) -> None:
    db.execute(f"DELETE FROM {table} WHERE {pk} = ?", [key])


def _upsert(table: str, pk: str, key: str, values: dict[str, Any], increment: tuple[str, ...],
            db: Database) -> None:
    """Insert or update the row `key`: only `values` change, and `increment` columns go up by
    one (a new row starts them at 1)."""
    columns = [pk, *values, *increment]
    changes = [f"{c} = excluded.{c}" for c in values] + [f"{c} = {c} + 1" for c in increment]
    db.execute(f"INSERT INTO {table} ({', '.join(columns)}) "
               f"VALUES ({', '.join('?' * len(columns))}) "
               f"ON CONFLICT ({pk}) DO UPDATE SET {', '.join(changes)}",
               [key, *values.values(), *[1] * len(increment)])


def _touch_key(name: str, at: float, db: Database) -> None:
    db.execute("UPDATE auth_keys SET last_used_at = ? WHERE name = ? AND revoked_at IS NULL",
               [at, name])


def _prune(keep_activity: int, db: Database) -> None:
    """Keep the newest rows of each service: `keep_activity` of activity, `KEEP_TASKS` tasks."""
    for table, keep, order in (("activity", keep_activity, ("at", "id")),
                               ("tasks", KEEP_TASKS, ("id",))):
        crowded = db.execute(f"SELECT service FROM {table} GROUP BY service "
                             "HAVING count(*) > ?", [keep]).fetchall()
        columns, newest = ", ".join(order), ", ".join(f"{c} DESC" for c in order)
        for (service,) in crowded:
            # Everything from the first row past the newest `keep` on (a row-value comparison).
            db.execute(f"DELETE FROM {table} WHERE service IS ? AND ({columns}) <= (SELECT "
                       f"{columns} FROM {table} WHERE service IS ? ORDER BY {newest} "
                       "LIMIT 1 OFFSET ?)", [service, service, keep])


# --- values ---------------------------------------------------------------------------------------

def _task_row(event: Event) -> dict[str, Any]:
    """A tasks row from a `semaphore_task` event (published when the task finished)."""
    data = event.data
    duration = _number(data.get("duration_ms"))
    completed = _number(data.get("completed_at")) or event.at
    started = _number(data.get("started_at"))
    if started is None and duration is not None:
        started = completed - duration / 1000
    return {"service": event.service, "action": _text(data.get("action")),
            "task_id": data.get("task_id"), "template_id": data.get("template_id"),
            "template": _text(data.get("template")), "project_id": data.get("project_id"),
            "machine_id": _text(data.get("machine_id", data.get("machine"))),
            "status": _text(data.get("status")), "started_at": started,
            "completed_at": completed, "duration_ms": duration,
            "error": _text(data.get("error"))}


def _json(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    for name in JSON_FIELDS & row.keys():
        if row[name] is not None:
            row[name] = json.loads(row[name])
    return row


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None

