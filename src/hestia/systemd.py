"""systemd, spoken directly (no dependency): the notify protocol and socket activation.

**Notify** (sd_notify(3)): when systemd starts Hestia with `Type=notify` or `Type=notify-reload`
it names a datagram socket in `NOTIFY_SOCKET` (a path, or an abstract name written with a
leading `@`), and Hestia sends it newline-separated `KEY=VALUE` lines:

- `READY=1` once the server accepts connections (with the first `STATUS=`);
- `STATUS=` a line of counts (services ready, starting, cold; requests held), sent when it
  changes, at most once every `STATUS_MIN_GAP_S`;
- `RELOADING=1` with `MONOTONIC_USEC=` before a reload and `READY=1` after it, which is what
  `Type=notify-reload` waits for (`async with notifier.reloading(): …`);
- `STOPPING=1` when a graceful shutdown begins;
- `WATCHDOG=1` every half `WATCHDOG_USEC` when systemd asks for it (`WatchdogSec=`), for as
  long as the trio loop runs, backends' stops included.

A socket that is missing or refuses a message never stops the gateway: the first failure is
logged (`systemd_notify_failed`), later ones are dropped quietly.

**Socket activation** (sd_listen_fds(3)): when `LISTEN_FDS` is set and `LISTEN_PID` is this
process, the listening sockets systemd opened are fds 3, 4, …; the gateway serves on them
instead of binding `listen`.

Both read their variables once and remove them from the environment, so that the backends
Hestia starts (which inherit its environment) never take systemd's messages as theirs.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog
import trio

from .errors import ConfigError
from .lifecycle.leases import State
from .lifecycle.supervisor import Supervisor

__all__ = ["InheritedSocket", "SystemdNotifier", "listen_fds", "status_line"]

log = structlog.get_logger("hestia.systemd")

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START
# STATUS= is looked at by people (`systemctl status`): a change shows within a second, and a
# gateway under load does not send thousands of datagrams a second.
STATUS_MIN_GAP_S = 0.5
STATUS_POLL_S = 1.0  # requests held change without an event: looked at this often


def status_line(supervisors: Iterable[Supervisor]) -> str:
    """`3 services: 1 ready, 1 starting, 1 cold; 2 requests held` (stopping and failed are
    counted only when there are any)."""
    counts = dict.fromkeys(State, 0)
    held = total = 0
    for sup in supervisors:
        counts[sup.state] += 1
        held += sup.queue_pending
        total += 1
    parts = [f"{counts[State.READY]} ready", f"{counts[State.STARTING]} starting",
             f"{counts[State.COLD]} cold"]
    parts += [f"{counts[s]} {s.name.lower()}" for s in (State.STOPPING, State.FAILED)
              if counts[s]]
    return (f"{total} service{'' if total == 1 else 's'}: {', '.join(parts)}; "
            f"{held} request{'' if held == 1 else 's'} held")


def _address(name: str) -> str:
    # An abstract socket is written `@name`; its real name starts with a NUL byte.
    return "\0" + name[1:] if name.startswith("@") else name


class SystemdNotifier:
    """Sends notify messages to `address` (None: systemd did not ask, and every method does
    nothing). `watchdog_s`: how often `run` sends `WATCHDOG=1` (None: never). `send` replaces the
    socket (tests)."""

    def __init__(self, address: str | None = None, watchdog_s: float | None = None, *,
                 send: Callable[[bytes], None] | None = None) -> None:
        self.address = address
        self.watchdog_s = watchdog_s
        self._send = send
        self._socket: socket.socket | None = None
        self._failed = False
        self._phase = ""  # what STATUS= says before the counts (`stopping`, `reloading`)
        self._sent_status: str | None = None
        self._status: Callable[[], str] | None = None
        self._changed: trio.Event | None = None

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> SystemdNotifier:
        """From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (a watchdog meant for
        another process is not ours to feed), which are then removed from `environ`."""
        env = os.environ if environ is None else environ
        name = env.pop("NOTIFY_SOCKET", "")
        usec, pid = env.pop("WATCHDOG_USEC", ""), env.pop("WATCHDOG_PID", "")
        watchdog_s = None
        if usec and (not pid or pid == str(os.getpid())):
            if usec.isdigit() and int(usec) > 0:
                watchdog_s = int(usec) / 2 / 1e6
            else:
                log.warning("systemd_watchdog_ignored", WATCHDOG_USEC=usec,
                            detail="not a whole number of microseconds > 0")
        return cls(_address(name) if name else None, watchdog_s)

    @property
    def enabled(self) -> bool:
        return self.address is not None or self._send is not None

    def __repr__(self) -> str:
        where = "off" if not self.enabled else repr(self.address or "<sink>")
        return f"<SystemdNotifier {where} watchdog={self.watchdog_s}>"

    def notify(self, **fields: str) -> None:
        """One datagram of `KEY=VALUE` lines, in the order given; a value is put on one line (a
        newline in it would start another assignment). Never raises."""
        if not self.enabled:
            return
        message = "\n".join(f"{key}={' '.join(value.split())}"
                            for key, value in fields.items()).encode()
        try:
            if self._send is not None:
                self._send(message)
                return
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)  # a full queue drops a message, never waits
            self._socket.sendto(message, self.address)  # type: ignore[arg-type]
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("systemd_notify_failed", socket=self.address.replace("\0", "@")
                            if self.address else None, detail=exc.strerror or str(exc),
                            consequence="systemd gets no readiness, status or watchdog messages; "
                                        "later failures are not logged")

    def ready(self) -> None:
        self.notify(READY="1", STATUS=self._status_text())

    def stopping(self) -> None:
        self._phase = "stopping"
        self.notify(STOPPING="1", STATUS=self._status_text())

    def status_changed(self) -> None:
        """Send STATUS= soon (a listener: state events call it)."""
        if self._changed is not None:
            self._changed.set()

    @asynccontextmanager
    async def reloading(self) -> AsyncIterator[None]:
        """Around a reload: `RELOADING=1` with the monotonic time before, `READY=1` after (with
        `STATUS=` saying the reload failed, when an exception leaves the block)."""
        self._phase = "reloading"
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(RELOADING="1", MONOTONIC_USEC=str(usec), STATUS=self._status_text())
        try:
            yield
        except BaseException as exc:
            self._phase = ""
            self.notify(READY="1", STATUS=f"reload failed: {exc}; {self._status_text()}")
            raise
        self._phase = ""
        self.notify(READY="1", STATUS=self._status_text())

    def _status_text(self) -> str:
        counts = self._status() if self._status is not None else ""
        text = f"{self._phase}; {counts}" if self._phase and counts else self._phase or counts
        self._sent_status = text
        return text

    async def run(self, status: Callable[[], str], shutdown: trio.Event, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled: `STATUS=` from `status()` when it changes, `WATCHDOG=1` on time,
        `STOPPING=1` once `shutdown` is set. Run it in the root nursery, so that the watchdog
        is fed while the backends stop."""
        self._status = status
        self._changed = trio.Event()
        if not self.enabled:
            task_status.started()
            return
        try:
            async with trio.open_nursery() as nursery:
                if self.watchdog_s is not None:
                    nursery.start_soon(self._feed_watchdog, self.watchdog_s)
                nursery.start_soon(self._report_stopping, shutdown)
                task_status.started()
                await self._report_status()
        finally:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    async def _feed_watchdog(self, interval: float) -> None:
        while True:
            self.notify(WATCHDOG="1")
            await trio.sleep(interval)

    async def _report_stopping(self, shutdown: trio.Event) -> None:
        await shutdown.wait()
        self.stopping()

    async def _report_status(self) -> None:
        assert self._changed is not None
        while True:
            with trio.move_on_after(STATUS_POLL_S):
                await self._changed.wait()
            self._changed = trio.Event()
            previous = self._sent_status
            text = self._status_text()
            if text != previous:
                self.notify(STATUS=text)
                await trio.sleep(STATUS_MIN_GAP_S)


