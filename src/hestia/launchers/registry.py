"""The registry of launched process groups: what a killed Hestia leaves for the next one.

Every backend process a launcher keeps running (see `spawn(record=…)`) is recorded in
`<data_dir>/run/<service>.json` when it is spawned, and the record is removed once its handle has
seen the process gone. A record still there at start names a process group a previous Hestia
left behind; `recovery.recover` decides what becomes of it.

A pid alone does not name a process: pids are reused. A record therefore also holds the
process's start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`) and the boot id;
a process is the recorded one only when both match. Linux only (it reads `/proc`); elsewhere no
record is written and recovery finds nothing.

Everything here is synchronous and small (one file of a few hundred bytes per start or stop):
fine on the event loop.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from ..private_files import open_private, private_dir

__all__ = ["ProcStat", "Record", "RecordSlot", "boot_id", "fingerprint", "forget", "is_alive",
           "proc_stat", "read_record", "record_path", "record_spawned", "run_dir"]

log = structlog.get_logger("hestia.registry")


@dataclass(frozen=True, slots=True)
class ProcStat:
    """What `/proc/<pid>/stat` says about a process that matters here."""

    state: str        # R, S, D, Z (zombie), X (dead), …
    pgid: int
    start_time: int   # clock ticks since boot: with the boot id, names the process for good

    @property
    def ended(self) -> bool:
        # A zombie has exited; it only waits for its parent (or init) to reap it.
        return self.state in ("Z", "X")


def proc_stat(pid: int) -> ProcStat | None:
    """The process `pid` as `/proc` shows it, or None when there is none (or no `/proc`)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    try:
        # The command name (field 2) is in parentheses and may itself hold spaces and `)`.
        fields = data[data.rindex(b")") + 2:].split()
        return ProcStat(fields[0].decode(), int(fields[2]), int(fields[19]))
    except (ValueError, IndexError):
        return None


def boot_id() -> str | None:
    """This boot's id: a record from an earlier boot names no process of this one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def is_alive(pid: int, start_time: int) -> bool:
    """Whether process `pid` exists, has not ended, and is the one that started at
    `start_time` (not a later process that reused the pid)."""
    stat = proc_stat(pid)
    return stat is not None and stat.start_time == start_time and not stat.ended


def fingerprint(config: BaseModel) -> str:
    """A short digest of a launcher's configuration: a leftover is adopted only by a
    configuration that would have started the same thing."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


def run_dir(data_dir: Path) -> Path:
    return data_dir / "run"


def record_path(data_dir: Path, service: str) -> Path:
    """Where the record of `service`'s backend process goes (service ids are safe file names)."""
    return run_dir(data_dir) / f"{service}.json"


@dataclass(frozen=True, slots=True)
class RecordSlot:
    """Where a launcher records the process it keeps running, and what the record says besides
    the process itself. Launchers build one per start and hand it to `spawn`."""

    path: Path
    upstream: str
    machine: str
    launcher: str
    config: str  # `fingerprint` of the launcher's configuration


class Record(BaseModel):
    """One live backend process group, as a JSON file of the registry."""

    # Unknown keys are ignored, so that a newer Hestia's records still read.
    model_config = ConfigDict(frozen=True, extra="ignore")

    service: str
    pid: int
    pgid: int
    start_time: int
    boot_id: str | None
    command: list[str]
    upstream: str
    machine: str
    launcher: str
    config: str
    stop_signal: str
    stop_timeout: float
    log_path: str
    log_offset: int
    owner_pid: int
    """The Hestia that launched it: while that one runs, the record is not a leftover."""
    owner_start_time: int | None
    recorded_at: str


def record_spawned(slot: RecordSlot, *, service: str, pid: int, command: list[str],
                   stop_signal: str, stop_timeout: float, log_path: Path,
                   log_offset: int) -> Record | None:
    """Record a just-spawned process group (`pid` leads it). Never raises: a record that cannot
    be written costs only the recovery of this process after a crash (logged as
    `recovery_record_failed`); it must not fail the start."""
    stat = proc_stat(pid)  # still readable if it already exited: it is not reaped yet
    if stat is None:
        log.warning("recovery_record_failed", service=service, pid=pid, detail="no /proc entry")
        return None
    owner = proc_stat(os.getpid())
    record = Record(
        service=service, pid=pid, pgid=pid, start_time=stat.start_time, boot_id=boot_id(),
        command=command, upstream=slot.upstream, machine=slot.machine,
        launcher=slot.launcher, config=slot.config,
        stop_signal=stop_signal, stop_timeout=stop_timeout, log_path=str(log_path),
        log_offset=log_offset, owner_pid=os.getpid(),
        owner_start_time=owner.start_time if owner is not None else None,
        recorded_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    try:
        _write(slot.path, record.model_dump_json(indent=1) + "\n")
    except OSError as exc:
        log.warning("recovery_record_failed", service=service, pid=pid, path=str(slot.path),
                    detail=exc.strerror or str(exc))
        return None
    return record


def _write(path: Path, text: str) -> None:
    # Write then rename: a reader (the next Hestia) sees the old record or the new one, never
    # half of one. No fsync: what would lose the page cache (a power cut, a kernel crash) also
    # changes the boot id, which makes every record stale anyway.
    private_dir(path.parent)  # a record names commands, which may hold secrets
    tmp = path.with_name(path.name + ".tmp")
    with open_private(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def read_record(path: Path) -> Record | None:
    """The record in `path`, or None when there is none or it cannot be read or understood."""
    try:
        return Record.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def forget(path: Path, pid: int, start_time: int) -> None:
    """Remove the record at `path` if it still names this process. A newer record of the same
    service (a later start) stays. Never raises."""
    record = read_record(path)
    if record is None or (record.pid, record.start_time) != (pid, start_time):
        return
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("recovery_forget_failed", path=str(path), detail=exc.strerror or str(exc))
