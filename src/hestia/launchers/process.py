"""The `process` launcher: a local child process in a process group of its own.

The child gets its own session (`start_new_session`), so its process group holds it and every
process it spawns; stopping signals the whole group and, after `stop_timeout`, SIGKILLs it. That
is what leaves no orphan behind, even for a program that ignores SIGTERM or forks helpers.
The child writes straight into its log file (no pump task in between); the tail is read back
from the file when a status or a failed start needs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import structlog
import trio

from ..config import ProcessLauncherConfig
from ..errors import StartFailed
from .base import LaunchContext

__all__ = ["ProcessLauncher", "ProcessRunning", "read_tail"]

log = structlog.get_logger("hestia.process")

_LOG_ROTATE_BYTES = 10 * 1024 * 1024


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


class ProcessRunning:
    """A started child process and its process group."""

    def __init__(self, process: trio.Process, config: ProcessLauncherConfig, log_path: Path,
                 log_offset: int) -> None:
        self.process = process
        self.pid: int | None = process.pid
        self._config = config
        self.log_path = log_path
        self._log_offset = log_offset

    def __repr__(self) -> str:
        return f"<ProcessRunning pid={self.pid} returncode={self.process.returncode}>"

    async def wait(self) -> int | None:
        status = await self.process.wait()
        # The leader is gone; whatever it left in its group goes too.
        self._signal_group(signal.SIGKILL)
        return status

    async def stop(self) -> None:
        if self.process.returncode is None:
            self._signal_group(self._config.signal)
            with trio.move_on_after(self._config.stop_timeout):
                await self.process.wait()
        if self.process.returncode is None:
            log.warning("process_kill", pid=self.pid, after_s=self._config.stop_timeout)
        self._signal_group(signal.SIGKILL)
        await self.process.wait()

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def describe_exit(self, status: int | None) -> str:
        if status is None:
            return "ended"
        if status < 0:
            try:
                return f"killed by {signal.Signals(-status).name}"
            except ValueError:
                return f"killed by signal {-status}"
        return f"exited with status {status}"

    def log_tail(self, lines: int = 20) -> list[str]:
        return read_tail(self.log_path, self._log_offset, lines)


class ProcessLauncher:
    """Starts `config.command` with its output in `log_path`."""

    def __init__(self, config: ProcessLauncherConfig, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path

    def __repr__(self) -> str:
        return f"<ProcessLauncher {self.config.command[0]!r}>"

    async def start(self, context: LaunchContext) -> ProcessRunning:
        env = {**os.environ, **self.config.env,
               "HESTIA_SERVICE": context.service, "HESTIA_BACKEND": context.backend,
               "HESTIA_UPSTREAM": context.upstream, "HESTIA_PORT": str(context.port)}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.log_path.stat().st_size > _LOG_ROTATE_BYTES:
                self.log_path.replace(self.log_path.with_suffix(".log.1"))
        except FileNotFoundError:
            pass
        with self.log_path.open("ab") as log_file:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            log_file.write(f"--- hestia: starting {context.service} at {stamp}: "
                           f"{' '.join(self.config.command)}\n".encode())
            log_file.flush()
            offset = log_file.tell()
            try:
                process = await trio.lowlevel.open_process(
                    self.config.command, cwd=self.config.cwd, env=env,
                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    start_new_session=True)
            except OSError as exc:
                raise StartFailed(
                    f"cannot run {self.config.command[0]!r}: {exc.strerror or exc}",
                    service=context.service, reason="spawn_failed") from None
        return ProcessRunning(process, self.config, self.log_path, offset)
