"""docs/examples/semaphore/: every file is valid YAML; the playbooks are plays of the shape the
README describes; the Hestia configurations load; every template they name has its playbook
and its row in the README's table of template settings. (`ansible-playbook --syntax-check` is
not run here: the suite does not install Ansible; the README says how it was checked.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hestia.config import Config, load_config

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "docs" / "examples" / "semaphore"
FILES = sorted(EXAMPLES.glob("*.yml"))
README = (EXAMPLES / "README.md").read_text()


def parsed(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


PLAYBOOKS = [p for p in FILES if isinstance(parsed(p), list)]
CONFIGS = [p for p in FILES if isinstance(parsed(p), dict)]


def config(path: Path) -> Config:
    return load_config(path, env={"SEMAPHORE_API_TOKEN": "token", "HOME": "/home/someone"})


def templates(path: Path) -> list[tuple[str, str, str | None]]:
    """(machine, template, limit) for each template a configuration's machines name."""
    found = []
    for machine_id, machine in config(path).machines.items():
        launcher = machine.semaphore
        assert launcher is not None
        for template in (launcher.start_template, launcher.stop_template):
            assert isinstance(template, str)
            found.append((machine_id, template, launcher.limit))
    return found


def test_the_examples_are_playbooks_and_configurations() -> None:
    assert {p.name for p in PLAYBOOKS} == {"start-service.yml", "stop-service.yml",
                                           "start-vm.yml", "stop-vm.yml"}
    assert {p.name for p in CONFIGS} == {"hestia.yml", "cloud-vm.yml"}


@pytest.mark.parametrize("path", PLAYBOOKS, ids=lambda p: p.name)
def test_each_playbook_is_a_play_with_named_tasks_each_calling_one_module(path: Path) -> None:
    [play] = parsed(path)
    assert {"name", "hosts", "tasks"} <= set(play)
    for task in play["tasks"]:
        modules = set(task) - {"name", "when", "register"}
        assert task["name"] and len(modules) == 1, task
        assert next(iter(modules)).count(".") == 2, task  # fully qualified: ansible.builtin.x


@pytest.mark.parametrize("path", PLAYBOOKS, ids=lambda p: p.name)
def test_each_playbook_is_listed_in_the_readme(path: Path) -> None:
    assert f"[{path.name}]({path.name})" in README


def test_the_vm_playbooks_run_on_semaphores_own_host_and_power_the_instance() -> None:
    for name, state in (("start-vm.yml", "started"), ("stop-vm.yml", "stopped")):
        [play] = parsed(EXAMPLES / name)
        assert (play["hosts"], play["connection"]) == ("localhost", "local")
        [power] = [t["amazon.aws.ec2_instance"] for t in play["tasks"]
                   if "amazon.aws.ec2_instance" in t]
        assert power["state"] == state and power["wait"] is True
        assert power["instance_ids"] == ["{{ EC2_INSTANCE_ID }}"]


def test_the_systemd_playbooks_start_and_stop_the_services_unit_over_ssh() -> None:
    for name, state in (("start-service.yml", "started"), ("stop-service.yml", "stopped")):
        [play] = parsed(EXAMPLES / name)
        assert play["hosts"] == "all" and "connection" not in play  # the inventory's hosts
        [unit] = [t["ansible.builtin.systemd"] for t in play["tasks"]
                  if "ansible.builtin.systemd" in t]
        assert unit == {"name": "{{ HESTIA_SERVICE }}", "state": state}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_each_configuration_loads_and_its_templates_have_playbooks_and_settings(
        path: Path) -> None:
    for machine_id, template, limit in templates(path):
        assert (EXAMPLES / f"{template}.yml").is_file()
        [row] = [line for line in README.splitlines() if line.startswith(f"| `{template}` |")]
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1] == f"`{template}.yml`"
        assert f"machines.{machine_id}.semaphore." in cells[5]
        # A template a limit is sent to must honour it ("allow override limit").
        assert cells[4] == ("**on**" if limit else "not needed (no limit)")


def test_the_vm_configuration_names_the_instance_the_playbooks_read() -> None:
    [machine] = config(EXAMPLES / "cloud-vm.yml").machines.values()
    assert machine.semaphore is not None
    assert set(machine.semaphore.environment) == {"EC2_INSTANCE_ID", "EC2_REGION"}
