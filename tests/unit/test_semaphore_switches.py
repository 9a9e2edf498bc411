"""The seed's environment switches: `<SERVICE>_SEMAPHORE_ENABLED`, `<SERVICE>_SEMAPHORE_MACHINE_ID`
and `SEMAPHORE_BASE_URL` as aliases of the configuration (docs/semaphore.md)."""

from __future__ import annotations

from typing import Any

import pytest

from hestia.config import parse_config
from hestia.errors import ConfigError

TEMPLATES = {"start_template": "start ollama", "stop_template": "stop ollama"}


def raw(**service: Any) -> dict[str, Any]:
    return {"semaphore": {"project": 1},
            "machines": {"aws-gpu-instance": {"semaphore": TEMPLATES}, "plain": {}},
            "services": {"myservice": {"upstream": "http://127.0.0.1:11434",
                                       "launcher": {"process": {"command": ["ollama", "serve"]}},
                                       **service}}}


SEED = {"MYSERVICE_SEMAPHORE_ENABLED": "true",
        "MYSERVICE_SEMAPHORE_MACHINE_ID": "aws-gpu-instance",
        "SEMAPHORE_BASE_URL": "http://semaphore:3000", "SEMAPHORE_API_TOKEN": "t" * 44}


def test_the_seed_switches_put_the_service_on_the_machine_and_its_templates():
    config = parse_config(raw(), env=SEED)
    service = config.services["myservice"]
    assert service.machine == "aws-gpu-instance"
    assert service.launcher.kind == "semaphore"
    assert service.launcher.semaphore == config.machines["aws-gpu-instance"].semaphore
    assert config.semaphore is not None and config.semaphore.url == "http://semaphore:3000"
    assert [path for path, _ in config.semaphore_launchers()] == [
        "machines.aws-gpu-instance.semaphore", "services.myservice.launcher.semaphore"]


def test_enabled_alone_uses_the_files_machine_and_false_changes_nothing():
    on = parse_config(raw(machine="aws-gpu-instance"),
                      env={"MYSERVICE_SEMAPHORE_ENABLED": "Yes", "SEMAPHORE_BASE_URL": "http://s",
                           "SEMAPHORE_API_TOKEN": "t" * 44})
    assert on.services["myservice"].machine == "aws-gpu-instance"
    assert on.services["myservice"].launcher.kind == "semaphore"
    off = parse_config(raw(), env={**SEED, "MYSERVICE_SEMAPHORE_ENABLED": "false"})
    assert off.services["myservice"].machine == "local"
    assert off.services["myservice"].launcher.kind == "process"


@pytest.mark.parametrize(("env", "on_gpu", "error"), [
    ({"MYSERVICE_SEMAPHORE_ENABLED": "maybe"}, False,
     ("MYSERVICE_SEMAPHORE_ENABLED", "not a boolean: 'maybe' (true or false)")),
    ({"MYSERVICE_SEMAPHORE_ENABLED": "true", "MYSERVICE_SEMAPHORE_MACHINE_ID": "aws-gpu"}, False,
     ("MYSERVICE_SEMAPHORE_MACHINE_ID",
      "'aws-gpu' is no machine with Semaphore templates (declare it under machines with a "
      "`semaphore` block; machines with templates: aws-gpu-instance)")),
    ({"MYSERVICE_SEMAPHORE_ENABLED": "true", "MYSERVICE_SEMAPHORE_MACHINE_ID": "plain"}, False,
     ("MYSERVICE_SEMAPHORE_MACHINE_ID",
      "'plain' is no machine with Semaphore templates (declare it under machines with a "
      "`semaphore` block; machines with templates: aws-gpu-instance)")),
    ({"MYSERVICE_SEMAPHORE_ENABLED": "true"}, False,
     ("MYSERVICE_SEMAPHORE_ENABLED",
      "set MYSERVICE_SEMAPHORE_MACHINE_ID to the machine whose Semaphore templates start "
      "myservice (machines with templates: aws-gpu-instance)")),
    ({"MYSERVICE_SEMAPHORE_MACHINE_ID": "aws-gpu-instance"}, False,
     ("MYSERVICE_SEMAPHORE_MACHINE_ID",
      "has no effect without MYSERVICE_SEMAPHORE_ENABLED=true")),
    ({"MYSERVICE_SEMAPHORE_ENABLED": "false"}, True,
     ("MYSERVICE_SEMAPHORE_ENABLED",
      "false, but the file starts myservice through Semaphore; change the file instead")),
])
def test_a_bad_switch_is_a_configuration_error_naming_the_variable(env, on_gpu, error):
    document = raw()
    if on_gpu:  # the file itself puts the service on the machine's templates
        service = document["services"]["myservice"]
        del service["launcher"]
        service["machine"] = "aws-gpu-instance"
    with pytest.raises(ConfigError) as caught:
        parse_config(document, env={"SEMAPHORE_BASE_URL": "http://s",
                                    "SEMAPHORE_API_TOKEN": "t" * 44, **env})
    assert caught.value.errors == [error]


def test_switches_of_services_the_file_does_not_declare_are_ignored():
    config = parse_config(raw(), env={**SEED, "OTHER_SEMAPHORE_ENABLED": "banana"})
    assert set(config.services) == {"myservice"}
