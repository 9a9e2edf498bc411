"""The `wol` launcher: wake a machine with a Wake-on-LAN magic packet; stop it with a command.

Waking is fire-and-forget: the magic packet is a UDP datagram nobody answers, so `start` returns
as soon as it is sent and the supervisor's readiness probe decides when the backend serves (and
the readiness timeout when it never will). The packet is sent three times, 100 ms apart, because
a single lost datagram would otherwise cost a whole readiness timeout.

A woken machine cannot be watched from here, so `wait` never returns: crash detection is out of
scope. Stopping runs the optional `stop` command (e.g. `ssh gpu-box sudo poweroff`) like the
`process` launcher runs its child: in a process group of its own, SIGKILLed as a whole when it
overruns `stop_timeout`, so a hung ssh never holds a shielded stop forever.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import structlog
import trio

from ..config import WolLauncherConfig
from ..errors import StartFailed
from ..private_files import open_private, private_dir
from .base import LaunchContext, Launcher, StopOnce
from .process import describe_exit, read_tail, run_bounded

__all__ = ["WolLauncher", "WolRunning", "build_magic_packet"]

log = structlog.get_logger("hestia.wol")

# The same forms `WolLauncherConfig.mac` accepts: six hex pairs, each optionally after `:`/`-`.
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(?:[:-]?[0-9A-Fa-f]{2}){5}$")
_SENDS = 3
_SEND_INTERVAL = 0.1


def build_magic_packet(mac: str) -> bytes:
    """Six 0xFF bytes, then the 6-byte MAC address 16 times (102 bytes).

    Accepts `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` and `aabbccddeeff` (any case). Raises
    `ValueError` for anything else.
    """
    if not _MAC.match(mac):
        raise ValueError(f"invalid MAC address {mac!r}: use aa:bb:cc:dd:ee:ff")
    address = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    return b"\xff" * 6 + address * 16


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class WolRunning:
    """A woken machine: nothing to wait on, and an optional stop command."""

    def __init__(self, config: WolLauncherConfig, context: LaunchContext, log_path: Path,
                 log_offset: int) -> None:
        self.pid: int | None = None
        self._config = config
        self._context = context
        self.log_path = log_path
        self._log_offset = log_offset
        self._stop_once = StopOnce()

    def __repr__(self) -> str:
        state = self._stop_once.state("woken")
        return f"<WolRunning {self._context.service} mac={self._config.mac} {state}>"

    async def wait(self) -> int | None:
        # Nothing of a remote machine can be watched; readiness is the supervisor's probe.
        await trio.sleep_forever()

    async def stop(self) -> None:
        """Run the stop command, if any; never raises (a failure is logged)."""
        await self._stop_once(self._stop_now)

    async def _stop_now(self) -> None:
        if self._config.stop is None:
            log.info("wol_no_stop", service=self._context.service, mac=self._config.mac)
            return
        await self._run_stop(self._config.stop)

    async def _run_stop(self, command: str) -> None:
        service = self._context.service
        timeout = self._config.stop_timeout
        env = {**os.environ, **self._context.environment("stop")}
        try:
            status, _ = await run_bounded(["/bin/sh", "-c", command], service=service,
                                          log_path=self.log_path, env=env, action="stopping",
                                          label=command, timeout=timeout)
        except StartFailed as exc:
            log.warning("wol_stop_failed", service=service, error=exc.detail)
            return
        except OSError as exc:  # the log file cannot be written
            log.warning("wol_stop_failed", service=service, error=exc.strerror or str(exc))
            return
        if status is None:
            log.warning("wol_stop_failed", service=service, reason="timeout", after_s=timeout)
        elif status != 0:
            log.warning("wol_stop_failed", service=service, exit_status=status)
        else:
            log.info("wol_stopped", service=service)

    def describe_exit(self, status: int | None) -> str:
        return describe_exit(status)  # `wait` never returns: only for the protocol's sake

    def log_tail(self, lines: int = 20) -> list[str]:
        return read_tail(self.log_path, self._log_offset, lines)


class WolLauncher(Launcher):
    """Wakes `config.mac` with a magic packet to `config.broadcast:config.port`; the stop
    command's output goes to `log_path`."""

    kind = "wol"

    def __init__(self, config: WolLauncherConfig, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self._packet = build_magic_packet(config.mac)

    def __repr__(self) -> str:
        return f"<WolLauncher {self.config.mac} via {self.config.broadcast}:{self.config.port}>"

    async def start(self, context: LaunchContext) -> WolRunning:
        """Send the magic packet. Raises `StartFailed` when it cannot be sent (e.g. network
        unreachable, unresolvable broadcast address)."""
        target = (self.config.broadcast, self.config.port)
        private_dir(self.log_path.parent)
        with open_private(self.log_path) as log_file:
            log_file.write(f"--- hestia: waking {context.service} at {_stamp()}: magic packet "
                           f"for {self.config.mac} to {target[0]}:{target[1]}\n".encode())
            offset = log_file.tell()
        try:
            with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_BROADCAST, 1)
                for i in range(_SENDS):
                    if i:
                        await trio.sleep(_SEND_INTERVAL)
                    await sock.sendto(self._packet, target)
        except OSError as exc:
            raise StartFailed(
                f"cannot send the Wake-on-LAN packet for {self.config.mac} to "
                f"{target[0]}:{target[1]}: {exc.strerror or exc}",
                service=context.service, reason="wol_send_failed") from None
        log.info("wol_sent", service=context.service, mac=self.config.mac,
                 broadcast=target[0], port=target[1], packets=_SENDS)
        return WolRunning(self.config, context, self.log_path, offset)
