"""Is the upstream's port already taken? Checked before a local backend is launched.

When another program already listens where a backend's upstream points, the readiness probe
passes at once and that program answers the service's clients. So the `process` launcher, and
the `container` launcher with `image`, check first and fail the start (`port_in_use`) instead.

The check binds the address itself, with `SO_REUSEADDR`, as a server would: that fails
(`EADDRINUSE`) when a socket listens on that address and port (or on the wildcard address), or
holds the port without `SO_REUSEADDR` (the backend could not bind it either), and it ignores
connections in TIME_WAIT that a stopped backend leaves behind. A bind that fails with
`EADDRNOTAVAIL` means the address is not this machine's: nothing to check (a process that
reaches a remote upstream, a tunnel say). Nothing is left bound afterwards.

Who holds the port is best-effort: the LISTEN socket's inode from `/proc/net/tcp{,6}`, then the
process whose `/proc/<pid>/fd` has it (only processes this user may inspect; bounded).

A backend Hestia itself started is never in the way: its previous process is stopped before a
new start (a start waits for the stop), and one adopted after a restart (lifecycle/recovery.py)
is not launched at all. A group member that outlived its leader by a moment is given
`SETTLE_S` to let go of the port.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

import trio

from ..errors import StartFailed

__all__ = ["SETTLE_S", "check_port", "port_holder"]

SETTLE_S = 0.5          # how long a taken port is watched before the start fails
_POLL_S = 0.05
_RESOLVE_S = 2.0        # a name that does not resolve this soon is not checked
_SCAN_BUDGET_S = 0.5    # the /proc scan for the holder gives up after this long
_LISTEN = "0A"          # TCP_LISTEN in /proc/net/tcp's `st` column


async def check_port(service: str, host: str, port: int) -> None:
    """Raises `StartFailed` (reason `port_in_use`, with `port` and, when `/proc` shows it, the
    holder's `pid`) when something listens on `host:port` on this machine. An address that
    is not this machine's, or a name that does not resolve, passes."""
    addresses = await _resolve(host, port)
    if not addresses:
        return
    deadline = trio.current_time() + SETTLE_S
    while True:
        taken = [a for a in addresses if _taken(a)]
        if not taken or trio.current_time() >= deadline:
            break
        await trio.sleep(_POLL_S)
    if not taken:
        return
    holder = await trio.to_thread.run_sync(port_holder, port)
    shown = f"[{host}]" if ":" in host else host
    who = (f"pid {holder[0]} ({holder[1]})" if holder is not None
           else "another program (its pid is not visible here)")
    raise StartFailed(
        f"port {port} is already in use on {shown} by {who}: it would answer in place of "
        f"{service!r}, so {service!r} was not started", service=service,
        reason="port_in_use", port=port, pid=holder[0] if holder is not None else None)


async def _resolve(host: str, port: int) -> list[tuple[int, tuple[object, ...]]]:
    with trio.move_on_after(_RESOLVE_S):
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return []
        return list({(family, sockaddr) for family, _, _, _, sockaddr in infos
                     if family in (socket.AF_INET, socket.AF_INET6)})
    return []


def _taken(address: tuple[int, tuple[object, ...]]) -> bool:
    family, sockaddr = address
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
    except OSError as exc:
        # EADDRNOTAVAIL: not an address of this machine. Anything else (no IPv6 here, …)
        # says nothing about the port either.
        return exc.errno == errno.EADDRINUSE
    return False


def port_holder(port: int) -> tuple[int, str] | None:
    """`(pid, command name)` of a process with a socket listening on `port`, or None when
    `/proc` does not show one (another user's process, no `/proc`, the scan ran out of time).
    Synchronous and bounded by `_SCAN_BUDGET_S`: run it in a thread."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    links = {f"socket:[{inode}]" for inode in inodes}
    give_up = time.monotonic() + _SCAN_BUDGET_S
    try:
        pids = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
    except OSError:
        return None
    for pid in pids:  # lowest first: the parent of forked workers that share the socket
        if time.monotonic() > give_up:
            return None
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in links:
                    return pid, _command_name(pid)
            except OSError:
                continue
    return None


def _listening_inodes(port: int) -> set[str]:
    wanted = f"{port:04X}"
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …
            if len(fields) > 9 and fields[3] == _LISTEN and \
                    fields[1].rpartition(":")[2] == wanted:
                inodes.add(fields[9])
    inodes.discard("0")
    return inodes


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() or "?"
    except OSError:
        return "?"
