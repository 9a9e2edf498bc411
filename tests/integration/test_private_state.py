"""Hestia's state is readable by its user only, whatever the umask (real files, real gateway)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from .conftest import client, upstream_service


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, which gives 0644 files and 0755 directories when nothing says else."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_data_dir_and_every_file_in_it_are_private(umask_022, start_gateway,
                                                              tmp_path):
    data = tmp_path / "data"
    with trio.fail_after(30):
        gateway = await start_gateway(auth={"enabled": True},
                                      services={"up": upstream_service(idle_timeout="1h")})
        key = (data / "cli.key").read_text().strip()
        async with client(gateway, headers={"X-API-Key": key}) as http:
            assert (await http.get("/services/up/health")).status_code == 200
            modes = {str(path.relative_to(data)): mode(path) for path in
                     [data, *sorted(data.rglob("*"))]}
        gateway.shutdown()
    assert modes == {
        ".": 0o700,
        "cli.key": 0o600,
        "hestia.db": 0o600,
        "hestia.db-shm": 0o600,
        "hestia.db-wal": 0o600,
        "logs": 0o700,
        "logs/up.log": 0o600,
        "run": 0o700,
        "run/up.json": 0o600,  # the running backend's record
    }


async def test_an_existing_data_dir_keeps_its_mode_and_hestias_own_files_are_tightened(
        umask_022, start_gateway, tmp_path):
    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True, mode=0o755)
    (data / "logs" / "up.log").write_text("an older Hestia's log\n")
    (data / "hestia.db").touch(mode=0o644)
    os.chmod(data, 0o755)
    with trio.fail_after(30), capture_logs() as logs:
        gateway = await start_gateway(services={"up": upstream_service(idle_timeout="1h")})
        async with client(gateway) as http:
            assert (await http.get("/services/up/health")).status_code == 200
        gateway.shutdown()
    assert [mode(data / name) for name in (".", "logs", "logs/up.log", "hestia.db")] == [
        0o755, 0o700, 0o600, 0o600]
    assert (data / "logs" / "up.log").read_text().startswith("an older Hestia's log\n")
    warnings = [e for e in logs if e["event"] == "data_dir_not_private"]
    assert warnings == [{"event": "data_dir_not_private", "log_level": "warning",
                         "path": str(data),
                         "detail": f"{data} has mode 0755: others can list it (the files in it "
                                   f"are private all the same); `chmod 700 {data}` if it is not "
                                   "shared on purpose"}]
