"""What survives a restart (real files in a temp dir), and API keys end to end.

The CLI runs as a child process awaited with `trio.run_process`, so a gateway under test in
this process goes on serving while it runs."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import trio
import yaml

from hestia import parse_config, run
from hestia.http import auth
from tests.integration.conftest import client, serve_file, upstream_service


async def _gateway(nursery: trio.Nursery, tmp_path: Path, **top: object):
    raw = {"listen": "127.0.0.1:0", "data_dir": str(tmp_path / "data"), "grace_period": "2s",
           **top}
    return await nursery.start(partial(run, parse_config(raw, env={}), handle_signals=False))


async def test_a_restart_keeps_last_use_history_and_disabled_machines(tmp_path):
    service = upstream_service(idle_timeout="1h")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            first = await _gateway(nursery, tmp_path, machines={"gpu": {}},
                                   services={"up": service})
            async with client(first) as http:
                assert (await http.get("/services/up/health")).status_code == 200
                assert (await http.post("/v1/machines/gpu/disable")).status_code == 200
                before = (await http.get("/v1/services/up/status")).json()
            first.shutdown()
        async with trio.open_nursery() as nursery:
            second = await _gateway(nursery, tmp_path, machines={"gpu": {}},
                                    services={"up": service})
            async with client(second) as http:
                status = (await http.get("/v1/services/up/status")).json()
                machines = (await http.get("/v1/machines")).json()["machines"]
                activity = (await http.get("/v1/activity",
                                           params={"serviceId": "up"})).json()["activity"]
            second.shutdown()
    assert status["state"] == "COLD"  # the backend was stopped with the first gateway
    assert status["lastUsed"] == before["lastUsed"] is not None
    assert status["starts"] == 1
    assert status["expectedStartMs"] == round(before["lastStartDurationMs"])
    assert next(m for m in machines if m["machineId"] == "gpu")["enabled"] is False
    kinds = [row["kind"] for row in reversed(activity)]
    assert kinds[:4] == ["state", "start_attempt", "state", "ready"]
    assert "stopped" in kinds
    assert activity[0]["at"] > activity[-1]["at"]


async def hestia(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`hestia ARGS -c CONFIG` in a child process (the caller bounds the wait)."""
    done = await trio.run_process([sys.executable, "-m", "hestia", *args, "-c", str(config)],
                                  capture_stdout=True, capture_stderr=True, check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(),
                                       done.stderr.decode())


async def test_keys_are_created_used_scoped_revoked_and_never_stored_or_logged(
        start_gateway, tmp_path, capfd, monkeypatch):
    # The cached lookup's lifetime is tested in virtual time (tests/unit/test_auth_cache.py);
    # here a short one lets the revocation be seen within the test's bound.
    monkeypatch.setattr(auth, "CACHE_S", 0.2)
    data = tmp_path / "data"
    config = tmp_path / "hestia.yml"
    services = {"up": upstream_service(), "open": upstream_service(auth="none")}
    config.write_text(yaml.safe_dump({"data_dir": str(data), "auth": {"enabled": True},
                                      "services": services}))
    made: dict[str, subprocess.CompletedProcess[str]] = {}

    async def create(scope: str) -> None:
        made[scope] = await hestia(config, "keys", "create", f"{scope}-key", "--scope", scope)

    with trio.fail_after(60):
        await create("admin")  # alone: it makes the database
        async with trio.open_nursery() as nursery:
            nursery.start_soon(create, "read")
            nursery.start_soon(create, "proxy")
        duplicate = await hestia(config, "keys", "create", "admin-key")
    keys = {scope: result.stdout.strip().splitlines()[-1] for scope, result in made.items()}
    assert all(r.returncode == 0 for r in made.values())
    assert all(k.startswith("hestia_") and len(k) == 50 for k in keys.values())
    assert duplicate.returncode == 1 and "admin-key" in duplicate.stderr

    with trio.fail_after(60):
        gateway = await start_gateway(data_dir=str(data), auth={"enabled": True},
                                      services=services)
        async with client(gateway) as http:
            assert (await http.get("/__health")).status_code == 200
            missing = await http.get("/v1/services")
            assert missing.status_code == 401
            assert missing.json()["request_id"] == missing.headers["x-request-id"]
            wrong = await http.get("/v1/services", headers={"X-API-Key": "hestia_" + "x" * 43})
            assert (wrong.status_code, wrong.json()["error"]) == (401, "unauthorized")
            read = {"X-API-Key": keys["read"]}
            assert (await http.get("/v1/services", headers=read)).status_code == 200
            forbidden = await http.post("/v1/services/up/start", headers=read)
            assert (forbidden.status_code, forbidden.json()["error"]) == (403, "forbidden")
            assert (await http.get("/services/up/echo", headers=read)).status_code == 403
            bearer = {"Authorization": f"Bearer {keys['proxy']}"}
            echoed = await http.get("/services/up/echo", headers=bearer)
            assert echoed.status_code == 200
            sent = {name.lower() for name, _ in echoed.json()["headers"]}
            assert "authorization" not in sent  # the credential stays with Hestia
            assert (await http.get("/v1/services", headers=bearer)).status_code == 403
            assert (await http.get("/services/open/health")).status_code == 200  # auth: none
            admin = {"X-API-Key": keys["admin"]}
            assert (await http.post("/v1/services/up/stop", headers=admin)).status_code == 202

            # Revoked by another process: the gateway sees it once its cached lookup expires.
            revoked = await hestia(config, "keys", "revoke", "read-key")
            assert revoked.returncode == 0
            with trio.fail_after(5):  # 0.2 s, and a margin for a loaded machine
                while (await http.get("/v1/services", headers=read)).status_code != 401:
                    await trio.sleep(0.02)
            listed = await hestia(config, "keys", "list")
            assert "read-key" in listed.stdout and "revoked" in listed.stdout

    # Never in plain text: not in the database, not in any log line.
    with sqlite3.connect(data / "hestia.db") as db:
        dump = "\n".join(db.iterdump())
    out, err = capfd.readouterr()
    for key in keys.values():
        assert key not in dump
        assert key not in out and key not in err
    assert listed.stdout.count("hestia_") == 4  # prefixes only: three keys and the CLI's
    assert all(key[:12] in listed.stdout for key in keys.values())



