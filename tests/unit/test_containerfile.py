"""The Containerfile against the gateway it packages: two stages, the image installs only the
wheel, runs as an unprivileged user under tini, and its health check, port, configuration path
and volume are the ones the gateway and the shipped configuration use. hadolint finds nothing.
(tests/integration/test_image_install.py runs the install steps themselves.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from hestia.config import load_config
from hestia.http.app import create_app
from tests.containerfile import (
    CONTAINERFILE,
    ROOT,
    Stage,
    in_build_context,
    mount_options,
    stages,
)


def build_and_image() -> tuple[Stage, Stage]:
    found = stages()
    assert len(found) == 2
    return found[0], found[1]


def option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def health_url() -> str:
    _, image = build_and_image()
    health = image.one("HEALTHCHECK")
    assert health.rest.startswith("CMD [")  # exec form: no shell in the way
    command = " ".join(json.loads(health.rest.removeprefix("CMD ")))
    match = re.search(r"http://[^'\" ]+", command)
    assert match is not None, command
    return match[0]


def home_of_the_user() -> tuple[str, str]:
    """The (uid, home) of the user the image's `useradd` creates."""
    _, image = build_and_image()
    [useradd] = [w for run in image.all("RUN") for w in run.rest.split("&&")
                 if w.strip().startswith("useradd")]
    words = useradd.split()
    home = option(words, "--home-dir") if "--home-dir" in words else f"/home/{words[-1]}"
    return option(words, "--uid"), home


def test_the_build_stage_makes_the_wheel_and_the_image_only_mounts_it() -> None:
    build, image = build_and_image()
    assert build.name == "build"
    assert image.base == build.base
    assert "--wheel-dir /wheels" in build.all("RUN")[-1].rest
    assert image.all("COPY") == image.all("ADD") == []
    [install] = [run for run in image.all("RUN") if "mount" in run.flags]
    assert mount_options(install.flags["mount"]) == {
        "type": "bind", "from": "build", "source": "/wheels", "target": "/wheels"}
    assert install.rest.endswith("pip install --no-cache-dir /wheels/*.whl")


def test_the_image_runs_as_the_unprivileged_user_it_creates() -> None:
    _, image = build_and_image()
    uid, _ = home_of_the_user()
    assert image.one("USER").rest == f"{uid}:{uid}"
    assert int(uid) != 0
    # Nothing after USER runs as root again.
    keywords = [i.keyword for i in image.instructions]
    assert "RUN" not in keywords[keywords.index("USER"):]


def test_tini_is_process_one_and_comes_from_debian() -> None:
    _, image = build_and_image()
    assert image.one("ENTRYPOINT").exec_form() == ["/usr/bin/tini", "--"]
    assert any("apt-get install -y --no-install-recommends tini" in run.rest
               for run in image.all("RUN"))


async def test_the_healthcheck_asks_the_gateways_health_route() -> None:
    url = urlsplit(health_url())
    assert (url.hostname, url.path) == ("127.0.0.1", "/__health")
    response = await create_app({}).test_client().get(url.path)
    assert response.status_code == 200
    assert (await response.get_json())["status"] == "ok"


def test_expose_the_command_and_the_healthcheck_name_one_port() -> None:
    _, image = build_and_image()
    command = image.one("CMD").exec_form()
    host, port = option(command, "--listen").rsplit(":", 1)
    assert host == "0.0.0.0"  # inside the container only: the host publishes it on loopback
    assert image.one("EXPOSE").rest == port
    assert urlsplit(health_url()).port == int(port)


def test_the_command_reads_the_configuration_beside_the_working_directory() -> None:
    _, image = build_and_image()
    command = image.one("CMD").exec_form()
    assert command[:2] == ["hestia", "serve"]
    config = Path(option(command, "-c"))
    assert config == Path("/etc/hestia/hestia.yml")
    assert image.one("WORKDIR").rest == str(config.parent)


def test_the_volume_is_the_data_dir_of_the_shipped_configuration(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, image = build_and_image()
    [volume] = image.one("VOLUME").exec_form()
    _, home = home_of_the_user()
    assert f"HOME={home}" in [env.rest for env in image.all("ENV")]
    monkeypatch.setenv("HOME", home)  # `~` in data_dir is the image user's home
    assert load_config(ROOT / "hestia.yml", env={"HOME": home}).data_dir == Path(volume)
    # Created private and owned by the user, so a new named volume starts out that way.
    assert any(f"-o hestia -g hestia -m 0700 {volume}" in run.rest for run in image.all("RUN"))


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run([str(hadolint), "--no-color", str(CONTAINERFILE)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          # no configuration of the machine's user changes the rules
                          env={"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)})
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_every_ignored_hadolint_rule_is_explained() -> None:
    lines = CONTAINERFILE.read_text().splitlines()
    ignores = [(n, line) for n, line in enumerate(lines) if "hadolint ignore=" in line]
    assert ignores  # else this test checks nothing: remove it with the last ignore
    for number, line in ignores:
        rules = line.split("ignore=", 1)[1].split(",")
        above = lines[max(0, number - 4):number]
        for rule in rules:
            assert any(rule.strip() in comment for comment in above), (rule, number + 1)


def test_the_build_context_holds_the_package_and_nothing_of_the_work_tree() -> None:
    assert in_build_context("pyproject.toml") and in_build_context("README.md")
    assert in_build_context("src/hestia/http/web/static/dashboard.js")
    for left_out in (".venv", ".git", "tests/unit/test_compose.py", "hestia.yml", ".env",
                     "src/hestia.egg-info/PKG-INFO", "src/hestia/__pycache__/cli.pyc"):
        assert not in_build_context(left_out), left_out
