"""`depends_on` at load and in `hestia check`: unknown names, cycles, groups too small."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hestia.config import parse_config
from hestia.errors import ConfigError
from tests.unit.test_config_errors import SERVICE, hestia


def errors(services: dict[str, Any], **top: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config({"services": services, **top}, env={})
    return caught.value.errors


def test_dependencies_are_kept_in_order():
    config = parse_config({"services": {"db": SERVICE, "cache": SERVICE,
                                        "app": {**SERVICE, "depends_on": ["db", "cache"]}}},
                          env={})
    assert config.services["app"].depends_on == ["db", "cache"]
    assert config.services["db"].depends_on == []


def test_an_unknown_name_is_refused_with_the_closest_one():
    assert errors({"database": SERVICE, "app": {**SERVICE, "depends_on": ["databse"]}}) == [
        ("services.app.depends_on[0]", "unknown service 'databse' (did you mean 'database'?)")]


def test_a_service_with_backends_is_named_by_one_of_them():
    llm = {"launcher": {"external": {}}, "backends": {"a": {"upstream": "http://127.0.0.1:1"},
                                                      "b": {"upstream": "http://127.0.0.1:2"}}}
    assert errors({"llm": llm, "app": {**SERVICE, "depends_on": ["llm"]}}) == [
        ("services.app.depends_on[0]", "'llm' has several backends: name one of llm@a, llm@b")]
    config = parse_config({"services": {"llm": llm, "app": {**SERVICE,
                                                            "depends_on": ["llm@a"]}}}, env={})
    assert config.services["app"].depends_on == ["llm@a"]


def test_cycles_are_refused_naming_the_cycle_once():
    found = errors({"a": {**SERVICE, "depends_on": ["b"]}, "b": {**SERVICE, "depends_on": ["c"]},
                    "c": {**SERVICE, "depends_on": ["a"]}, "d": {**SERVICE, "depends_on": ["a"]},
                    "e": {**SERVICE, "depends_on": ["e"]}})
    assert found == [("services.a.depends_on", "dependency cycle: a → b → c → a"),
                     ("services.e.depends_on", "dependency cycle: e → e")]


def test_a_chain_its_group_cannot_hold_is_refused():
    found = errors({"db": {**SERVICE, "group": "gpu"},
                    "app": {**SERVICE, "group": "gpu", "depends_on": ["db"]}},
                   groups={"gpu": {"max_running": 1}})
    assert found == [("services.app.depends_on", "app, db run together but group 'gpu' runs at "
                      "most 1 at once (raise its max_running, or move a dependency out of it)")]
    parse_config({"groups": {"gpu": {"max_running": 2}},
                  "services": {"db": {**SERVICE, "group": "gpu"},
                               "app": {**SERVICE, "group": "gpu", "depends_on": ["db"]}}},
                 env={})


def test_hestia_check_lists_dependency_errors_with_the_others(tmp_path: Path):
    path = tmp_path / "hestia.yml"
    path.write_text(yaml.safe_dump({"services": {
        "a": {**SERVICE, "depends_on": ["b"]}, "b": {**SERVICE, "depends_on": ["a", "cach"]},
        "cache": {**SERVICE, "keep_warm": {"schedule": ["Mon-Fri 8:00-18:00", "Sun 9-10"],
                                           "timezone": "UTC"}}}}))
    result = hestia("check", "-c", str(path), cwd=tmp_path)  # no strategy plugins there
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        f"hestia: invalid configuration {path}: 3 error(s)",
        "  services.b.depends_on[1]: unknown service 'cach' (did you mean 'cache'?)",
        "  services.a.depends_on: dependency cycle: a → b → a",
        "  services.cache.keep_warm.schedule[1]: 'Sun 9-10' is not a window: write "
        "'[days] HH:MM-HH:MM', e.g. 'Mon-Fri 08:00-18:00', 'Sat,Sun 10:00-12:00' or "
        "'daily 22:00-02:00'",
    ]