async def test_the_cli_finds_the_running_gateway_and_uses_its_key(tmp_path):
    async with serve_file(tmp_path, upstream_service(), auth={"enabled": True}) as served:
        config = tmp_path / "hestia.yml"
        with trio.fail_after(60):
            started = await hestia(config, "start", "up")
            assert (started.returncode, started.stdout.strip()) == (0, "up: STARTING")
            async with httpx.AsyncClient() as http:
                key = (tmp_path / "data" / "cli.key").read_text().strip()
                assert (tmp_path / "data" / "cli.key").stat().st_mode & 0o777 == 0o600
                while (await http.get(f"{served.url}/v1/services/up/status",
                                      headers={"X-API-Key": key})).json()["state"] != "READY":
                    await trio.sleep(0.05)
            status = await hestia(config, "status")
            assert status.returncode == 0
            header, row = status.stdout.splitlines()
            assert header.split()[:3] == ["SERVICE", "STATE", "MACHINE"]
            assert row.split()[:3] == ["up", "READY", "local"]
            again = await hestia(config, "start", "up")
            assert (again.returncode, again.stdout) == (0, "up: already READY\n")
            stopped = await hestia(config, "stop", "up")
            assert (stopped.returncode, stopped.stdout.strip()) == (0, "up: STOPPING")


async def test_a_damaged_database_stops_the_gateway_with_one_line_saying_what_to_do(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    garbage = bytes(range(256)) * 64
    (data / "hestia.db").write_bytes(garbage)
    config = tmp_path / "hestia.yml"
    config.write_text(yaml.safe_dump({"listen": "127.0.0.1:0", "data_dir": str(data),
                                      "services": {"up": upstream_service()}}))
    db = data / "hestia.db"
    line = (f"hestia: the database {db} is damaged (file is not a database); Hestia cannot use "
            f"it. Move it aside with its -wal and -shm files (`mv {db} {db}.damaged`) and start "
            "again: a new, empty one is made, which loses the API keys (make new ones with "
            "`hestia keys create`) and the history (last use, start durations, activity, "
            "Semaphore tasks); the configuration and the services are not affected\n")
    commands = (("serve",), ("keys", "list"), ("keys", "create", "k"))
    results: dict[tuple[str, ...], subprocess.CompletedProcess[str]] = {}

    async def one(args: tuple[str, ...]) -> None:
        results[args] = await hestia(config, *args)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for args in commands:
                nursery.start_soon(one, args)
    for args in commands:
        result = results[args]
        assert (result.returncode, result.stdout) == (1, ""), args
        assert result.stderr.endswith(line), args
        assert "Traceback" not in result.stderr
        assert [e for e in result.stderr.splitlines() if not e.startswith("{")] == [line[:-1]]
    assert db.read_bytes() == garbage  # nothing was lost on the way
