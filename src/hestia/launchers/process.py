"""The `process` launcher, and what every launcher that runs a program here shares: the
process-group machinery (`spawn`, `run_bounded`, `ProcessRunning`) and, for the `process`,
`command` and `container` launchers, `LocalLauncher` (constructor, start prelude, record).

A child gets its own session (`start_new_session`), so its process group holds it and every
process it spawns; stopping signals the whole group and, after `stop_timeout`, SIGKILLs it. That
is what leaves no orphan behind, even for a program that ignores SIGTERM or forks helpers.
The child writes straight into its log file (no pump task in between); the tail is read back
from the file when a status or a failed start needs it.

A process that stays running as the backend is spawned with `record=`: it is written to the
registry (launchers/registry.py), and its handle removes the record once `wait` or `stop` has seen
the process group gone. That record is what lets the next Hestia stop (or adopt) it should this
one be killed. Short commands (`run_bounded`) are not recorded: they end with their caller.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Generic, TypeVar

import structlog
import trio
from pydantic import BaseModel

from ..config import ProcessLauncherConfig
from ..errors import StartFailed
from ..private_files import open_private, private_dir
from .base import LaunchContext, Launcher, upstream_host
from .ports import check_port
from .registry import Record, RecordSlot, fingerprint, forget, record_spawned

__all__ = ["LocalLauncher", "ProcessLauncher", "ProcessRunning", "describe_exit", "program_env",
           "read_tail", "rotate_log", "run_bounded", "spawn"]

log = structlog.get_logger("hestia.process")

_LOG_ROTATE_BYTES = 10 * 1024 * 1024


def rotate_log(path: Path) -> None:
    """Make sure `path`'s directory exists (private: logs may print secrets); move the log to
    `.log.1` once it passes 10 MiB. Call it once per start, never between a start and its
    stop, or the start's log offset would point into the rotated file."""
    private_dir(path.parent)
    try:
        if path.stat().st_size > _LOG_ROTATE_BYTES:
            path.replace(path.with_suffix(".log.1"))
    except FileNotFoundError:
        pass


def read_tail(path: Path, offset: int, lines: int) -> list[str]:
    """The last `lines` lines of `path` written after byte `offset`."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(offset, size - 64 * 1024)
            f.seek(start)
            data = f.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace").splitlines()
    if start > offset and text:
        text = text[1:]  # the first line was cut by the 64 KiB window
    return text[-lines:]


def program_env(context: LaunchContext, action: str,
                extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a program a launcher runs: Hestia's own, then `extra` (the launcher's
    `env`), then `context`'s `HESTIA_*` variables with `HESTIA_ACTION=action`."""
    return {**os.environ, **(extra or {}), **context.environment(action)}


def describe_exit(status: int | None) -> str:
    """`exited with status 3`, `killed by SIGKILL`, or `ended` when the status is unknown."""
    if status is None:
        return "ended"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


