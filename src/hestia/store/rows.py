"""Rows as the store writes and reads them: the writes the writer task applies (each a
function of the database, queued with its arguments bound) and the conversion of values.

Table and column names are only ever taken from the field sets below or written out here,
which is what makes the f-string SQL of `upsert` and `prune` safe.
"""

from __future__ import annotations

import json
from typing import Any

from sqlite_utils import Database

from ..events import Event

__all__ = ["JSON_FIELDS", "KEEP_TASKS", "MACHINE_FIELDS", "PROCESS_FIELDS", "SERVICE_FIELDS",
           "decoded", "delete", "insert", "number", "prune", "task_row", "text", "to_json",
           "touch_key", "upsert"]

KEEP_TASKS = 1000         # Semaphore tasks kept per service

# Columns each `Store.save_*` accepts.
SERVICE_FIELDS = frozenset({"state", "machine", "last_used", "last_error",
                            "last_start_duration_ms", "starts"})
MACHINE_FIELDS = frozenset({"enabled", "failures_in_a_row", "last_failure"})
PROCESS_FIELDS = frozenset({"pid", "pgid", "start_time", "started_at", "boot_id", "command",
                            "upstream", "machine", "launcher", "config", "stop_signal"})
JSON_FIELDS = frozenset({"last_error", "command", "detail"})


# --- writes, as the writer applies them -----------------------------------------------------------

def insert(table: str, row: dict[str, Any], db: Database) -> None:
    db[table].insert(row)


def delete(table: str, pk: str, key: str, db: Database) -> None:
    db.execute(f"DELETE FROM {table} WHERE {pk} = ?", [key])


def upsert(table: str, pk: str, key: str, values: dict[str, Any], increment: tuple[str, ...],
           db: Database) -> None:
    """Insert or update the row `key`: only `values` change, and `increment` columns go up by
    one (a new row starts them at 1)."""
    columns = [pk, *values, *increment]
    changes = [f"{c} = excluded.{c}" for c in values] + [f"{c} = {c} + 1" for c in increment]
    db.execute(f"INSERT INTO {table} ({', '.join(columns)}) "
               f"VALUES ({', '.join('?' * len(columns))}) "
               f"ON CONFLICT ({pk}) DO UPDATE SET {', '.join(changes)}",
               [key, *values.values(), *[1] * len(increment)])


def touch_key(name: str, at: float, db: Database) -> None:
    db.execute("UPDATE auth_keys SET last_used_at = ? WHERE name = ? AND revoked_at IS NULL",
               [at, name])


def prune(keep_activity: int, db: Database) -> None:
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

def task_row(event: Event) -> dict[str, Any]:
    """A tasks row from a `semaphore_task` event (published when the task finished)."""
    data = event.data
    duration = number(data.get("duration_ms"))
    completed = number(data.get("completed_at")) or event.at
    started = number(data.get("started_at"))
    if started is None and duration is not None:
        started = completed - duration / 1000
    return {"service": event.service, "action": text(data.get("action")),
            "task_id": data.get("task_id"), "template_id": data.get("template_id"),
            "template": text(data.get("template")), "project_id": data.get("project_id"),
            "machine_id": text(data.get("machine_id", data.get("machine"))),
            "status": text(data.get("status")), "started_at": started,
            "completed_at": completed, "duration_ms": duration,
            "error": text(data.get("error"))}


def to_json(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def decoded(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with its JSON columns decoded (in place)."""
    for name in JSON_FIELDS & row.keys():
        if row[name] is not None:
            row[name] = json.loads(row[name])
    return row


def text(value: Any) -> str | None:
    return None if value is None else str(value)


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None
