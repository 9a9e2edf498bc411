"""The `container` launcher: a container through the podman or docker command line.

With `image`, `RUNTIME run --rm --name NAME [run_args] IMAGE [args]` stays in the foreground and
is supervised like a process: its exit (the container's) is the backend ending. A leftover
container of the same name (after a crash of Hestia, say) would make `run` refuse the name, so
`RUNTIME rm -f NAME` runs first. Without `image`, the existing container NAME is started with
`RUNTIME start NAME`, which returns once it runs detached: nothing is left to wait on, so `wait`
never returns and readiness is the supervisor's probe. Either way `stop` is
`RUNTIME stop -t SECONDS NAME`; the foreground `run`'s process group, if any, is then made sure
to be gone (SIGTERM, SIGKILL after `stop_timeout`) so no CLI process outlives the backend.

Every CLI call runs in a process group of its own with its output in the backend's log, and with
Hestia's environment plus the `HESTIA_*` variables (`HESTIA_ACTION` is `start` or `stop`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import structlog
import trio

from ..config import ContainerLauncherConfig
from ..errors import StartFailed
from .base import LaunchContext, StopOnce, upstream_host
from .ports import check_port
from .process import (
    LocalLauncher,
    ProcessRunning,
    describe_exit,
    program_env,
    read_tail,
    run_bounded,
    spawn,
)

__all__ = ["ContainerLauncher", "ContainerRunning"]

log = structlog.get_logger("hestia.container")

# `stop -t N` lets the engine wait N seconds before it SIGKILLs the container; the CLI gets this
# much more to report back before Hestia gives up on it.
_CLI_GRACE = 5.0


class _Cli:
    """Runs `RUNTIME <args>` for one start (and its stop) of one service."""

    def __init__(self, runtime: str, config: ContainerLauncherConfig, context: LaunchContext,
                 log_path: Path) -> None:
        self.runtime = runtime
        self.config = config
        self.context = context
        self.log_path = log_path

    async def call(self, *args: str, action: str,
                   timeout: float) -> tuple[int | None, ProcessRunning]:
        """Raises `StartFailed` when the runtime cannot be run."""
        return await run_bounded(
            [self.runtime, *args], service=self.context.service, log_path=self.log_path,
            env=program_env(self.context, action),
            action="starting" if action == "start" else "stopping",
            label=" ".join([self.config.runtime, *args]), timeout=timeout)

    async def stop(self) -> None:
        """`RUNTIME stop -t N NAME`, bounded; a failure is logged, never raised."""
        seconds = str(int(self.config.stop_timeout))
        service, name = self.context.service, self.config.name
        try:
            status, running = await self.call("stop", "-t", seconds, name, action="stop",
                                               timeout=self.config.stop_timeout + _CLI_GRACE)
        except StartFailed as exc:
            log.warning("container_stop_failed", service=service, container=name,
                        detail=exc.detail)
            return
        if status != 0:
            log.warning("container_stop_failed", service=service, container=name,
                        detail="timed out" if status is None else describe_exit(status),
                        exit_status=status, log_tail=running.log_tail())


class ContainerRunning:
    """A started container: the foreground `run` (with `image`) or a detached one."""

    def __init__(self, cli: _Cli, run: ProcessRunning | None, log_offset: int) -> None:
        self.pid: int | None = run.pid if run is not None else None
        self._cli = cli
        self._run = run
        self._log_offset = log_offset
        self._stop_once = StopOnce()

    def __repr__(self) -> str:
        mode = "detached" if self._run is None else f"pid={self.pid}"
        return f"<ContainerRunning {self._cli.config.runtime} {self._cli.config.name} {mode}>"

    async def wait(self) -> int | None:
        if self._run is None:
            # Detached: nothing here ends with the container.
            await trio.sleep_forever()
        return await self._run.wait()

    async def stop(self) -> None:
        """Never raises for a failing `RUNTIME stop` (it is logged as `container_stop_failed`)."""
        await self._stop_once(self._stop_now)

    async def _stop_now(self) -> None:
        # A foreground `run` that already ended took its `--rm` container with it.
        if self._run is None or self._run.process.returncode is None:
            await self._cli.stop()
        if self._run is not None:
            await self._run.stop()

    def describe_exit(self, status: int | None) -> str:
        return describe_exit(status)

    def log_tail(self, lines: int = 20) -> list[str]:
        return read_tail(self._cli.log_path, self._log_offset, lines)


class ContainerLauncher(LocalLauncher[ContainerLauncherConfig]):
    """Starts `config.name` through `config.runtime`, the CLI's output in `log_path`."""

    kind = "container"

    def __repr__(self) -> str:
        what = self.config.image or "existing"
        return f"<ContainerLauncher {self.config.runtime} {self.config.name} {what}>"

    async def start(self, context: LaunchContext) -> ContainerRunning:
        """Raises `StartFailed` when the runtime is not on PATH or cannot be run, (without
        `image`) when `RUNTIME start` fails, with its exit status and log tail, and (with
        `image`) when something else listens on the upstream's port (`port_in_use`). Without
        `image` the port is not checked: the existing container, already running, may well be
        what holds it, and `RUNTIME start` of a running container changes nothing."""
        config = self.config
        # Looked up at each start, so installing podman needs no restart of Hestia.
        runtime = shutil.which(config.runtime)
        if runtime is None:
            raise StartFailed(f"{config.runtime} not found on PATH", service=context.service,
                              reason="spawn_failed")
        env = self.begin(context)
        cli = _Cli(runtime, config, context, self.log_path)
        if config.image is None:
            status, started = await cli.call("start", config.name, action="start",
                                             timeout=float("inf"))
            if status != 0:
                raise StartFailed(
                    f"{config.runtime} start {config.name} {describe_exit(status)}",
                    service=context.service, reason="exited", exit_status=status,
                    log_tail=started.log_tail())
            return ContainerRunning(cli, None, started.log_offset)
        # Whether a leftover existed or not, `run` says what matters next.
        await cli.call("rm", "-f", config.name, action="start",
                       timeout=config.stop_timeout + _CLI_GRACE)
        # Only now: a leftover container of this name, just removed, held the port rightly.
        await check_port(context.service, upstream_host(context.upstream), context.port)
        argv = ["run", "--rm", "--name", config.name, *config.run_args, config.image,
                *config.args]
        run = await spawn([runtime, *argv], service=context.service, log_path=self.log_path,
                          env=env, label=" ".join([config.runtime, *argv]),
                          stop_timeout=config.stop_timeout, record=self.record(context))
        return ContainerRunning(cli, run, run.log_offset)
