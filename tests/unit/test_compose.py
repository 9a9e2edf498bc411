"""compose.yaml against what it runs: every file it names exists; Hestia's port, volume,
configuration and plugins are where the Containerfile and hestia.yml put them; Hestia reaches
Semaphore at http://semaphore:3000 with the token from .env; nothing is published beyond the
host's loopback. (No container engine runs here: these are the checks that can be made
without one.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from hestia.config import Config, load_config, parse_config, read_config
from tests.containerfile import ROOT, stages

COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {key: value for key, value in pairs}


def interpolate(value: str, env: dict[str, str]) -> str:
    """compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` (an error here too)."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match[1], match[2], match[3]
        if env.get(name):
            return env[name]
        assert op != ":?", f"{name} must be set: {arg}"
        return arg if op == ":-" else ""
    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def mounts(name: str) -> dict[str, tuple[str, str]]:
    """A service's volumes by target: (source, options)."""
    found = {}
    for entry in service(name)["volumes"]:
        source, target, *options = entry.split(":")
        found[target] = (source, ",".join(options))
    return found


def shipped() -> Config:
    return load_config(ROOT / "hestia.yml", env={})


def image_instruction(keyword: str) -> str:
    return stages()[-1].one(keyword).rest


def test_every_file_it_names_exists() -> None:
    build = service("hestia")["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    binds = [source for name in compose()["services"] for source, _ in mounts(name).values()
             if source.startswith(".")]
    assert binds  # the configuration and the plugins
    for source in binds:
        assert (ROOT / source).exists(), source


def test_hestia_is_built_from_the_containerfile() -> None:
    assert service("hestia")["build"] == {"context": ".", "dockerfile": "Containerfile"}
    assert "image" not in service("hestia")


def test_the_configuration_and_plugins_are_mounted_read_only_where_the_image_reads_them() -> None:
    command = stages()[-1].one("CMD").exec_form()
    config_path = command[command.index("-c") + 1]
    plugins = Path(image_instruction("WORKDIR")) / shipped().strategies_dir
    assert mounts("hestia")[config_path] == ("./hestia.yml", "ro")
    assert mounts("hestia")[str(plugins)] == ("./strategies", "ro")


def test_hestia_is_published_where_hestia_yml_listens_and_the_image_exposes() -> None:
    assert service("hestia")["ports"] == [f"{shipped().listen}:{image_instruction('EXPOSE')}"]


def test_no_port_is_published_beyond_the_hosts_loopback() -> None:
    for name, spec in compose()["services"].items():
        assert "network_mode" not in spec, name
        for port in spec.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)
            assert port.count(":") == 2, (name, port)  # host address, host port, its port


def test_the_data_lives_in_the_named_volumes() -> None:
    [volume] = stages()[-1].one("VOLUME").exec_form()
    assert set(compose()["volumes"]) == {"hestia_data", "semaphore_data"}
    assert mounts("hestia")[volume] == ("hestia_data", "")
    semaphore_env = service("semaphore")["environment"]
    database = semaphore_env["SEMAPHORE_DB_PATH"]
    assert mounts("semaphore")[database] == ("semaphore_data", "")
    # Its config.json (keys, cookie secrets) is kept with the database it belongs to.
    assert Path(semaphore_env["SEMAPHORE_CONFIG_PATH"]).is_relative_to(database)


def test_semaphore_is_a_pinned_release_with_its_embedded_database_and_an_admin() -> None:
    semaphore = service("semaphore")
    assert re.fullmatch(r"semaphoreui/semaphore:v\d+\.\d+\.\d+", semaphore["image"])
    assert semaphore["environment"]["SEMAPHORE_DB_DIALECT"] == "bolt"
    assert {"SEMAPHORE_ADMIN", "SEMAPHORE_ADMIN_NAME", "SEMAPHORE_ADMIN_EMAIL",
            "SEMAPHORE_ADMIN_PASSWORD"} <= set(semaphore["environment"])


def test_hestia_reaches_semaphore_by_its_service_name_with_the_token_from_env() -> None:
    env = {**env_example(), "SEMAPHORE_ADMIN_PASSWORD": "pw",
           "SEMAPHORE_ACCESS_KEY_ENCRYPTION": "key", "SEMAPHORE_API_TOKEN": "t0ken"}
    hestia_env = {k: interpolate(v, env) for k, v in service("hestia")["environment"].items()}
    assert hestia_env["SEMAPHORE_BASE_URL"] == "http://semaphore:3000"
    assert service("semaphore")["ports"][0].endswith(":3000")  # the port it serves on
    # hestia.yml with its `semaphore` block turned on, url and token left to the environment.
    raw = {**read_config(ROOT / "hestia.yml"), "semaphore": {"project": 1}}
    config = parse_config(raw, env=hestia_env)
    assert config.semaphore is not None
    token = config.semaphore.token
    assert token is not None and token.get_secret_value() == "t0ken"
    assert config.semaphore.url == "http://semaphore:3000"


def test_hestia_gets_no_semaphore_secret_but_its_token() -> None:
    # Hestia's backends inherit its environment (docs/operations.md, Security).
    assert set(service("hestia")["environment"]) == {"SEMAPHORE_BASE_URL", "SEMAPHORE_API_TOKEN"}
    assert "env_file" not in service("hestia")


def test_both_are_health_checked_and_hestia_waits_for_semaphore() -> None:
    check = service("semaphore")["healthcheck"]["test"]
    assert check[0] == "CMD" and check[-1] == "http://127.0.0.1:3000/api/ping"
    # Hestia's is the image's own, unchanged.
    assert "healthcheck" not in service("hestia")
    assert image_instruction("HEALTHCHECK").startswith("CMD ")
    assert service("hestia")["depends_on"] == {"semaphore": {"condition": "service_healthy"}}


def test_every_variable_it_reads_is_in_env_example_and_env_is_ignored() -> None:
    used = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    assert used <= set(env_example())
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    assert required and all(env_example()[name] == "" for name in required)  # no default secret
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_stop_grace_period_covers_hestias_graceful_stop() -> None:
    config = shipped()
    stops = [s.launcher.process.stop_timeout for s in config.services.values()
             if s.launcher is not None and s.launcher.process is not None]
    period = service("hestia")["stop_grace_period"]
    assert period.endswith("s")
    assert float(period[:-1]) > config.grace_period + max(stops)
    # A stop playbook (a VM powering off) takes minutes, not a process's seconds.
    assert float(period[:-1]) >= 300
