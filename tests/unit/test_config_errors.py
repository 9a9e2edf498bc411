"""Configuration errors as a person meets them: the file, `hestia check`, `hestia serve`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hestia.config import ServiceConfig, load_config, parse_config, upstream_warnings
from hestia.errors import ConfigError

SERVICE = {"upstream": "http://127.0.0.1:1", "launcher": {"external": {}}}


def hestia(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hestia", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd, check=False)


def errors_of(text: str, tmp_path: Path) -> list[tuple[str, str]]:
    path = tmp_path / "hestia.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    return caught.value.errors


# --- the file ---------------------------------------------------------------------------------

def test_a_file_that_is_not_utf8_is_one_line_naming_the_byte_from_check_and_serve(tmp_path):
    path = tmp_path / "hestia.yml"
    path.write_bytes(b"listen: 127.0.0.1:0\n# caf\xe9 (latin-1)\nservices: {}\n")
    message = ("not UTF-8: byte 0xe9 at byte offset 25 (line 2) cannot be decoded; save the "
               "file as UTF-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.errors == [("", message)]
    for command in ("check", "serve"):
        result = hestia(command, "-c", str(path))
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == f"hestia: invalid configuration {path}: {message}\n"


@pytest.mark.parametrize(("text", "error"), [
    ("listen: 127.0.0.1:1\nservices: {}\nlisten: 127.0.0.1:2\n",
     "line 3, column 1: duplicate key 'listen' (first at line 1)"),
    ("services:\n  a:\n    upstream: http://127.0.0.1:1\n    queue:\n      max: 1\n"
     "      timeout: 1s\n      max: 2\n",
     "line 7, column 7: duplicate key 'max' (first at line 5)"),
    ("groups: {gpu: {max_running: 1}, gpu: {max_running: 2}}\n",
     "line 1, column 33: duplicate key 'gpu' (first at line 1)"),
])
def test_a_key_given_twice_in_a_mapping_is_refused_with_both_lines(tmp_path, text, error):
    assert errors_of(text, tmp_path) == [("", f"invalid YAML: {error}")]


def test_a_merged_key_may_be_overridden_as_yaml_means_it(tmp_path):
    path = tmp_path / "hestia.yml"
    path.write_text("services:\n  a: &a {upstream: 'http://127.0.0.1:1', launcher: {external: "
                    "{}}}\n  b:\n    <<: *a\n    upstream: http://127.0.0.1:2\n")
    config = load_config(path, env={})
    assert config.services["b"].upstream == "http://127.0.0.1:2"


# --- every error in one run -------------------------------------------------------------------

def test_one_invalid_service_hides_no_other_error():
    raw = {"groups": {"gpu": {}}, "services": {
        "a": {**SERVICE, "readiness": {"http": "health"}, "queue": {"max": 0}},
        "b b": {**SERVICE, "group": "cpu", "machine": "box"},
        "c": {**SERVICE, "fallbacks": [{"machine": "elsewhere", "upstream": "http://x:1",
                                        "launcher": {"external": {}}}]}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    assert sorted(caught.value.errors) == [
        ("services", "invalid service id(s) ['b b']: use letters, digits, '_', '.', '-'"),
        ("services.a.queue.max", "Input should be greater than or equal to 1"),
        ("services.a.readiness.http", "http must be a path starting with /"),
        ("services.b b.group", "unknown group 'cpu' (declare it under groups)"),
        ("services.b b.machine", "unknown machine 'box' (declare it under machines)"),
        ("services.c.fallbacks[0].machine",
         "unknown machine 'elsewhere' (declare it under machines)"),
    ]


def test_semaphore_settings_are_checked_next_to_other_errors():
    raw = {"services": {"a": {**SERVICE, "launcher": {"semaphore": {"start_template": 1}},
                              "queue": {"max": 0}}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    assert sorted(caught.value.errors) == [
        ("semaphore", "required by services.a.launcher.semaphore (give semaphore.url and a "
                      "token, or set SEMAPHORE_BASE_URL and SEMAPHORE_API_TOKEN)"),
        ("services.a.queue.max", "Input should be greater than or equal to 1"),
    ]
    raw["semaphore"] = {"url": "http://semaphore:3000", "token": "t"}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    assert ("services.a.launcher.semaphore.project",
            "no project (give it here or as semaphore.project)") in caught.value.errors


def test_hestia_check_lists_strategy_errors_with_the_others(tmp_path):
    path = tmp_path / "hestia.yml"
    path.write_text(
        "strategies_dir: " + str(tmp_path / "none") + "\n"
        "groups: {}\n"
        "services:\n"
        "  llm:\n"
        "    launcher: {external: {}}\n"
        "    strategy: {name: by_modle}\n"
        "    backends:\n"
        "      a: {upstream: 'http://127.0.0.1:1'}\n"
        "      b: {upstream: 'http://127.0.0.1:2'}\n"
        "  web:\n"
        "    upstream: http://127.0.0.1:3\n"
        "    launcher: {external: {}}\n"
        "    readiness: {http: health}\n"
        "    group: gpu\n")
    result = hestia("check", "-c", str(path))
    assert (result.returncode, result.stdout) == (1, "")
    lines = result.stderr.splitlines()
    assert lines[0] == f"hestia: invalid configuration {path}: 3 error(s)"
    assert sorted(lines[1:]) == [
        "  services.llm.strategy: unknown strategy 'by_modle'; known: by_model, first_ready, "
        "least_inflight, round_robin, weighted",
        "  services.web.group: unknown group 'gpu' (declare it under groups)",
        "  services.web.readiness.http: http must be a path starting with /",
    ]


# --- unknown keys -----------------------------------------------------------------------------

def test_an_unknown_key_names_the_closest_and_the_valid_ones():
    raw = {"listn": "127.0.0.1:1", "services": {
        "a": {**SERVICE, "idel_timeout": "1m", "queue": {"mx": 1}},
        "llm": {"launcher": {"external": {}}, "backends": {"x": {**SERVICE, "stratgy": {}}}}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    service_keys = ", ".join(ServiceConfig.model_fields)
    assert service_keys.startswith("upstream, launcher, machine, fallbacks, group, readiness")
    errors = dict(caught.value.errors)
    assert errors["listn"].startswith("unknown key 'listn' (did you mean 'listen'?); valid: "
                                      "listen, data_dir, grace_period, log_level, auth, ")
    assert "routes" not in errors["listn"]  # computed: never offered
    assert errors["services.a.idel_timeout"] == (
        f"unknown key 'idel_timeout' (did you mean 'idle_timeout'?); valid: {service_keys}, "
        "backends, strategy")
    assert errors["services.a.queue.mx"] == (
        "unknown key 'mx' (did you mean 'max'?); valid: max, timeout")
    # A backend cannot have backends or a strategy of its own: they are not offered there.
    assert errors["services.llm.backends.x.stratgy"] == (
        f"unknown key 'stratgy'; valid: {service_keys}")


def test_an_unknown_launcher_names_the_closest_and_the_valid_ones():
    with pytest.raises(ConfigError) as caught:
        parse_config({"services": {"a": {**SERVICE, "launcher": {"proces": {}}}}}, env={})
    assert caught.value.errors == [(
        "services.a.launcher.proces", "unknown launcher 'proces' (did you mean 'process'?); "
        "valid: process, command, container, wol, external, semaphore")]


# --- what `hestia check` prints where ---------------------------------------------------------

def test_check_prints_its_result_on_stdout_and_logs_on_stderr(tmp_path):
    plugins = tmp_path / "strategies"
    plugins.mkdir()
    (plugins / "mine.py").write_text(
        "from hestia.routing.strategy import Decision, eligible\n\n"
        "class Mine:\n"
        "    name = 'mine'\n"
        "    needs_body = False\n"
        "    def answer(self, ctx, backends):\n"
        "        return None\n"
        "    def pick(self, ctx, backends, exclude=frozenset()):\n"
        "        return Decision(eligible(backends, exclude)[0].name, 'balance')\n\n"
        "def register_strategy(registry):\n"
        "    registry.register('mine', lambda options, names: Mine())\n")
    path = tmp_path / "hestia.yml"
    path.write_text(f"strategies_dir: {plugins}\n"
                    "services:\n"
                    "  a:\n"
                    "    launcher: {external: {}}\n"
                    "    strategy: {name: mine}\n"
                    "    backends:\n"
                    "      x: {upstream: 'http://127.0.0.1:1'}\n"
                    "      y: {upstream: 'http://127.0.0.1:2'}\n")
    result = hestia("check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: ok (2 service(s): a@x, a@y)\n"
    assert '"event": "strategy_plugin_loaded"' in result.stderr


# --- services sharing an upstream -------------------------------------------------------------

def test_services_that_share_an_upstream_without_saying_so_are_warned_about(tmp_path):
    raw = {"services": {
        "a": {**SERVICE, "upstream": "http://localhost:8081"},
        "b": {**SERVICE, "upstream": "http://127.0.0.1:8081/api"},
        "c": {**SERVICE, "upstream": "http://127.0.0.1:8082",
              "fallbacks": [{"machine": "local", "upstream": "http://[::1]:8083",
                             "launcher": {"external": {}}}]},
        "d": {**SERVICE, "upstream": "http://[::1]:8083"},
        "e": {**SERVICE, "upstream": "https://127.0.0.1"},
        "f": {**SERVICE, "upstream": "http://127.0.0.1:443"}}}
    warning = ("{} is also the upstream of {}: whatever answers there serves them all; if that "
               "is meant, set `shared_upstream: true` on each")
    assert upstream_warnings(parse_config(raw, env={})) == [
        ("services.a.upstream", warning.format("127.0.0.1:8081", "services.b.upstream")),
        ("services.c.fallbacks[0].upstream", warning.format("[::1]:8083", "services.d.upstream")),
        ("services.e.upstream", warning.format("127.0.0.1:443", "services.f.upstream")),
    ]
    for sid in ("a", "b"):
        raw["services"][sid]["shared_upstream"] = True
    assert [path for path, _ in upstream_warnings(parse_config(raw, env={}))] == [
        "services.c.fallbacks[0].upstream", "services.e.upstream"]
    raw["services"]["c"]["fallbacks"] = []
    raw["services"]["f"]["upstream"] = "http://127.0.0.1:444"
    path = tmp_path / "hestia.yml"
    path.write_text(yaml.safe_dump(raw))
    result = hestia("check", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: ok (6 service(s): a, b, c, d, e, f)\n"
    raw["services"]["b"]["shared_upstream"] = False
    path.write_text(yaml.safe_dump(raw))
    result = hestia("check", "-c", str(path), cwd=tmp_path)
    assert result.stdout.splitlines()[1:] == [
        "  warning: services.a.upstream: " + warning.format("127.0.0.1:8081",
                                                             "services.b.upstream")]
