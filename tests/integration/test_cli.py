"""`hestia status|start|stop|reload` as a script uses them: the real CLI in a child process
against a real gateway (in this process, so it goes on serving while the CLI runs), its exit
status and output in each case."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import trio
import yaml

from tests.integration.conftest import client, free_port, upstream_service

OUR_VARIABLES = ("HESTIA_URL", "HESTIA_API_KEY", "HESTIA_KEY_FILE", "HESTIA_CONFIG")


async def hestia(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`hestia ARGS` in a child process with `env` added (the caller bounds the wait)."""
    base = {k: v for k, v in os.environ.items() if k not in OUR_VARIABLES}
    done = await trio.run_process([sys.executable, "-m", "hestia", *args],
                                  capture_stdout=True, capture_stderr=True, check=False,
                                  env={**base, **env})
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(),
                                       done.stderr.decode())


def columns(line: str, names: list[str]) -> list[int]:
    return [line.index(name) for name in names]


async def test_status_is_an_aligned_table_for_people_and_the_apis_json_for_scripts(
        start_gateway):
    gateway = await start_gateway(services={
        "up": upstream_service(idle_timeout="10m"),
        "a-service-with-a-long-name": upstream_service()})
    with trio.fail_after(60):
        async with client(gateway) as http:
            assert (await http.get("/services/up/echo")).status_code == 200
            api = (await http.get("/v1/services")).json()
        shown = await hestia("status", "--url", gateway.url)
        as_json = await hestia("status", "--url", gateway.url, "--json")
    assert (shown.returncode, shown.stderr) == (0, "")
    header, *rows = shown.stdout.splitlines()
    assert header.split("  ")[0].strip() == "SERVICE"
    names = ["STATE", "MACHINE", "LAST USED", "NOTE"]
    at = columns(header, names)
    up, cold = rows
    assert up.split()[:5] == ["up", "READY", "local", "0", "0"]
    assert [up[i:].split("  ")[0] for i in at[:2]] == ["READY", "local"]
    assert re.match(r"\d+s ago  ", up[at[2]:])
    assert up[at[3]:].startswith("idle stop in 9m")
    assert cold.split()[:5] == ["a-service-with-a-long-name", "COLD", "-", "0", "0"]
    assert cold[at[0]:].startswith("COLD") and cold[at[2]:].startswith("never")
    # Numbers are aligned right, under the end of their heading.
    held_end = header.index("HELD") + len("HELD")
    assert up[held_end - 1] == "0" and up[held_end] == " "
    assert as_json.returncode == 0
    listed = json.loads(as_json.stdout)
    assert [(s["serviceId"], s["state"]) for s in listed["services"]] == \
        [(s["serviceId"], s["state"]) for s in api["services"]]
    assert set(listed["services"][0]) == set(api["services"][0])


async def test_start_of_a_ready_service_and_stop_of_a_cold_one_succeed_and_say_so(
        start_gateway):
    gateway = await start_gateway(services={"up": upstream_service()})
    url = ("--url", gateway.url)
    with trio.fail_after(60):
        started = await hestia("start", "up", "--wait", *url)
        again = await hestia("start", "up", *url)
        again_waiting = await hestia("start", "up", "--wait", *url)
        stopped = await hestia("stop", "up", "--wait", *url)
        assert gateway.supervisors["up"].state.name == "COLD"
        stopped_again = await hestia("stop", "up", *url)
        asked = await hestia("start", "up", *url)
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("up: READY (started in ")
    assert started.stdout.endswith("s on local)\n")
    assert (again.returncode, again.stdout, again.stderr) == (0, "up: already READY\n", "")
    assert (again_waiting.returncode, again_waiting.stdout) == (0, "up: already READY\n")
    assert (stopped.returncode, stopped.stdout, stopped.stderr) == (0, "up: COLD\n", "")
    assert (stopped_again.returncode, stopped_again.stdout) == (0, "up: already COLD\n")
    assert (asked.returncode, asked.stdout) == (0, "up: STARTING\n")  # without --wait: asked


def gated(gate: Path) -> dict:
    """A service whose backend starts listening only once the file `gate` exists."""
    service = upstream_service()
    command = service["launcher"]["process"]["command"]
    service["launcher"]["process"]["command"] = [
        "sh", "-c", f'while [ ! -e {gate} ]; do sleep 0.02; done; exec "$@"', "sh", *command]
    return service


