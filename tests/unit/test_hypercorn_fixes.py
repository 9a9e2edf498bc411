"""The three changes to hypercorn are in force, and a hypercorn whose internals changed stops
the gateway's start with a clear error instead of running without them."""

from __future__ import annotations

import sys
import tomllib
import types
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.protocol import ws_stream
from hypercorn.protocol.events import Data, Request, StreamClosed
from hypercorn.trio import tcp_server
from hypercorn.typing import ConnectionState as HypercornConnectionState
from packaging.specifiers import SpecifierSet
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection

from hestia import parse_config, run
from hestia.http import hypercorn_fixes
from hestia.http.hypercorn_fixes import CLIENT_READ_SIZE, TESTED, HypercornChanged

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


@pytest.fixture(autouse=True)
def applied() -> None:
    hypercorn_fixes.apply()


def test_pyproject_pins_hypercorn_to_the_versions_the_changes_were_tested_with():
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    assert [d for d in dependencies if d.startswith("hypercorn")] == [f"hypercorn{TESTED}"]
    assert metadata.version("hypercorn") in SpecifierSet(TESTED)


# --- each change in force -------------------------------------------------------------------


def quiet_config() -> HypercornConfig:
    # Hypercorn's default logs would install handlers on the process's "hypercorn.*" loggers.
    config = HypercornConfig()
    config.errorlog = config.accesslog = None
    return config


class RecordingStream:
    """A client socket that has closed: it records how much hypercorn asks to read."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    async def receive_some(self, max_bytes: int) -> bytes:
        self.asked.append(max_bytes)
        return b""


class NullProtocol:
    async def handle(self, event: Any) -> None:
        pass


async def test_hypercorn_reads_a_client_socket_256_kib_at_a_time():
    stream = RecordingStream()
    server = tcp_server.TCPServer(None, quiet_config(), None, None, stream)  # type: ignore[arg-type]
    server.protocol = NullProtocol()  # type: ignore[assignment]
    await server._read_data()
    assert stream.asked == [CLIENT_READ_SIZE] == [256 * 1024]


class App:
    """What hypercorn hands the ASGI app: the messages put on its queue."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def spawn_app(self, app: Any, config: Any, scope: Any, send: Any) -> Any:
        return self.put

    async def put(self, message: dict[str, Any]) -> None:
        self.received.append(message)