class ProcessRunning:
    """A started child process and its process group."""

    def __init__(self, process: trio.Process, log_path: Path, log_offset: int, *,
                 stop_signal: signal.Signals = signal.SIGTERM,
                 stop_timeout: float = 10.0, record: tuple[Path, Record] | None = None) -> None:
        self.process = process
        self.pid: int | None = process.pid
        self.log_path = log_path
        self.log_offset = log_offset
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self._record = record

    def __repr__(self) -> str:
        return f"<ProcessRunning pid={self.pid} returncode={self.process.returncode}>"

    async def wait(self) -> int | None:
        status = await self.process.wait()
        # The leader is gone; whatever it left in its group goes too.
        self.signal_group(signal.SIGKILL)
        self.forget()
        return status

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.signal_group(self.stop_signal)
            with trio.move_on_after(self.stop_timeout):
                await self.process.wait()
        if self.process.returncode is None:
            log.warning("process_kill", pid=self.pid, after_s=self.stop_timeout)
        self.signal_group(signal.SIGKILL)
        await self.process.wait()
        self.forget()

    def forget(self) -> None:
        """Remove the registry record, if any: call it once the group is gone (or, after a
        command launcher's start command exited 0, no longer this handle's business)."""
        if self._record is not None:
            path, record = self._record
            self._record = None
            forget(path, record.pid, record.start_time)

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal the whole process group; a group that is already gone is not an error."""
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def describe_exit(self, status: int | None) -> str:
        return describe_exit(status)

    def log_tail(self, lines: int = 20) -> list[str]:
        return read_tail(self.log_path, self.log_offset, lines)


async def spawn(command: Sequence[str], *, service: str, log_path: Path,
                env: Mapping[str, str], cwd: Path | None = None, action: str = "starting",
                label: str | None = None, stop_signal: signal.Signals = signal.SIGTERM,
                stop_timeout: float = 10.0, record: RecordSlot | None = None) -> ProcessRunning:
    """Start `command` as the leader of a new process group, stdin from /dev/null, stdout and
    stderr appended to `log_path` after a `--- hestia: <action> <service> at …: <label>` line
    (`label` defaults to the command). The handle's log tail starts after that line.

    With `record`, the group is written to the registry at `record.path` (see the module
    docstring); a record that cannot be written is logged, not raised.

    Raises `StartFailed` (reason `spawn_failed`) when the program cannot be run at all.
    """
    label = " ".join(command) if label is None else label
    private_dir(log_path.parent)
    with open_private(log_path) as log_file:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        log_file.write(f"--- hestia: {action} {service} at {stamp}: {label}\n".encode())
        log_file.flush()
        offset = log_file.tell()
        try:
            process = await trio.lowlevel.open_process(
                list(command), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            detail = f"cannot run {command[0]!r}: {exc.strerror or exc}"
            if exc.filename and str(exc.filename) != command[0]:
                detail += f" ({exc.filename})"  # e.g. the working directory is missing
            raise StartFailed(detail, service=service, reason="spawn_failed") from None
    recorded = None
    if record is not None:
        entry = record_spawned(record, service=service, pid=process.pid, command=list(command),
                               stop_signal=stop_signal.name, stop_timeout=stop_timeout,
                               log_path=log_path, log_offset=offset)
        recorded = (record.path, entry) if entry is not None else None
    return ProcessRunning(process, log_path, offset, stop_signal=stop_signal,
                          stop_timeout=stop_timeout, record=recorded)


async def run_bounded(command: Sequence[str], *, service: str, log_path: Path,
                      env: Mapping[str, str], cwd: Path | None = None,
                      action: str = "running", label: str | None = None,
                      timeout: float = math.inf) -> tuple[int | None, ProcessRunning]:
    """Run a short command (a stop hook, a container CLI call) to its end, as `spawn` does.

    Returns its exit status and its handle (for the log tail). Past `timeout`, or when the
    caller is cancelled, its whole group is SIGKILLed (the status is then None, or the
    cancellation propagates): a hung `ssh` must not hold a shielded stop forever. After a normal
    exit the group is left alone, because a CLI may leave a daemon of its own behind on purpose.
    Raises `StartFailed` when the program cannot be run.
    """
    running = await spawn(command, service=service, log_path=log_path, env=env, cwd=cwd,
                          action=action, label=label)
    try:
        with trio.move_on_after(timeout):
            return await running.process.wait(), running
        return None, running
    finally:
        if running.process.returncode is None:
            # Still unreaped, so its pid still names its group: no stranger gets the signal.
            running.signal_group(signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await running.process.wait()


ConfigT = TypeVar("ConfigT", bound=BaseModel)


class LocalLauncher(Launcher, Generic[ConfigT]):
    """What the `process`, `command` and `container` launchers share: their configuration, the
    log what they run writes to, where the process they keep running as the backend is
    recorded (`record_path`; None: not recorded), and the beginning of every start."""

    def __init__(self, config: ConfigT, log_path: Path, record_path: Path | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.record_path = record_path

    def begin(self, context: LaunchContext, env: Mapping[str, str] | None = None,
              ) -> dict[str, str]:
        """The prelude of a start: the log rotated (once per start, see `rotate_log`); the
        environment of the start's program (`program_env` with the launcher's `env`)."""
        rotate_log(self.log_path)
        return program_env(context, "start", env)

    def record(self, context: LaunchContext) -> RecordSlot | None:
        """What `spawn(record=…)` gets for the process kept running as the backend."""
        if self.record_path is None:
            return None
        return RecordSlot(self.record_path, context.upstream, context.machine, self.kind,
                          fingerprint(self.config))


class ProcessLauncher(LocalLauncher[ProcessLauncherConfig]):
    """Starts `config.command` with its output in `log_path`."""

    kind = "process"

    def __repr__(self) -> str:
        return f"<ProcessLauncher {self.config.command[0]!r}>"

    async def start(self, context: LaunchContext) -> ProcessRunning:
        """Raises `StartFailed` when the program cannot be run, or when something else already
        listens on the upstream's port on this machine (`port_in_use`, see ports.py)."""
        await check_port(context.service, upstream_host(context.upstream), context.port)
        env = self.begin(context, self.config.env)
        return await spawn(self.config.command, service=context.service,
                           log_path=self.log_path, env=env, cwd=self.config.cwd,
                           stop_signal=self.config.signal,
                           stop_timeout=self.config.stop_timeout, record=self.record(context))
