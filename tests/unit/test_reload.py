"""What a reload changes (reload.py): the field table and the diff of two configurations."""

from __future__ import annotations

from typing import Any

import pytest

from hestia.config import Config, ServiceConfig, parse_config
from hestia.http.addressing import Addressing
from hestia.reload import (
    SERVICE_FIELDS,
    TOP_LEVEL,
    ConfigChanges,
    ReloadResult,
    diff_configs,
    field_kind,
    restart_fields,
)
from hestia.reloader import Front
from hestia.store import Store


def svc(port: int = 9001, **fields: Any) -> dict[str, Any]:
    return {"upstream": f"http://127.0.0.1:{port}",
            "launcher": {"process": {"command": ["serve", str(port)]}}, **fields}


def config(**top: Any) -> Config:
    return parse_config({"services": {"a": svc(9001), "b": svc(9002)}, **top}, env={})


def test_every_service_field_is_classified_and_an_unknown_one_counts_as_launch():
    assert set(SERVICE_FIELDS) == set(ServiceConfig.model_fields)
    assert set(TOP_LEVEL) == set(Config.model_fields)
    assert field_kind("idle_timeout") == "policy"
    assert field_kind("upstream") == "launch"
    assert field_kind("a_field_added_later") == "launch"


def test_the_same_configuration_changes_nothing():
    changes = diff_configs(config(), config())
    assert changes == ConfigChanges(unchanged=2)
    assert changes.empty


@pytest.mark.parametrize("fields", [
    {"idle_timeout": "1m"}, {"keep_warm": True}, {"max_connections": 4},
    {"queue": {"max": 5}}, {"timeouts": {"connect": "1s"}}, {"startup": {"attempts": 3}},
    {"activity": {"ignore": {"paths": ["/health"]}}}, {"limits": {"max_body_size": "1KiB"}},
    {"health": {"interval": "5s"}}, {"auth": "none"}, {"hosts": ["a.example.net"]},
    {"preserve_host": True}, {"waiting_page": False},
])
def test_a_policy_field_updates_the_backend_in_place(fields):
    new = parse_config({"services": {"a": svc(9001, **fields), "b": svc(9002)}}, env={})
    changes = diff_configs(config(), new)
    assert changes == ConfigChanges(updated={"a": list(fields)}, unchanged=1)


@pytest.mark.parametrize("fields", [
    {"upstream": "http://127.0.0.1:9100"},
    {"launcher": {"process": {"command": ["serve", "other"]}}},
    {"readiness": {"http": "/ready"}},
    {"machine": "gpu"},
    {"fallbacks": [{"machine": "gpu", "upstream": "http://gpu:1",
                    "launcher": {"process": {"command": ["x"]}}}]},
])
def test_a_launch_field_restarts_the_backend(fields):
    new = parse_config({"machines": {"gpu": {}},
                        "services": {"a": {**svc(9001), **fields}, "b": svc(9002)}}, env={})
    changes = diff_configs(config(machines={"gpu": {}}), new)
    assert changes == ConfigChanges(restarted={"a": list(fields)}, unchanged=1)


def test_a_restarted_backend_lists_its_policy_fields_too():
    new = parse_config({"services": {"a": svc(9005, idle_timeout="1m"), "b": svc(9002)}},
                       env={})
    assert diff_configs(config(), new).restarted == {"a": ["upstream", "launcher",
                                                           "idle_timeout"]}


def test_added_and_removed_backends_are_listed_by_id():
    new = parse_config({"services": {"a": svc(9001), "c": svc(9003)}}, env={})
    changes = diff_configs(config(), new)
    assert (changes.added, changes.removed, changes.unchanged) == (["c"], ["b"], 1)


def test_backends_of_a_service_are_compared_one_by_one_and_its_strategy_as_the_service():
    def duo(strategy: str, b_port: int) -> Config:
        return parse_config({"services": {"duo": {
            **svc(9001), "strategy": {"name": strategy},
            "backends": {"a": {}, "b": {"upstream": f"http://127.0.0.1:{b_port}"}}}}}, env={})

    changes = diff_configs(duo("round_robin", 9002), duo("least_busy", 9003))
    assert changes == ConfigChanges(restarted={"duo@b": ["upstream"]},
                                    updated={"duo": ["strategy"]}, unchanged=1)


def test_top_level_changes_are_listed_and_listen_data_dir_and_log_level_need_a_restart():
    old = config()
    new = config(listen="127.0.0.1:9999", data_dir="/tmp/elsewhere", log_level="debug",
                 grace_period="3s", auth={"enabled": True}, allowed_hosts=["box.lan"])
    assert diff_configs(old, new).top_level == ["listen", "data_dir", "grace_period",
                                                "log_level", "auth", "allowed_hosts"]
    assert restart_fields(old, new) == ["listen", "data_dir", "log_level"]
    assert restart_fields(old, config(grace_period="3s")) == []


def test_a_new_semaphore_connection_restarts_the_backends_it_runs():
    def with_semaphore(url: str) -> Config:
        return parse_config({
            "semaphore": {"url": url, "token": "t", "project": 1},
            "services": {"remote": {**svc(9001), "launcher": {"semaphore": {
                "start_template": "start", "stop_template": "stop"}}},
                "local": svc(9002)}}, env={})

    changes = diff_configs(with_semaphore("http://sem-a:3000"),
                           with_semaphore("http://sem-b:3000"))
    assert changes.top_level == ["semaphore"]
    assert changes.restarted == {"remote": ["semaphore"]}
    assert changes.unchanged == 1


def test_a_result_shows_as_json_with_every_error_path():
    from hestia.errors import ConfigInvalid

    ok = ReloadResult(True, "/etc/hestia.yml", ConfigChanges(added=["c"], unchanged=2), at=0)
    assert ok.as_dict() == {
        "ok": True, "at": "1970-01-01T00:00:00.000Z", "source": "/etc/hestia.yml",
        "changes": {"added": ["c"], "removed": [], "restarted": {}, "updated": {},
                    "unchanged": 2, "topLevel": []},
        "error": None, "detail": None, "errors": []}
    failed = ReloadResult(False, "/etc/hestia.yml", error=ConfigInvalid("2 errors"),
                          errors=[("services.a.queue.max", "must be ≥ 1"), ("", "bad")])
    assert failed.as_dict()["errors"] == [
        {"path": "services.a.queue.max", "message": "must be ≥ 1"}, {"path": "", "message": "bad"}]
    assert failed.as_dict()["error"] == "config_invalid"


def test_a_reloads_auth_gate_keeps_the_failed_logins_counted_so_far(tmp_path):
    def config(idle: str) -> Config:
        return parse_config({"auth": {"enabled": True}, "data_dir": str(tmp_path),
                             "services": {"up": {
                                 "upstream": "http://127.0.0.1:9", "idle_timeout": idle,
                                 "launcher": {"process": {"command": ["unused"]}}}}}, env={})

    store = Store(tmp_path / "hestia.db")
    try:
        front = Front()
        front.app = object()
        first = config("1m")
        front.configure(first, store, Addressing.from_config(first))
        before = front.serving
        after = front.made_for(config("2m"), store, Addressing.from_config(first))
        assert after is not before
        assert after.login.backoff is before.login.backoff
        assert after.sessions is before.sessions
    finally:
        store.close()
