"""The steps of loading a configuration that read the environment, on the data before the models
see it (`config.parse_config` runs them in this order):

- `semaphore_env`: `SEMAPHORE_BASE_URL`, `SEMAPHORE_API_TOKEN`, … fill the `semaphore`
  connection fields the file leaves out.
- `interpolate`: `${VAR}` and `${VAR:-default}` in every string value (never in keys).
- `semaphore_switches`: the seed's `<SERVICE>_SEMAPHORE_ENABLED` and
  `<SERVICE>_SEMAPHORE_MACHINE_ID`, which put a service on a machine and its Semaphore templates.

Each reports what is wrong as (path, message) in `errors`; a path naming a variable is the
variable's name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["interpolate", "semaphore_env", "semaphore_switches"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def interpolate(node: Any, env: Mapping[str, str], path: str,
                 errors: list[tuple[str, str]]) -> Any:
    if isinstance(node, dict):
        return {k: interpolate(v, env, _join(path, k), errors) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, f"{path}[{i}]", errors) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value is not None and (value != "" or default is None):
            return value
        if default is not None:
            return default  # as in the shell, `:-` also replaces an empty value
        errors.append((path, f"environment variable {name} is not set (use ${{{name}:-default}})"))
        return ""

    return _VAR.sub(replace, node)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


_SEMAPHORE_ENV = {"url": "SEMAPHORE_BASE_URL", "token": "SEMAPHORE_API_TOKEN",
                  "username": "SEMAPHORE_USERNAME", "password": "SEMAPHORE_PASSWORD"}


def semaphore_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Fill `semaphore`'s connection fields from `SEMAPHORE_*` variables the file does not set:
    only when the file has a `semaphore` block or a `semaphore` launcher, so that variables
    meant for other tools never make an unrelated configuration invalid."""
    block = raw.get("semaphore")
    if block is None and not _has_key(raw.get("machines"), "semaphore") and \
            not _has_key(raw.get("services"), "semaphore"):
        return raw
    if block is not None and not isinstance(block, dict):
        return raw  # the model reports it
    block = dict(block or {})
    for field_name, variable in _SEMAPHORE_ENV.items():
        if block.get(field_name) is None and env.get(variable):
            block[field_name] = env[variable]
    if not block:
        return raw
    return {**raw, "semaphore": block}


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def semaphore_switches(data: dict[str, Any], env: Mapping[str, str],
                       errors: list[tuple[str, str]]) -> None:
    """The original design's switches, as aliases of the configuration: with
    `<SERVICE>_SEMAPHORE_ENABLED=true` (and `<SERVICE>_SEMAPHORE_MACHINE_ID=<machine>`, or the
    file's `machine`), the service runs on that machine, started and stopped by the machine's
    `semaphore` templates (any `launcher` of its own is dropped). `false` changes nothing, but
    cannot undo a Semaphore machine the file gives. Errors name the variable."""
    services, machines = data.get("services"), data.get("machines")
    if not isinstance(services, dict):
        return
    machines = machines if isinstance(machines, dict) else {}
    with_templates = sorted(str(mid) for mid, m in machines.items()
                            if isinstance(m, dict) and m.get("semaphore") is not None)
    choices = ", ".join(with_templates) or "none is declared"
    for sid, service in services.items():
        prefix = re.sub(r"[^A-Za-z0-9]", "_", str(sid)).upper() + "_SEMAPHORE_"
        switch, machine_var = prefix + "ENABLED", prefix + "MACHINE_ID"
        raw, machine = env.get(switch), env.get(machine_var)
        if (raw is None and machine is None) or not isinstance(service, dict):
            continue
        enabled = None if raw is None else \
            True if raw.strip().lower() in _TRUE else False if raw.strip().lower() in _FALSE \
            else None
        if raw is not None and enabled is None:
            errors.append((switch, f"not a boolean: {raw!r} (true or false)"))
            continue
        if enabled is None:
            errors.append((machine_var, f"has no effect without {switch}=true"))
            continue
        here = machine if machine is not None else service.get("machine")
        if not enabled:
            launcher = service.get("launcher")
            if (isinstance(launcher, dict) and launcher.get("semaphore") is not None) or \
                    (launcher is None and service.get("machine") in with_templates):
                errors.append((switch, f"false, but the file starts {sid} through Semaphore; "
                                       "change the file instead"))
            continue
        if "backends" in service:
            errors.append((switch, f"{sid} has several backends: give each its `machine` "
                                   "in the file"))
        elif here is None or here == "local":
            errors.append((switch, f"set {machine_var} to the machine whose Semaphore "
                                   f"templates start {sid} (machines with templates: "
                                   f"{choices})"))
        elif here not in with_templates:
            errors.append((machine_var if machine is not None else f"services.{sid}.machine",
                           f"{here!r} is no machine with Semaphore templates (declare it under "
                           f"machines with a `semaphore` block; machines with templates: "
                           f"{choices})"))
        else:
            service["machine"] = here
            service.pop("launcher", None)  # machine_launchers gives it the machine's


def _has_key(node: Any, key: str) -> bool:
    if isinstance(node, dict):
        return key in node or any(_has_key(v, key) for v in node.values())
    if isinstance(node, list):
        return any(_has_key(v, key) for v in node)
    return False