@dataclass(frozen=True)
class InheritedSocket:
    """A listening socket systemd passed: its fd and its address as hypercorn shows it."""

    fd: int
    address: str
    loopback: bool

    @property
    def bind(self) -> str:
        return f"fd://{self.fd}"


def listen_fds(environ: MutableMapping[str, str] | None = None) -> list[InheritedSocket]:
    """The sockets of socket activation: fds 3 … 3+`LISTEN_FDS`-1 when `LISTEN_PID` is this
    process, else none. `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES` are removed from
    `environ`, and the fds are not passed on to children. Raises `ConfigError` when a passed
    fd is not a listening stream socket (a `.socket` unit with `ListenDatagram=`, say)."""
    env = os.environ if environ is None else environ
    count, pid = env.pop("LISTEN_FDS", ""), env.pop("LISTEN_PID", "")
    env.pop("LISTEN_FDNAMES", None)
    if not count or pid != str(os.getpid()):
        return []
    if not count.isdigit():
        raise ConfigError([("LISTEN_FDS", f"{count!r} is not a number of sockets")],
                          "socket activation")
    found, errors = [], []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise OSError(f"fd {fd} is not a socket")
            sock = socket.socket(fileno=fd)
            try:
                kind, family = sock.type, sock.family
                name = sock.getsockname()
                listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            finally:
                sock.detach()  # the fd stays open, for hypercorn
        except OSError as exc:
            errors.append((f"fd {fd}", exc.strerror or str(exc)))
            continue
        if kind != socket.SOCK_STREAM or not listening:
            errors.append((f"fd {fd}", "not a listening stream socket (use ListenStream=)"))
            continue
        os.set_inheritable(fd, False)
        found.append(_inherited(fd, family, name))
    if errors:
        raise ConfigError(errors, "socket activation (LISTEN_FDS)")
    return found


def _inherited(fd: int, family: int, name: object) -> InheritedSocket:
    if family == socket.AF_UNIX:
        return InheritedSocket(fd, f"unix:{name}", loopback=True)
    host, port = name[0], name[1]  # type: ignore[index]
    shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    try:
        loopback = ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        loopback = False
    return InheritedSocket(fd, shown, loopback)