async def test_a_client_close_code_and_reason_reach_the_app_in_websocket_disconnect():
    app = App()
    sent: list[Any] = []

    async def send(event: Any) -> None:
        sent.append(event)

    stream = ws_stream.WSStream(None, quiet_config(), None, app, False, None, None,  # type: ignore[arg-type]
                                send, 1)
    await stream.handle(Request(
        stream_id=1, http_version="1.1", method="GET", raw_path=b"/ws",
        state=HypercornConnectionState({}),
        headers=[(b"host", b"hestia"), (b"connection", b"upgrade"), (b"upgrade", b"websocket"),
                 (b"sec-websocket-version", b"13"),
                 (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")]))
    await stream.app_send({"type": "websocket.accept"})
    client = Connection(ConnectionType.CLIENT)
    await stream.handle(Data(stream_id=1, data=client.send(
        CloseConnection(code=4002, reason="done here"))))
    assert isinstance(sent[-1], StreamClosed)  # hypercorn's protocol answers with this event
    await stream.handle(StreamClosed(stream_id=1))
    assert app.received == [{"type": "websocket.connect"},
                            {"type": "websocket.disconnect", "code": 4002,
                             "reason": "done here"}]


# --- a hypercorn of another shape -----------------------------------------------------------


def shape(**changes: Any) -> tuple[types.ModuleType, type]:
    """Copies of hypercorn's `tcp_server` module and `WSStream` class, with `changes` (a name
    set to None is removed)."""
    module = types.ModuleType("tcp_server")
    module.MAX_RECV = 2**16  # type: ignore[attr-defined]
    module.TCPServer = tcp_server.TCPServer  # type: ignore[attr-defined]
    members = {name: getattr(ws_stream.WSStream, name)
               for name in ("handle", "_send_wsproto_event", "_handle_events")}
    for name, value in changes.items():
        if name in members:
            members[name] = value
        elif value is None:
            delattr(module, name)
        else:
            setattr(module, name, value)
    stream = type("WSStream", (), {k: v for k, v in members.items() if v is not None})
    return module, stream


async def handle_with_a_flag(self: Any, event: Any, flag: bool = False) -> None:
    pass


async def echoes_directly(self: Any) -> None:
    for event in self.connection.events():
        if isinstance(event, CloseConnection):
            await self.send(Data(stream_id=1, data=self.connection.send(event.response())))


class ReadsAnotherSize(tcp_server.TCPServer):
    async def _read_data(self) -> None:
        await self.stream.receive_some(self.config.read_size)  # type: ignore[attr-defined]


def test_the_hypercorn_it_was_written_for_has_the_shape():
    assert hypercorn_fixes.problems(*shape()) == []
    assert hypercorn_fixes.problems(tcp_server, ws_stream.WSStream) == []  # applied already


@pytest.mark.parametrize(("changes", "problem"), [
    ({"MAX_RECV": None}, "hypercorn.trio.tcp_server.MAX_RECV is not 65536"),
    ({"MAX_RECV": 4096}, "hypercorn.trio.tcp_server.MAX_RECV is not 65536"),
    ({"TCPServer": ReadsAnotherSize},
     "TCPServer._read_data no longer reads MAX_RECV bytes at a time"),
    ({"_send_wsproto_event": None}, "WSStream._send_wsproto_event(self, event) is gone"),
    ({"handle": handle_with_a_flag}, "WSStream.handle(self, event) is gone"),
    ({"_handle_events": echoes_directly}, "WSStream._handle_events no longer echoes a "
                                          "client's close through _send_wsproto_event"),
])
def test_each_change_of_shape_is_named(changes, problem):
    found = hypercorn_fixes.problems(*shape(**changes))
    assert problem in found


async def test_a_changed_hypercorn_stops_the_gateway_before_it_starts(monkeypatch, tmp_path):
    monkeypatch.setattr(tcp_server, "MAX_RECV", 2**16)
    monkeypatch.delattr(ws_stream.WSStream, "_send_wsproto_event")
    config = parse_config({"listen": "127.0.0.1:0", "data_dir": str(tmp_path / "data"),
                           "services": {}}, env={})
    with trio.fail_after(5), pytest.raises(HypercornChanged) as caught:
        await run(config, handle_signals=False)
    version = metadata.version("hypercorn")
    assert str(caught.value) == (
        f"hypercorn {version} is not a version Hestia can run on (>=0.18,<0.19): "
        "WSStream._send_wsproto_event(self, event) is gone. Install one that is: "
        "pip install 'hypercorn>=0.18,<0.19'")
    assert tcp_server.MAX_RECV == 2**16  # nothing was changed
    assert not (tmp_path / "data").exists()  # nothing was started


async def test_hestia_serve_on_a_changed_hypercorn_says_so_in_one_line(tmp_path):
    config = tmp_path / "hestia.yml"
    config.write_text(f"listen: 127.0.0.1:0\ndata_dir: {tmp_path / 'data'}\nservices: {{}}\n")
    # `hestia serve` in a process whose hypercorn lost a method the fixes rely on.
    script = ("import sys; from hypercorn.protocol import ws_stream; "
              "del ws_stream.WSStream._send_wsproto_event; "
              "from hestia.cli import main; main(sys.argv[1:])")
    with trio.fail_after(30):
        done = await trio.run_process([sys.executable, "-c", script, "serve", "-c", str(config)],
                                      capture_stdout=True, capture_stderr=True, check=False)
    version = metadata.version("hypercorn")
    assert (done.returncode, done.stdout, done.stderr.decode()) == (1, b"", (
        f"hestia: hypercorn {version} is not a version Hestia can run on (>=0.18,<0.19): "
        "WSStream._send_wsproto_event(self, event) is gone. Install one that is: "
        "pip install 'hypercorn>=0.18,<0.19'\n"))
    assert not (tmp_path / "data").exists()
