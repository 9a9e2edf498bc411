"""The `wol` launcher without a network: magic packet bytes, MAC validation, a send failure."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
import trio

from hestia.config import WolLauncherConfig, parse_config
from hestia.errors import ConfigError, StartFailed
from hestia.launchers.base import LaunchContext
from hestia.launchers.wol import WolLauncher, WolRunning, build_magic_packet

MAC_BYTES = bytes([0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0x0F])
CONTEXT = LaunchContext(service="gpu", backend="gpu", upstream="http://gpu-box:11434",
                        port=11434, machine="gpu-box")


@pytest.mark.parametrize("mac", [
    "aa:bb:cc:dd:ee:0f", "aa-bb-cc-dd-ee-0f", "aabbccddee0f", "AA:BB:CC:DD:EE:0F",
])
def test_magic_packet_is_six_ff_then_the_mac_sixteen_times(mac):
    packet = build_magic_packet(mac)
    assert len(packet) == 102
    assert packet[:6] == b"\xff" * 6
    assert [packet[6 + 6 * i:12 + 6 * i] for i in range(16)] == [MAC_BYTES] * 16
    assert packet == bytes.fromhex("ff" * 6 + "aabbccddee0f" * 16)


@pytest.mark.parametrize("mac", [
    "zz:bb:cc:dd:ee:ff", "aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:ff:00", "aa bb cc dd ee ff",
    "aa:bb:cc:dd:ee:f", "", "aa::bb:cc:dd:ee:ff",
])
def test_malformed_macs_are_refused(mac):
    with pytest.raises(ValueError, match="invalid MAC address"):
        build_magic_packet(mac)


def wol_service(**wol: Any) -> dict[str, Any]:
    return {"services": {"gpu": {"upstream": "http://gpu-box:11434",
                                 "launcher": {"wol": wol}}}}


@pytest.mark.parametrize("mac", ["zz:bb:cc:dd:ee:ff", "aa:bb:cc:dd:ee", "aa bb cc dd ee ff"])
def test_a_bad_mac_is_a_config_error_with_its_path(mac):
    with pytest.raises(ConfigError) as caught:
        parse_config(wol_service(mac=mac), env={})
    assert [path for path, _ in caught.value.errors] == ["services.gpu.launcher.wol.mac"]


def test_wol_config_defaults():
    wol = parse_config(wol_service(mac="aa-bb-cc-dd-ee-0f"), env={}).services["gpu"].launcher.wol
    assert wol is not None
    assert (wol.broadcast, wol.port, wol.stop, wol.stop_timeout) == (
        "255.255.255.255", 9, None, 30.0)
    # Every MAC the config accepts builds a packet.
    assert build_magic_packet(wol.mac)[6:12] == MAC_BYTES


class UnreachableSocket:
    """A UDP socket on a host without a route to the broadcast address."""

    def __init__(self, sent: list[Any]) -> None:
        self.sent = sent

    def __enter__(self) -> UnreachableSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def setsockopt(self, *args: Any) -> None:
        pass

    async def sendto(self, data: bytes, address: Any) -> int:
        self.sent.append(address)
        raise OSError(errno.ENETUNREACH, "Network is unreachable")


class UnreachableFactory(trio.abc.SocketFactory):
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def socket(self, *args: Any, **kwargs: Any) -> Any:
        return UnreachableSocket(self.sent)


async def test_an_unsendable_packet_fails_the_start_with_the_reason(tmp_path: Path):
    factory = UnreachableFactory()
    trio.socket.set_custom_socket_factory(factory)
    launcher = WolLauncher(WolLauncherConfig(mac="aa:bb:cc:dd:ee:0f", broadcast="10.9.9.255"),
                           tmp_path / "logs" / "gpu.log")
    with pytest.raises(StartFailed) as caught:
        await launcher.start(CONTEXT)
    assert factory.sent == [("10.9.9.255", 9)]
    error = caught.value
    assert error.service == "gpu"
    assert error.extra["reason"] == "wol_send_failed"
    assert error.detail == ("cannot send the Wake-on-LAN packet for aa:bb:cc:dd:ee:0f to "
                            "10.9.9.255:9: Network is unreachable")


async def test_an_unresolvable_broadcast_address_fails_the_start(tmp_path: Path):
    # An IPv6 literal cannot be a destination of an AF_INET socket: refused before any I/O.
    launcher = WolLauncher(WolLauncherConfig(mac="aabbccddee0f", broadcast="::1"),
                           tmp_path / "gpu.log")
    with pytest.raises(StartFailed, match="cannot send the Wake-on-LAN packet"):
        await launcher.start(CONTEXT)


def test_the_running_handle_describes_itself(tmp_path: Path):
    running = WolRunning(WolLauncherConfig(mac="aabbccddee0f"), CONTEXT, tmp_path / "x.log", 0)
    assert running.pid is None
    assert repr(running) == "<WolRunning gpu mac=aabbccddee0f woken>"
    assert running.describe_exit(None) == "ended"
    assert running.describe_exit(-9) == "killed by SIGKILL"
    assert running.describe_exit(3) == "exited with status 3"
    assert running.log_tail() == []  # no log file yet
