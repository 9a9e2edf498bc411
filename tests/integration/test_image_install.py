"""The image's install steps, run outside a container engine (there is none here).

The steps are read from the Containerfile itself, not restated: the build stage's COPY lines
(with .dockerignore applied to the build context) and RUN lines, then the image's RUN line
that installs the wheel from the build stage, each with the container's paths (/src, /wheels,
/opt/hestia) mapped into a temporary directory. Dependencies come from the package index, as
in a real build. What needs root and changes the machine (apt-get, useradd) is not run.

The result is then used as the image uses it: from another directory, with nothing of this
repository on the path.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from hestia.config import load_config
from tests.containerfile import ROOT, context_files, stages
from tests.integration.conftest import free_port, wait_http

# Each pip step downloads and installs; generous, but bounded.
STEP_TIMEOUT = 300


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path


def run_step(command: str, cwd: Path, paths: dict[str, Path]) -> None:
    """One RUN line through `sh -c`, as the engine runs it, with the container's absolute paths
    replaced by the ones in `paths`, and this interpreter's `python` and `pip` first on PATH."""
    for inside, outside in paths.items():
        command = re.sub(rf"(?<![\w./-]){re.escape(inside)}(?=[/\s]|$)", str(outside), command)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["sh", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=STEP_TIMEOUT)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"


def install_as_the_image_does(target: Path) -> Installed:
    build, image = stages()
    paths = {"/src": target / "src", "/wheels": target / "wheels", "/opt/hestia": target / "venv"}
    cwd = target
    for step in build.instructions:
        if step.keyword == "WORKDIR":
            cwd = paths[step.rest]
            cwd.mkdir(parents=True)
        elif step.keyword == "COPY":
            *sources, destination = step.words()
            for source in sources:
                for name in context_files(source):
                    inside = Path(name).relative_to(source) if source.endswith("/") else \
                        Path(Path(name).name)
                    copied = cwd / destination / inside
                    copied.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / name, copied)
        elif step.keyword == "RUN":
            run_step(step.rest, cwd, paths)
    [install] = [step for step in image.all("RUN") if "mount" in step.flags]
    run_step(install.rest, target, paths)
    [wheel] = (target / "wheels").glob("*.whl")
    return Installed(wheel, target / "venv")


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Installed:
    """Built and installed once per test session: the pytest-xdist workers share it through a
    directory of the session, under a lock."""
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent
    target = shared / "image-install"
    with open(shared / "image-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "done").exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            install_as_the_image_does(target)
            (target / "done").touch()
    [wheel] = (target / "wheels").glob("*.whl")
    return Installed(wheel, target / "venv")


def run_installed(installed: Installed, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """A command of the installed environment, with nothing of this repository on its path."""
    env = {"PATH": f"{installed.venv / 'bin'}{os.pathsep}/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)


def start_installed(installed: Installed, *args: str, cwd: Path) -> subprocess.Popen:
    env = {"PATH": f"{installed.venv / 'bin'}{os.pathsep}/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.Popen([str(installed.venv / "bin" / "hestia"), *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_the_wheel_holds_every_module_and_web_file_of_the_package(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        packaged = {n for n in wheel.namelist() if n.startswith("hestia/")}
    source = {p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "hestia").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    assert packaged == source
    # What the gateway serves to browsers is package data, not modules: named to be sure.
    assert {"hestia/http/web/templates/dashboard.html",
            "hestia/http/web/static/dashboard.js"} <= packaged


def test_the_installed_hestia_prints_its_version_from_another_directory(
        installed: Installed, tmp_path: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    done = run_installed(installed, "hestia", "--version", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"hestia {version}\n")
    where = run_installed(installed, "python", "-c", "import hestia; print(hestia.__file__)",
                          cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(installed.venv)


def test_the_installed_hestia_checks_the_shipped_configuration_from_another_directory(
        installed: Installed, tmp_path: Path) -> None:
    shipped = ROOT / "hestia.yml"
    services = load_config(shipped, env={}).services
    done = run_installed(installed, "hestia", "check", "-c", str(shipped), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{shipped}: ok ({len(services)} service(s): {', '.join(services)})\n"


def healthcheck(installed: Installed, port: int, cwd: Path) -> int:
    """The exit status of the image's HEALTHCHECK command, run with the installed environment's
    python, against `port` instead of the image's."""
    [_, image] = stages()
    command = json.loads(image.one("HEALTHCHECK").rest.removeprefix("CMD "))
    argv = [arg.replace(":8080/", f":{port}/") for arg in command]
    return run_installed(installed, *argv, cwd=cwd).returncode


@asynccontextmanager
async def serving(installed: Installed, cwd: Path) -> AsyncIterator[int]:
    """The installed `hestia serve` on the shipped configuration, on a free loopback port
    (yielded); stopped with SIGTERM on the way out, which it must survive cleanly."""
    port = free_port()
    gateway = start_installed(installed, "serve", "-c", str(ROOT / "hestia.yml"),
                              "--listen", f"127.0.0.1:{port}", cwd=cwd)
    try:
        with trio.fail_after(60):
            await wait_http(f"http://127.0.0.1:{port}/__health")
        yield port
    finally:
        gateway.send_signal(signal.SIGTERM)
        _, stderr = gateway.communicate(timeout=30)
    assert gateway.returncode == 0, stderr


async def test_the_images_healthcheck_passes_while_the_gateway_serves_and_fails_after(
        installed: Installed, tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with serving(installed, tmp_path) as port:
            assert await trio.to_thread.run_sync(healthcheck, installed, port, tmp_path) == 0
        assert await trio.to_thread.run_sync(healthcheck, installed, port, tmp_path) != 0


async def test_the_installed_gateway_serves_its_pages_from_the_wheel(
        installed: Installed, tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with serving(installed, tmp_path) as port:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                page = await http.get("/", headers={"Sec-Fetch-Mode": "navigate"})
                style = await http.get("/__hestia/static/dashboard.css")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")  # rendered from a template
    assert style.status_code == 200
    assert style.text == (ROOT / "src/hestia/http/web/static/dashboard.css").read_text()
