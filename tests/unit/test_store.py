"""The SQLite store: schema and migrations, events as rows, the batching writer, API keys.

Real files in `tmp_path` and real worker threads, so the real clock, each async test bounded by
`trio.fail_after`. Files are inspected with plain `sqlite3` where the point is what is on disk.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from hestia import store as store_module
from hestia.events import EventBus
from hestia.store import Store, StoreError

TIMEOUT = 10


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "hestia.db"


@pytest.fixture
async def store(path: Path) -> AsyncIterator[Store]:
    """A store with its writer running; stopped (which flushes) and closed after the test."""
    store = Store(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        yield store
        nursery.cancel_scope.cancel()
    store.close()


@pytest.fixture
def bus(store: Store) -> EventBus:
    bus = EventBus()
    bus.add_listener(store.record_event)
    return bus


def on_disk(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


# --- schema and migrations ------------------------------------------------------------------------

def test_new_database_has_schema_version_1_and_uses_wal(path: Path) -> None:
    Store(path).close()
    assert Store.SCHEMA_VERSION == 1
    assert on_disk(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("1",)]
    tables = {name for (name,) in on_disk(path, "SELECT name FROM sqlite_master "
                                                "WHERE type = 'table'")}
    assert {"meta", "services", "machines", "activity", "tasks", "processes",
            "auth_keys"} <= tables
    assert on_disk(path, "PRAGMA journal_mode") == [("wal",)]


def test_database_from_a_newer_hestia_is_refused(path: Path) -> None:
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99.*newer Hestia"):
        Store(path)


def test_a_damaged_database_says_what_to_do_and_what_it_costs(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a database at all, " * 100)
    with pytest.raises(StoreError) as caught:
        Store(path)
    assert str(caught.value) == (
        f"the database {path} is damaged (file is not a database); Hestia cannot use it. Move "
        f"it aside with its -wal and -shm files (`mv {path} {path}.damaged`) and start again: "
        "a new, empty one is made, which loses the API keys (make new ones with `hestia keys "
        "create`) and the history (last use, start durations, activity, Semaphore tasks); the "
        "configuration and the services are not affected")
    assert path.read_bytes() == b"not a database at all, " * 100  # nothing was written to it


def test_an_unreadable_database_is_not_called_damaged(path: Path) -> None:
    path.mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(StoreError, match=f"^cannot open the database {path}: "):
        Store(path)


def test_version_0_database_is_migrated_to_1(path: Path) -> None:
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '0')")
    store = Store(path)
    store.save_service("ollama", state="COLD")
    store.flush_sync()
    assert store.services()["ollama"]["state"] == "COLD"
    store.close()
    assert on_disk(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("1",)]


def test_later_migrations_run_in_order_and_keep_the_data(path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    old = Store(path)
    old.save_service("ollama", state="READY")
    old.close()

    def v2(db) -> None:
        db["services"].add_column("note", str)
        db.execute("UPDATE services SET note = 'migrated'")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, v2])
    monkeypatch.setattr(Store, "SCHEMA_VERSION", 2)
    new = Store(path)
    assert new.services()["ollama"] == new.services()["ollama"] | {
        "state": "READY", "note": "migrated"}
    new.close()
    assert on_disk(path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]
    Store(path).close()  # already at 2: nothing runs again (v2 would fail adding the column)


# --- events --------------------------------------------------------------------------------------

async def test_events_become_activity_rows_and_update_services_tasks_machines(
        store: Store, bus: EventBus) -> None:
    bus.publish("state", "ollama", state="STARTING", previous="COLD", machine="gpu")
    bus.publish("ready", "ollama", machine="gpu", duration_ms=1500.0, attempts=1)
    bus.publish("stopped", "ollama", reason="idle", duration_ms=120.0)
    bus.publish("state", "ollama", state="COLD", previous="READY")
    bus.publish("semaphore_task", "ollama", action="start", task_id=42, template_id=7,
                status="success", machine_id="gpu", duration_ms=3000.0, error=None)
    bus.publish("machine", None, machine="gpu", enabled=False)
    with trio.fail_after(TIMEOUT):
        await store.flush()

    service = store.services()["ollama"]
    assert service["state"] == "COLD" and service["machine"] == "gpu"
    assert service["last_start_duration_ms"] == 1500.0 and service["starts"] == 1

    activity = store.activity("ollama")
    assert [row["kind"] for row in activity] == ["semaphore_task", "state", "stopped", "ready",
                                                  "state"]
    stopped = activity[2]
    assert stopped["reason"] == "idle" and stopped["duration_ms"] == 120.0
    assert stopped["detail"] == {"reason": "idle", "duration_ms": 120.0}
    assert [row["kind"] for row in store.activity()][0] == "machine"

    (task,) = store.tasks("ollama")
    assert task | {"action": "start", "task_id": 42, "template_id": 7, "status": "success",
                   "machine_id": "gpu", "duration_ms": 3000.0, "error": None} == task
    assert task["completed_at"] - task["started_at"] == pytest.approx(3.0)

    assert store.machines()["gpu"]["enabled"] is False


async def test_start_durations_are_seconds_oldest_first(store: Store, bus: EventBus) -> None:
    for ms in (1000, 2000, 3000):
        bus.publish("ready", "ollama", machine="gpu", duration_ms=ms, attempts=1)
    bus.publish("ready", "other", machine="gpu", duration_ms=9000, attempts=1)
    bus.publish("stopped", "ollama", reason="idle", duration_ms=50)
    with trio.fail_after(TIMEOUT):
        await store.flush()
    assert store.start_durations("ollama") == [1.0, 2.0, 3.0]
    assert store.start_durations("ollama", limit=2) == [2.0, 3.0]
    assert store.start_durations("nobody") == []


async def test_a_thousand_events_are_written_in_a_few_transactions(store: Store,
                                                                    bus: EventBus) -> None:
    begins: list[str] = []
    store._wdb.conn.set_trace_callback(
        lambda sql: begins.append(sql) if sql.startswith("BEGIN") else None)
    batches = store.batches
    for i in range(1000):
        bus.publish("queue_timeout", "ollama", waited_s=i, state="STARTING")
    with trio.fail_after(TIMEOUT):
        await store.flush()
    assert len(store.activity("ollama", limit=2000)) == 1000
    assert 1 <= len(begins) <= 3
    assert store.batches - batches == len(begins)


# --- the writer ----------------------------------------------------------------------------------

async def test_run_flushes_what_is_queued_when_cancelled(path: Path) -> None:
    store = Store(path)
    bus = EventBus()
    bus.add_listener(store.record_event)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            store.save_service("ollama", state="READY", last_error={"error": "boom"})
            for i in range(300):
                bus.publish("queue_overflow", "ollama", queue_max=i, state="READY")
            nursery.cancel_scope.cancel()
    assert "queued=0" in repr(store)
    reopened = Store(path)  # another connection: what it reads is on disk
    assert reopened.services()["ollama"]["last_error"] == {"error": "boom"}
    assert len(reopened.activity("ollama", limit=1000)) == 300
    reopened.close()
    store.close()


async def test_writes_wait_without_a_writer_until_flushed(path: Path) -> None:
    store = Store(path)
    store.save_machine("gpu", enabled=True, failures_in_a_row=2, last_failure=1.5)
    assert store.machines() == {}
    with trio.fail_after(TIMEOUT):
        await store.flush()  # no writer running: flush applies them itself
    assert store.machines()["gpu"] | {"enabled": True, "failures_in_a_row": 2,
                                      "last_failure": 1.5} == store.machines()["gpu"]
    store.save_machine("gpu", failures_in_a_row=0)
    store.flush_sync()
    assert store.machines()["gpu"]["failures_in_a_row"] == 0
    assert store.machines()["gpu"]["last_failure"] == 1.5  # an upsert changes only what is given
    store.close()


async def test_flush_sync_refuses_while_the_writer_runs(store: Store) -> None:
    with pytest.raises(RuntimeError, match="await flush"):
        store.flush_sync()


def test_unknown_columns_are_refused_when_queued(path: Path) -> None:
    store = Store(path)
    with pytest.raises(TypeError, match="services has no column idel_timeout"):
        store.save_service("ollama", idel_timeout=3)
    store.close()


def test_restart_keeps_state(path: Path) -> None:
    first = Store(path)
    bus = EventBus()
    bus.add_listener(first.record_event)
    bus.publish("ready", "ollama", machine="gpu", duration_ms=2500, attempts=2)
    bus.publish("semaphore_task", "ollama", action="stop", task_id=3, template_id=1,
                status="error", machine_id="gpu", duration_ms=10.0, error="boom")
    bus.publish("machine", None, machine="cpu", enabled=False)
    first.save_service("ollama", last_used=123.5, last_error={"detail": "x"})
    first.save_process("ollama", pid=4242, start_time=99, started_at=1.0, boot_id="b",
                       command=["ollama", "serve"], upstream="http://127.0.0.1:11434",
                       machine="gpu", launcher="local")
    first.save_process("gone", pid=1)
    first.forget_process("gone")
    first.close()  # with no writer running, close writes what is queued

    second = Store(path)
    service = second.services()["ollama"]
    assert (service["machine"], service["starts"], service["last_used"]) == ("gpu", 1, 123.5)
    assert service["last_error"] == {"detail": "x"}
    assert second.machines()["cpu"]["enabled"] is False
    assert [row["kind"] for row in second.activity()] == ["machine", "semaphore_task", "ready"]
    assert second.tasks()[0]["error"] == "boom"
    assert second.start_durations("ollama") == [2.5]
    processes = second.processes()
    assert list(processes) == ["ollama"]
    assert processes["ollama"]["command"] == ["ollama", "serve"]
    assert processes["ollama"]["pid"] == 4242
    second.close()


def test_pruning_keeps_the_newest_rows_of_each_service(path: Path) -> None:
    store = Store(path, keep_activity=10, prune_every=43)
    bus = EventBus()
    bus.add_listener(store.record_event)
    for i in range(40):
        bus.publish("queue_timeout", "ollama", waited_s=i, state="READY")
    for i in range(3):
        bus.publish("queue_timeout", "other", waited_s=i, state="READY")
    store.flush_sync()  # the 43rd event queued a prune after itself
    kept = store.activity("ollama", limit=100)
    assert [row["detail"]["waited_s"] for row in kept] == list(range(39, 29, -1))
    assert len(store.activity("other")) == 3
    store.close()


async def test_the_cli_can_write_while_the_gateway_writes(store: Store, bus: EventBus,
                                                          path: Path) -> None:
    cli = Store(path)
    for i in range(200):
        bus.publish("queue_timeout", "ollama", waited_s=i, state="READY")
    cli.add_key("laptop", "read", "hash-1", "hst_abcd")
    with trio.fail_after(TIMEOUT):
        await store.flush()
    assert store.find_key("hash-1")["name"] == "laptop"
    assert len(cli.activity(limit=1000)) == 200
    cli.close()


# --- API keys ------------------------------------------------------------------------------------

def test_keys_add_revoke_reuse_and_never_show_the_hash(path: Path) -> None:
    store = Store(path)
    store.add_key("laptop", "admin", "hash-1", "hst_1111")
    with pytest.raises(StoreError, match="named 'laptop' exists"):
        store.add_key("laptop", "read", "hash-2", "hst_2222")
    with pytest.raises(StoreError, match="scope"):
        store.add_key("phone", "root", "hash-3", "hst_3333")
    assert store.find_key("hash-1") | {"name": "laptop", "scope": "admin",
                                       "prefix": "hst_1111"} == store.find_key("hash-1")

    assert store.revoke_key("laptop") is True
    assert store.revoke_key("laptop") is False
    assert store.revoke_key("nobody") is False
    assert store.find_key("hash-1") is None
    (revoked,) = store.keys()
    assert revoked["revoked_at"] is not None

    store.add_key("laptop", "proxy", "hash-2", "hst_2222")  # a revoked name may be used again
    assert store.find_key("hash-2")["scope"] == "proxy"
    assert store.find_key("hash-1") is None
    store.add_key("phone", "read", "hash-4", "hst_4444")
    keys = store.keys()
    assert [(k["name"], k["revoked_at"]) for k in keys] == [("laptop", None), ("phone", None)]
    for row in keys:  # a listing never shows a hash
        assert "key_hash" not in row and not any(str(v).startswith("hash-") for v in row.values())
    assert store.find_key("hash-4")["key_hash"] == "hash-4"  # for the constant-time comparison
    store.close()


def test_touch_key_is_a_queued_write(path: Path) -> None:
    store = Store(path)
    store.add_key("laptop", "read", "hash-1", "hst_1111")
    store.touch_key("laptop")
    assert store.find_key("hash-1")["last_used_at"] is None
    store.flush_sync()
    assert store.find_key("hash-1")["last_used_at"] is not None
    store.close()
