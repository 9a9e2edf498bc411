"""What a template says about how its Semaphore will treat a task, read before one is sent.

Semaphore's releases differ in ways that matter to a gateway (CONTRACT §8, the table in
docs/semaphore.md). Rather than parse `/api/info`'s version (builds and forks name theirs
freely), Hestia reads the template itself (`GET …/templates/{id}`; the list leaves fields
null), whose JSON shows what the server does:

- `task_params` present (2.13 and later): a task's `limit` is applied only when
  `task_params.allow_override_limit` is set, and dropped without a word otherwise. A playbook
  with `hosts: all` would then start or stop every host, so Hestia refuses the task instead.
- `allow_any_vars_in_task` present (upstream PR #4108): unless it is set, a task variable that
  is not one of the template's `survey_vars` is refused (400 "variable X is not declared").
  Hestia says so before sending the task, naming the variables and both ways out.

`problems` is what the launcher checks before each task and `hestia check` reports per launcher.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..launch_config import SemaphoreLauncherConfig

__all__ = ["HESTIA_NAMES", "TERRAFORM_APPS", "Problem", "describe", "problems",
           "terraform_hint", "variable_names", "variables"]

TERRAFORM_APPS = frozenset({"terraform", "tofu"})
# The names of `LaunchContext.environment` (this package knows nothing of launchers; a test
# holds the two together).
HESTIA_NAMES = ("HESTIA_SERVICE", "HESTIA_BACKEND", "HESTIA_MACHINE", "HESTIA_UPSTREAM",
                "HESTIA_PORT", "HESTIA_ACTION")


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a template will not run a task as Hestia means it. `field` is the launcher's setting
    to point at (None: the template reference)."""

    reason: str
    message: str
    field: str | None = None


def variables(config: SemaphoreLauncherConfig, hestia: Mapping[str, str]) -> dict[str, Any]:
    """The variables a task gets (its `environment`), as `send_variables` chooses: `hestia` is
    the backend's `HESTIA_*` ones (`LaunchContext.environment`), `HESTIA_LIMIT` is added."""
    if config.send_variables == "none":
        return {}
    if config.send_variables == "configured":
        return dict(config.environment)
    own: dict[str, Any] = dict(hestia)
    if config.limit is not None:
        own["HESTIA_LIMIT"] = config.limit
    return {**config.environment, **own}


def variable_names(config: SemaphoreLauncherConfig) -> list[str]:
    """The names `variables` gives, whatever the backend (for `hestia check`)."""
    return list(variables(config, dict.fromkeys(HESTIA_NAMES, "")))


def describe(template: Mapping[str, Any]) -> str:
    return f"Semaphore template {template.get('name')!r} (id {template.get('id')})"


def problems(template: Mapping[str, Any], config: SemaphoreLauncherConfig,
             names: Iterable[str]) -> list[Problem]:
    """What would go wrong sending a task with variables `names` from launcher `config` to
    `template` (a template JSON read by id)."""
    found: list[Problem] = []
    what = describe(template)
    if config.limit is not None and "task_params" in template and \
            not (template.get("task_params") or {}).get("allow_override_limit"):
        found.append(Problem(
            "limit_ignored",
            f"{what} would ignore the launcher's limit {config.limit!r}: this Semaphore "
            "(2.13 or later) drops a task's limit unless the template allows it, and the "
            "playbook would run on every host of the inventory. Turn on \"Allow override "
            "limit\" (task_params.allow_override_limit) in the template, or remove `limit`",
            "limit"))
    if "allow_any_vars_in_task" in template and not template.get("allow_any_vars_in_task"):
        declared = {v.get("name") for v in template.get("survey_vars") or []
                    if isinstance(v, Mapping)}
        undeclared = [name for name in names if name not in declared]
        if undeclared:
            found.append(Problem(
                "undeclared_variables",
                f"{what} refuses task variables that are not its survey variables, and "
                f"Hestia would send {', '.join(undeclared)}. Declare them as survey "
                "variables of the template, or turn on \"Allow any variables in task\" "
                "(allow_any_vars_in_task), or send fewer (`send_variables`)"))
    return found


def terraform_hint(template: Mapping[str, Any], config: SemaphoreLauncherConfig) -> str:
    """Said after a failed task of a Terraform/OpenTofu template that got variables."""
    if template.get("app") not in TERRAFORM_APPS or config.send_variables == "none":
        return ""
    return (f" ({template.get('app')} gets each task variable as -var and fails for one its "
            "module does not declare: declare the variables Hestia sends (HESTIA_* and "
            "`environment`) in the module, or set `send_variables: configured` or `none` on "
            "the launcher)")
