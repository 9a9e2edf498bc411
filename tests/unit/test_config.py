"""Configuration: durations, interpolation, environment overrides, and errors with paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hestia.config import load_config, parse_config, parse_duration
from hestia.errors import ConfigError

MINIMAL = {"services": {"ollama": {"upstream": "http://127.0.0.1:11434",
                                   "launcher": {"process": {"command": "ollama serve"}}}}}


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("7d", 604800.0), (12, 12.0),
    ("1.5", 1.5),
    (0, 0.0),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "-3s", "", True, "1w", "1m30s"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_defaults_and_shell_split_command():
    config = parse_config(MINIMAL, env={})
    ollama = config.services["ollama"]
    assert ollama.launcher.process is not None
    assert ollama.launcher.process.command == ["ollama", "serve"]
    assert ollama.idle_timeout == 300.0
    assert ollama.queue.max == 100
    assert ollama.readiness.kind == "tcp"
    assert config.listen == "127.0.0.1:8080"
    assert config.data_dir == Path("~/.local/share/hestia").expanduser()


def test_variables_are_interpolated_with_defaults():
    raw = {"services": {"ollama": {
        "upstream": "http://${OLLAMA_HOSTNAME}:${OLLAMA_PORT:-11434}",
        "launcher": {"process": {"command": ["ollama", "serve"], "env": {"TOKEN": "${TOKEN}"}}},
    }}}
    config = parse_config(raw, env={"OLLAMA_HOSTNAME": "gpu", "TOKEN": "t0k"})
    assert config.services["ollama"].upstream == "http://gpu:11434"
    assert config.services["ollama"].launcher.process.env == {"TOKEN": "t0k"}


def test_an_empty_variable_takes_the_default_as_in_the_shell():
    raw = {"services": {"ollama": {**MINIMAL["services"]["ollama"],
                                   "upstream": "http://${HOST:-127.0.0.1}:${PORT}"}}}
    config = parse_config(raw, env={"HOST": "", "PORT": "1234"})
    assert config.services["ollama"].upstream == "http://127.0.0.1:1234"


def test_override_values_are_strings_coerced_by_the_field_type():
    env = {"OLLAMA_QUEUE_MAX": "7", "OLLAMA_KEEP_WARM": "yes", "OLLAMA_IDLE_TIMEOUT": "90"}
    ollama = parse_config(MINIMAL, env=env).services["ollama"]
    assert (ollama.queue.max, ollama.keep_warm, ollama.idle_timeout) == (7, True, 90.0)
    with pytest.raises(ConfigError) as caught:  # not YAML 1.1's sexagesimal 90
        parse_config(MINIMAL, env={"OLLAMA_IDLE_TIMEOUT": "1:30"})
    assert caught.value.errors[0][0] == "services.ollama.idle_timeout"


def test_two_readiness_probes_conflict_even_with_a_zero_delay():
    raw = {"services": {"ollama": {**MINIMAL["services"]["ollama"],
                                   "readiness": {"http": "/", "delay": 0}}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    assert "at most one of http, tcp, delay (got http, delay)" in str(caught.value)


def test_an_unset_variable_without_default_is_an_error_with_its_path():
    raw = {"services": {"ollama": {**MINIMAL["services"]["ollama"],
                                   "upstream": "http://${NOPE}:1"}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    assert caught.value.errors[0][0] == "services.ollama.upstream"
    assert "NOPE is not set" in caught.value.errors[0][1]


def test_environment_overrides_fields_of_declared_services():
    env = {"OLLAMA_IDLE_TIMEOUT": "10m", "OLLAMA_QUEUE_MAX": "5", "OLLAMA_KEEP_WARM": "true",
           "OLLAMA_READINESS_HTTP": "/api/tags", "OTHER_IDLE_TIMEOUT": "1s"}
    config = parse_config(MINIMAL, env=env)
    ollama = config.services["ollama"]
    assert ollama.idle_timeout == 600.0
    assert ollama.queue.max == 5
    assert ollama.keep_warm is True
    assert ollama.readiness.http == "/api/tags"
    assert set(config.services) == {"ollama"}  # OTHER_ never invents a service


def test_an_override_that_is_invalid_fails_with_its_path():
    with pytest.raises(ConfigError) as caught:
        parse_config(MINIMAL, env={"OLLAMA_QUEUE_MAX": "0"})
    assert [path for path, _ in caught.value.errors] == ["services.ollama.queue.max"]


def test_the_longest_service_id_wins_an_override():
    raw = {"services": {
        "my": MINIMAL["services"]["ollama"],
        "my-app": MINIMAL["services"]["ollama"],
    }}
    config = parse_config(raw, env={"MY_APP_IDLE_TIMEOUT": "7s"})
    assert config.services["my-app"].idle_timeout == 7.0
    assert config.services["my"].idle_timeout == 300.0


def test_every_error_is_listed_with_its_path():
    raw = {
        "listen": "nowhere",
        "services": {
            "a": {"upstream": "ftp://x", "idel_timeout": "5m",
                  "launcher": {"process": {"command": ["x"], "stop_signal": "SIGNOPE"}},
                  "queue": {"max": 0, "timeout": "soon"}},
            "b": {"upstream": "http://127.0.0.1:1", "launcher": {},
                  "readiness": {"http": "/h", "tcp": True}},
        },
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    paths = sorted(path for path, _ in caught.value.errors)
    assert paths == sorted([
        "listen",
        "services.a.upstream",
        "services.a.idel_timeout",
        "services.a.launcher.process.stop_signal",
        "services.a.queue.max",
        "services.a.queue.timeout",
        "services.b.launcher",
        "services.b.readiness",
    ])
    text = str(caught.value)
    assert ("services.a.idel_timeout: unknown key 'idel_timeout' (did you mean "
            "'idle_timeout'?); valid: upstream, launcher, machine,") in text
    assert ("services.b.launcher: give exactly one launcher: process, command, container, wol, "
            "external") in text


def test_config_is_frozen():
    config = parse_config(MINIMAL, env={})
    with pytest.raises(Exception, match="frozen"):
        config.services["ollama"].idle_timeout = 1  # type: ignore[misc]


def test_yaml_syntax_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("services:\n  a: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert "line 3" in caught.value.errors[0][1]


def test_hestia_check_lists_errors_and_exits_non_zero(tmp_path):
    path = tmp_path / "hestia.yml"
    path.write_text("services:\n  a:\n    upstream: http://127.0.0.1:1\n"
                    "    launcher: {process: {command: [x]}}\n    queue: {max: 0}\n"
                    "    idle_timeout: forever\n")
    result = subprocess.run([sys.executable, "-m", "hestia", "check", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "services.a.queue.max: Input should be greater than or equal to 1" in result.stderr
    assert "services.a.idle_timeout: Value error" not in result.stderr
    assert "services.a.idle_timeout: invalid duration 'forever'" in result.stderr


def test_hestia_check_accepts_the_example_configuration():
    example = Path(__file__).parents[2] / "hestia.yml"
    result = subprocess.run([sys.executable, "-m", "hestia", "check", "-c", str(example)],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_backends_expand_with_the_service_fields_as_defaults():
    config = parse_config({"groups": {"gpu": {}}, "services": {"llm": {
        "launcher": {"external": {}}, "idle_timeout": "1m", "group": "gpu",
        "strategy": {"name": "by_model", "map": {"llama3": "llama"}, "max_body": "64KiB"},
        "backends": {"llama": {"upstream": "http://127.0.0.1:1"},
                     "mistral": {"upstream": "http://127.0.0.1:2", "idle_timeout": "5m",
                                 "weight": 3}}}}}, env={})
    assert list(config.services) == ["llm@llama", "llm@mistral"]
    llama, mistral = config.services["llm@llama"], config.services["llm@mistral"]
    assert (llama.idle_timeout, llama.group, llama.weight) == (60.0, "gpu", 1)
    assert (mistral.idle_timeout, mistral.weight) == (300.0, 3)
    route = config.routes["llm"]
    assert route.backends == ["llm@llama", "llm@mistral"]
    assert (route.strategy.name, route.strategy.max_body) == ("by_model", 65536)
    assert route.strategy.options == {"map": {"llama3": "llama"}}


def test_errors_in_backends_name_their_place_in_the_file():
    with pytest.raises(ConfigError) as caught:
        parse_config({"routes": {}, "services": {
            "llm": {"launcher": {"external": {}},
                    "backends": {"a": {"upstream": "nope"}, "b": {"machine": "gpu",
                                                                  "upstream": "http://x:1"}}},
            "one": {"upstream": "http://x:1", "launcher": {"external": {}},
                    "strategy": {"name": "round_robin"}}}}, env={})
    assert sorted(caught.value.errors) == [
        ("routes", "computed from services; not a configuration key"),
        ("services.llm.backends.a.upstream",
         "upstream must be an http:// or https:// URL with a host"),
        ("services.llm.backends.b.machine", "unknown machine 'gpu' (declare it under machines)"),
        ("services.one.strategy", "a strategy needs `backends`"),
    ]
    with pytest.raises(ConfigError) as caught:
        parse_config({"services": {"llm": {"launcher": {"external": {}}, "backends": {
            "b": {"machine": "gpu", "upstream": "http://x:1"}}}}}, env={})
    assert caught.value.errors == [("services.llm.backends.b.machine",
                                    "unknown machine 'gpu' (declare it under machines)")]


def test_a_semaphore_password_from_the_environment_is_taken_as_it_is():
    config = parse_config({"semaphore": {"project": 1}, "services": {}}, env={
        "SEMAPHORE_BASE_URL": "http://semaphore:3000", "SEMAPHORE_USERNAME": "hestia",
        "SEMAPHORE_PASSWORD": "pa${HOME}x${unset}"})
    assert config.semaphore is not None
    assert config.semaphore.password is not None
    assert config.semaphore.password.get_secret_value() == "pa${HOME}x${unset}"