async def relay(nursery: trio.Nursery, target: str, watched: bytes) -> tuple[str, trio.Event]:
    """A TCP relay to `target` (host:port) on 127.0.0.1, and an event set once the answer to a
    request starting with `watched` has begun to flow back."""
    answered = trio.Event()
    host, _, port = target.rpartition(":")

    async def pump(source: trio.abc.Stream, sink: trio.abc.Stream, on_first=None) -> None:
        try:
            async for chunk in source:
                if on_first is not None:
                    on_first()
                await sink.send_all(chunk)
            await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # one side went away (the CLI exited): the other is closed with it

    async def connection(client_stream: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream(host, int(port))
        first = await client_stream.receive_some(65536)
        await upstream.send_all(first)
        watching = first.startswith(watched)
        async with upstream, client_stream, trio.open_nursery() as pumps:
            pumps.start_soon(pump, client_stream, upstream)
            pumps.start_soon(pump, upstream, client_stream,
                             answered.set if watching else None)

    listeners = await nursery.start(partial(trio.serve_tcp, connection, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}", answered


async def test_wait_follows_a_start_that_is_already_under_way(start_gateway, nursery, tmp_path):
    gate = tmp_path / "gate"
    gateway = await start_gateway(services={"slow": gated(gate)})
    # The CLI talks through a relay, so that the gate opens only once its own start request
    # was answered (409: already STARTING), whatever the time the CLI takes to get there.
    url, answered = await relay(nursery, gateway.url.removeprefix("http://"),
                                b"POST /v1/services/slow/start ")
    result: list[subprocess.CompletedProcess[str]] = []

    async def wait_for_it() -> None:
        result.append(await hestia("start", "slow", "--wait", "--url", url))

    with trio.fail_after(60):
        first = await hestia("start", "slow", "--url", gateway.url)
        assert (first.returncode, first.stdout) == (0, "slow: STARTING\n")
        async with trio.open_nursery() as waiting:
            waiting.start_soon(wait_for_it)
            await answered.wait()
            assert gateway.supervisors["slow"].state.name == "STARTING"
            gate.touch()
    [waited] = result
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.startswith("slow: READY (started in ")


async def test_real_failures_exit_1_with_one_line_saying_why(start_gateway):
    gateway = await start_gateway(services={
        "bad": upstream_service("--fail-start", "3", startup={"attempts": 1})})
    with trio.fail_after(60):
        unknown = await hestia("start", "nope", "--url", gateway.url)
        failed = await hestia("start", "bad", "--wait", "--url", gateway.url)
        unreachable = await hestia("status", "--url", f"http://127.0.0.1:{free_port()}")
        bad_url = await hestia("status", "--url", "127.0.0.1:8080")
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr == "hestia: start nope: no service named 'nope' (404 unknown_service)\n"
    assert (failed.returncode, failed.stdout) == (1, "")
    assert failed.stderr.startswith("hestia: start bad: 'bad' failed to start (1 attempt)")
    assert len(failed.stderr.splitlines()) == 1
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("hestia: no gateway answers at http://127.0.0.1:")
    assert len(unreachable.stderr.splitlines()) == 1
    assert (bad_url.returncode, bad_url.stderr) == (
        1, "hestia: --url 127.0.0.1:8080: must start with http:// or https://\n")


async def test_url_and_key_come_from_options_the_environment_or_the_configuration(
        start_gateway, tmp_path):
    gateway = await start_gateway(auth={"enabled": True}, services={"up": upstream_service()})
    cli_key = (tmp_path / "data" / "cli.key").read_text().strip()
    config = tmp_path / "hestia.yml"
    config.write_text(yaml.safe_dump({"listen": "127.0.0.1:0",
                                      "data_dir": str(tmp_path / "data")}))
    key_file = tmp_path / "key"
    key_file.write_text(cli_key + "\n")
    url = gateway.url
    with trio.fail_after(60):
        no_key = await hestia("status", "--url", url)
        # The key of this machine's configuration goes only where -c says it may.
        not_sent = await hestia("status", "--url", url, HESTIA_CONFIG=str(config))
        from_env = await hestia("status", "--url", url, HESTIA_API_KEY=cli_key)
        from_file = await hestia("status", "--url", url, "--key-file", str(key_file))
        file_from_env = await hestia("status", HESTIA_URL=url, HESTIA_KEY_FILE=str(key_file))
        from_config = await hestia("status", "--url", url, "-c", str(config))
        missing_file = await hestia("status", "--url", url, "--key-file", str(tmp_path / "no"))
    for refused in (no_key, not_sent):
        assert (refused.returncode, refused.stdout) == (1, "")
        assert refused.stderr == ("hestia: status: no API key (401 unauthorized); give a key "
                                  "with $HESTIA_API_KEY or --key-file, or -c with the gateway's "
                                  "configuration\n")
    for served in (from_env, from_file, file_from_env, from_config):
        assert (served.returncode, served.stderr) == (0, "")
        assert served.stdout.splitlines()[1].split()[:2] == ["up", "COLD"]
    assert (missing_file.returncode, missing_file.stderr) == (
        1, f"hestia: cannot read the key file {tmp_path / 'no'}: No such file or directory\n")


async def test_keys_list_is_aligned(tmp_path):
    config = tmp_path / "hestia.yml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))
    with trio.fail_after(60):
        for name in ("ci", "a-much-longer-key-name"):
            assert (await hestia("keys", "create", name, "--scope", "read", "-c",
                                 str(config))).returncode == 0
        listed = await hestia("keys", "list", "-c", str(config))
    header, *rows = listed.stdout.splitlines()
    at = columns(header, ["SCOPE", "PREFIX", "CREATED", "LAST USED", "STATUS"])
    assert [[row[i:].split("  ")[0] for i in at[:2]] for row in rows] == \
        [["read", row.split()[2]] for row in rows]
    assert [row[at[4]:] for row in rows] == ["active", "active"]
    assert [row[at[3]:].split("  ")[0] for row in rows] == ["-", "-"]


# --- reload: the real CLI against a real gateway that reads its file again -------------------


def edit(path: Path, change) -> None:
    raw = yaml.safe_load(path.read_text())
    change(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


async def test_reload_summarises_the_changes_and_json_is_the_apis_answer(start_gateway):
    gateway = await start_gateway(services={"up": upstream_service(idle_timeout="10m"),
                                            "same": upstream_service()})
    path = gateway.config_file
    assert path is not None

    def change(raw: dict) -> None:
        raw["services"]["whisper"] = raw["services"]["same"]
        raw["services"]["up"]["idle_timeout"] = "20m"

    edit(path, change)
    with trio.fail_after(30):
        done = await hestia("reload", "--url", gateway.url)
        again = await hestia("reload", "--url", gateway.url, "--json")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (f"reloaded {path}:\n"
                           "  added: whisper\n"
                           "  updated: up (idle_timeout)\n"
                           "  unchanged: 1\n")
    assert set(gateway.supervisors) == {"up", "same", "whisper"}
    assert gateway.supervisors["up"].config.idle_timeout == 1200
    # Nothing changed since: the API's own answer, as it is.
    assert again.returncode == 0
    answer = json.loads(again.stdout)
    assert (answer["ok"], answer["source"], answer["changes"]["unchanged"]) == (
        True, str(path), 3)
    assert answer["changes"]["added"] == answer["changes"]["removed"] == []


async def test_reload_without_changes_says_so(start_gateway):
    gateway = await start_gateway(services={"up": upstream_service()})
    with trio.fail_after(30):
        done = await hestia("reload", "--url", gateway.url)
    assert (done.returncode, done.stdout) == (0, f"reloaded {gateway.config_file}: no changes\n")


async def test_an_invalid_file_fails_the_reload_with_every_error_listed(start_gateway):
    gateway = await start_gateway(services={"up": upstream_service(idle_timeout="10m")})
    path = gateway.config_file
    assert path is not None

    def break_it(raw: dict) -> None:
        raw["services"]["up"]["idle_timeout"] = "soon"
        raw["services"]["up"]["queue"] = {"max": 0}

    edit(path, break_it)
    with trio.fail_after(30):
        # -c as well: the CLI reads only where the gateway is from a file with errors; the
        # gateway reports them.
        done = await hestia("reload", "--url", gateway.url, "-c", str(path))
    assert (done.returncode, done.stdout) == (1, "")
    head, *listed = done.stderr.splitlines()
    assert head == (f"hestia: reload: {path}: 2 error(s); the running configuration stays "
                    "(422 config_invalid)")
    assert [line.split(":")[0] for line in listed] == [
        "  services.up.idle_timeout", "  services.up.queue.max"]
    assert gateway.supervisors["up"].config.idle_timeout == 600


async def test_a_reload_that_needs_a_restart_fails(start_gateway):
    gateway = await start_gateway(services={"up": upstream_service()})
    path = gateway.config_file
    assert path is not None
    edit(path, lambda raw: raw.update(data_dir=str(path.parent / "elsewhere")))
    with trio.fail_after(30):
        done = await hestia("reload", "--url", gateway.url)
    assert (done.returncode, done.stdout, done.stderr) == (
        1, "", "hestia: reload: data_dir changed, which only a restart applies: nothing was "
               "reloaded (restart the gateway, or change it back) (409 restart_required)\n")


async def test_wait_gives_up_after_its_timeout_and_the_start_goes_on(start_gateway, tmp_path):
    gateway = await start_gateway(services={"slow": gated(tmp_path / "never")})
    with trio.fail_after(60):
        waited = await hestia("start", "slow", "--wait", "--timeout", "1", "--url", gateway.url)
    assert (waited.returncode, waited.stdout) == (1, "")
    assert waited.stderr == "hestia: slow: not READY after 1s; the gateway goes on with it\n"
    assert gateway.supervisors["slow"].state.name == "STARTING"


async def test_an_explicit_configuration_wins_over_hestia_url(start_gateway, tmp_path):
    # $HESTIA_URL names another gateway; `-c` names this machine's: its key goes only there.
    gateway = await start_gateway(services={"up": upstream_service()})
    port = free_port()
    path = tmp_path / "local.yml"
    path.write_text(yaml.safe_dump({"listen": f"127.0.0.1:{port}",
                                    "data_dir": str(tmp_path / "local")}))
    with trio.fail_after(30):
        done = await hestia("status", "-c", str(path), HESTIA_URL=gateway.url)
    assert done.returncode == 1
    assert done.stderr.startswith(f"hestia: no gateway answers at http://127.0.0.1:{port}: ")
