"""The `command` launcher: start and stop a backend through shell commands (`/bin/sh -c`).

The start command runs like a `process` launcher's child (its own process group, output in the
backend's log), and what it does decides what the backend is:

- it exits 0: the backend was started elsewhere (`ssh gpu-box systemctl start ollama`, or
  `ollama serve &`). From then on only the readiness probe and the stop command speak for it,
  so `wait` never returns: a return would tell the supervisor the backend ended.
- it keeps running: it *is* the backend, supervised like a process; its exit while ready is a
  crash.
- it exits with another status: the start failed, with that status and the log tail.

`stop` first stops the start command's group if it still runs, then runs the stop command, in a
group of its own, SIGKILLed when it overruns `stop_timeout`. A failing stop command is logged,
never raised: the supervisor stops inside a shielded scope and has nobody to hand an error to.
"""

from __future__ import annotations

import signal
from pathlib import Path

import structlog
import trio

from ..config import CommandLauncherConfig
from ..errors import StartFailed
from .base import LaunchContext, StopOnce
from .process import (
    LocalLauncher,
    ProcessRunning,
    describe_exit,
    program_env,
    run_bounded,
    spawn,
)

__all__ = ["CommandLauncher", "CommandRunning"]

log = structlog.get_logger("hestia.command")

_SHELL = "/bin/sh"


class CommandRunning:
    """A start command (running, or ended with 0) and the stop command still to run."""

    def __init__(self, start: ProcessRunning, config: CommandLauncherConfig,
                 context: LaunchContext, log_path: Path) -> None:
        self.pid: int | None = start.pid
        self._start = start
        self._config = config
        self._context = context
        self._log_path = log_path
        self._stop_once = StopOnce()

    def __repr__(self) -> str:
        status = self._start.process.returncode
        state = self._stop_once.state("running" if status is None else f"exited {status}")
        return f"<CommandRunning {self._context.service} pid={self.pid} {state}>"

    async def wait(self) -> int | None:
        status = await self._start.process.wait()
        if status == 0:
            # Started elsewhere. Whatever the command left in its group (`serve &`) is the
            # backend now, so the group is not signalled either. Its record goes: without its
            # leader it could not be told from a stranger's group that reused the pid.
            self._start.forget()
            await trio.sleep_forever()
        # A failed (or crashed) start command leaves nothing of its group behind.
        self._start.signal_group(signal.SIGKILL)
        self._start.forget()
        return status

    async def stop(self) -> None:
        """Stop the start command's group if it still runs, then run the stop command, if
        any. Never raises for a failing stop command (it is logged as `command_stop_failed`)."""
        await self._stop_once(self._stop_now)

    async def _stop_now(self) -> None:
        # After a 0 exit the group is the backend started elsewhere: the stop command's
        # business. Otherwise SIGTERM, then SIGKILL after stop_timeout (or at once if the
        # leader already ended), as the process launcher does.
        if self._start.process.returncode != 0:
            await self._start.stop()
        if self._config.stop is not None:
            await self._run_stop(self._config.stop)

    async def _run_stop(self, command: str) -> None:
        service = self._context.service
        timeout = self._config.stop_timeout
        env = program_env(self._context, "stop", self._config.env)
        try:
            status, running = await run_bounded(
                [_SHELL, "-c", command], service=service, log_path=self._log_path, env=env,
                cwd=self._config.cwd, action="stopping", label=command, timeout=timeout)
        except StartFailed as exc:
            log.warning("command_stop_failed", service=service, detail=exc.detail)
            return
        if status is None:
            log.warning("command_stop_failed", service=service, reason="timeout",
                        after_s=timeout, log_tail=running.log_tail())
        elif status != 0:
            log.warning("command_stop_failed", service=service, exit_status=status,
                        detail=describe_exit(status), log_tail=running.log_tail())
        else:
            log.info("command_stopped", service=service)

    def describe_exit(self, status: int | None) -> str:
        return describe_exit(status)

    def log_tail(self, lines: int = 20) -> list[str]:
        # From the start on, so a stop command's output is part of it too.
        return self._start.log_tail(lines)


class CommandLauncher(LocalLauncher[CommandLauncherConfig]):
    """Runs `config.start` with `/bin/sh -c`, its output appended to `log_path`."""

    kind = "command"

    def __repr__(self) -> str:
        return f"<CommandLauncher {self.config.start!r}>"

    async def start(self, context: LaunchContext) -> CommandRunning:
        """Spawn the start command and return at once (its exit is `wait`'s business).
        Raises `StartFailed` when it cannot be spawned (e.g. `cwd` does not exist)."""
        env = self.begin(context, self.config.env)
        running = await spawn([_SHELL, "-c", self.config.start], service=context.service,
                              log_path=self.log_path, env=env, cwd=self.config.cwd,
                              label=self.config.start, stop_timeout=self.config.stop_timeout,
                              record=self.record(context))
        return CommandRunning(running, self.config, context, self.log_path)
