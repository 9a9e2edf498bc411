"""The store's file: opening it privately, the schema and its migrations, and the one way to
write (`transaction`).

Migrations: `meta.schema_version` counts the `MIGRATIONS` applied. Opening a database applies
the missing ones in order, all in one transaction with the version bump, so a failed migration
leaves the file as it was. To change the schema, append a function to `MIGRATIONS`. A database
written by a newer Hestia is refused with `StoreError` rather than misread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import structlog
from sqlite_utils import Database

from ..private_files import open_private, private_dir

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "StoreError", "connect", "create_private", "migrate",
           "open_error", "transaction"]

log = structlog.get_logger("hestia.store")

BUSY_TIMEOUT_S = 5.0      # how long a connection waits for another's write lock (CLI vs gateway)


class StoreError(Exception):
    """The database cannot be opened (unreadable, damaged, or from a newer Hestia), or a
    synchronous write (`Store.transaction`: an API key, a session) cannot be made as asked."""


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


def create_private(path: Path) -> None:
    """The database file and its directory, private whatever the umask (private_files.py).
    SQLite gives the -wal and -shm files it makes the database file's mode."""
    private_dir(path.parent, tighten_existing=False)
    with open_private(path, "ab"):
        pass


def connect(path: Path) -> Database:
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
def transaction(db: Database) -> Iterator[None]:
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


def migrate(db: Database, path: Path, migrations: Sequence[Callable[[Database], None]],
            latest: int) -> None:
    """Bring `db` (the file at `path`) from its schema version to `latest` with `migrations`.
    Raises `StoreError` for a database from a newer Hestia, `sqlite3.Error` when SQLite fails."""
    # One transaction, taken with the write lock: a second process opening the file at the
    # same time waits, then finds the schema up to date.
    with transaction(db):
        db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
        rows = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
        version = int(rows[0][0]) if rows else 0
        if version > latest:
            raise StoreError(
                f"the database {path} has schema version {version}, but this Hestia knows only "
                f"up to {latest}: it was written by a newer Hestia. Upgrade Hestia, or point it "
                "at another data directory")
        for step in range(version, latest):
            migrations[step](db)
        if version != latest:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES "
                       "('schema_version', ?)", [str(latest)])
            log.info("store_migrated", path=str(path), previous=version, version=latest)
