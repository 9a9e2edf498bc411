"""The steps of loading a configuration that work on its data rather than on the models.

Split from `config.py` (which runs them, see its docstring) to keep it readable. Nothing here
imports the models: each step works on the YAML data, or takes the model it needs.

- `expand_backends`, `machine_launchers`: the data as the models will see it (after
  config_env.py's steps, which read the environment).

- `read_yaml`: the file's data; a file that is not UTF-8, not YAML, or has a mapping with the
  same key twice is refused with one error naming the place (byte offset, or lines).
- `reference_errors`: service ids, and the machines, groups and Semaphore settings services
  refer to. They are checked on the data rather than in a validator of `Config`, because such a
  validator runs only when everything else is valid: an invalid readiness path would hide an
  undeclared group.
- `unknown_key`: what to say about a key no model knows: the valid ones, and the closest.
- `upstream_warnings`: services that share an upstream address without saying so.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Protocol, get_args, get_origin

import yaml
from pydantic import BaseModel

from .errors import ConfigError

__all__ = ["BACKEND_SEPARATOR", "SERVICE_ID", "SERVICE_ONLY", "backend_path", "expand_backends",
           "format_loc", "machine_launchers", "read_yaml", "reference_errors", "submodel",
           "unknown_key", "upstream_warnings"]

SERVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
BACKEND_SEPARATOR = "@"
_BACKEND_ID = re.compile(r"services\.([A-Za-z0-9][A-Za-z0-9_.-]*)@([A-Za-z0-9][A-Za-z0-9_.-]*)")
_MERGE = "tag:yaml.org,2002:merge"


def backend_path(text: str) -> str:
    """`services.llm@llama.upstream` → `services.llm.backends.llama.upstream`: errors name
    the place in the file, not the id the expansion made."""
    return _BACKEND_ID.sub(r"services.\1.backends.\2", text)


# --- the steps of loading that change the data ---------------------------------------------

SERVICE_ONLY = ("backends", "strategy")


def expand_backends(data: dict[str, Any], errors: list[tuple[str, str]]) -> None:
    """Turn each service with `backends` into one entry per backend, `<service>@<backend>`, the
    service's own fields being the defaults of each; record every service's route."""
    if "routes" in data:
        errors.append(("routes", "computed from services; not a configuration key"))
        del data["routes"]
    services = data.get("services")
    if not isinstance(services, dict):
        return
    expanded: dict[str, Any] = {}
    routes: dict[str, Any] = {}
    for sid, service in services.items():
        if not isinstance(service, dict) or "backends" not in service:
            if isinstance(service, dict) and "strategy" in service:
                errors.append((f"services.{sid}.strategy", "a strategy needs `backends`"))
                service = {k: v for k, v in service.items() if k != "strategy"}
            expanded[sid] = service
            routes[str(sid)] = {"backends": [str(sid)]}
            continue
        backends = service["backends"]
        if not isinstance(backends, dict) or not backends:
            errors.append((f"services.{sid}.backends",
                           "give one or more backends: {name: {upstream, launcher, …}}"))
            continue
        defaults = {k: v for k, v in service.items() if k not in SERVICE_ONLY}
        ids = []
        for name, backend in backends.items():
            if not isinstance(backend, dict) or not SERVICE_ID.match(str(name)):
                errors.append((f"services.{sid}.backends.{name}", "a backend is a mapping, "
                               "named with letters, digits, '_', '.', '-'"))
                continue
            ids.append(f"{sid}{BACKEND_SEPARATOR}{name}")
            expanded[ids[-1]] = {**copy.deepcopy(defaults), **backend}
        routes[str(sid)] = {"backends": ids, "strategy": service.get("strategy") or {}}
    data["services"] = expanded
    data["routes"] = routes


def machine_launchers(data: dict[str, Any]) -> None:
    """A service or fallback without `launcher` on a machine with `semaphore` uses that."""
    machines = data.get("machines")
    services = data.get("services")
    if not isinstance(machines, dict) or not isinstance(services, dict):
        return
    shared = {mid: m["semaphore"] for mid, m in machines.items()
              if isinstance(m, dict) and m.get("semaphore") is not None}
    for service in services.values():
        if not isinstance(service, dict):
            continue
        fallbacks = service.get("fallbacks")
        for node in [service, *(fallbacks if isinstance(fallbacks, list) else [])]:
            if isinstance(node, dict) and "launcher" not in node and \
                    node.get("machine", "local") in shared:
                node["launcher"] = {"semaphore": shared[node["machine"]]}


def format_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


# --- the file ---------------------------------------------------------------------------------

class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a mapping with the same key twice is an error. YAML
    leaves it undefined and PyYAML keeps the second: the setting a reader sees first would
    silently not be the one in force. Keys brought in by a merge (`<<: *defaults`) may be
    overridden, as YAML means them to be."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[tuple[str, Any], yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault((type(key).__name__, key), key_node.start_mark)
            except TypeError:
                continue  # an unhashable key: the base class refuses it
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first.line + 1})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, source: str) -> Any:
    """The data of the YAML file at `path`. Raises `ConfigError` with one error when it cannot
    be read, is not UTF-8 (naming the byte offset), is not YAML (line and column), or holds a
    mapping with a key twice (both lines)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([("", f"cannot read: {exc.strerror or exc}")], source) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError([("", f"not UTF-8: byte 0x{data[exc.start]:02x} at byte offset "
                                f"{exc.start} (line {line}) cannot be decoded; save the file "
                                "as UTF-8")], source) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([("", f"invalid YAML: {where}{problem}")], source) from None


# --- references between parts of the file ----------------------------------------------------

def reference_errors(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every invalid service id, unknown machine or group, and missing Semaphore setting, in
    the data as the models will see it (interpolated, overridden, backends expanded). A value
    of the wrong type is skipped here: its model reports it."""
    errors: list[tuple[str, str]] = []
    services = _mapping(data.get("services"))
    bad = [k for k in services if not all(SERVICE_ID.match(part) for part in
                                          str(k).split(BACKEND_SEPARATOR, 1))]
    if bad:
        errors.append(("services", f"invalid service id(s) {bad}: use letters, digits, '_', "
                                   "'.', '-'"))
    machines, groups = data.get("machines", {}), data.get("groups", {})
    for sid, service in services.items():
        if not isinstance(service, Mapping):
            continue
        fallbacks = service.get("fallbacks")
        places = [("", service)] + [(f"fallbacks[{i}].", f) for i, f in enumerate(
            fallbacks if isinstance(fallbacks, list) else []) if isinstance(f, Mapping)]
        for where, place in places:
            machine = place.get("machine", "local")
            if isinstance(machines, Mapping) and isinstance(machine, str) and \
                    machine != "local" and machine not in machines:
                errors.append((backend_path(f"services.{sid}.{where}machine"),
                               f"unknown machine {machine!r} (declare it under machines)"))
        group = service.get("group")
        if isinstance(groups, Mapping) and isinstance(group, str) and group not in groups:
            errors.append((backend_path(f"services.{sid}.group"),
                           f"unknown group {group!r} (declare it under groups)"))
    return errors + _dependency_errors(data, services) + _semaphore_errors(data, services)


def _dependency_errors(data: Mapping[str, Any],
                       services: Mapping[Any, Any]) -> list[tuple[str, str]]:
    """`depends_on`: every name a backend of this configuration (a service with `backends`
    is named by one of them, `llm@big`), no cycle, and no chain that its exclusive group could
    never hold at once."""
    errors: list[tuple[str, str]] = []
    graph: dict[str, list[str]] = {}
    for sid, service in services.items():
        deps = service.get("depends_on") if isinstance(service, Mapping) else None
        if not isinstance(deps, list):
            continue  # absent, or the model reports its type
        graph[sid] = []
        for index, name in enumerate(deps):
            path = backend_path(f"services.{sid}.depends_on[{index}]")
            if not isinstance(name, str) or name in services:
                graph[sid] += [name] if isinstance(name, str) else []
                continue
            backends = sorted(str(k) for k in services
                              if str(k).startswith(f"{name}{BACKEND_SEPARATOR}"))
            if backends:
                errors.append((path, f"{name!r} has several backends: name one of "
                                     f"{', '.join(backends)}"))
                continue
            close = difflib.get_close_matches(name, [str(k) for k in services], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            errors.append((path, f"unknown service {name!r}{hint}"))
    reported: set[frozenset[str]] = set()
    for sid in graph:
        cycle = _cycle_from(sid, graph)
        if cycle is not None and frozenset(cycle) not in reported:
            reported.add(frozenset(cycle))
            errors.append((backend_path(f"services.{sid}.depends_on"),
                           f"dependency cycle: {' → '.join(cycle)}"))
    if not reported:
        errors += _group_errors(data, services, graph)
    return errors


def _cycle_from(start: str, graph: Mapping[str, list[str]]) -> list[str] | None:
    """A path of `depends_on` from `start` back to `start` (`a → b → a`), if there is one."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for dep in graph.get(node, []):
            if dep == start:
                return [*path, start]
            if dep not in seen:
                seen.add(dep)
                stack.append((dep, [*path, dep]))
    return None


def _group_errors(data: Mapping[str, Any], services: Mapping[Any, Any],
                  graph: Mapping[str, list[str]]) -> list[tuple[str, str]]:
    """A backend and the dependencies it keeps up, in one group that runs fewer at once: its
    start would wait for a slot its own dependencies hold."""
    groups = _mapping(data.get("groups"))
    errors: list[tuple[str, str]] = []
    for sid in graph:
        chain, todo = {sid}, list(graph[sid])
        while todo:
            dep = todo.pop()
            if dep not in chain:
                chain.add(dep)
                todo += graph.get(dep, [])
        by_group: dict[str, list[str]] = {}
        for member in sorted(chain):
            group = _mapping(services.get(member)).get("group")
            if isinstance(group, str):
                by_group.setdefault(group, []).append(member)
        for group, members in by_group.items():
            limit = _mapping(groups.get(group)).get("max_running", 1)
            if sid in members and isinstance(limit, int) and len(members) > limit:
                errors.append((backend_path(f"services.{sid}.depends_on"),
                               f"{', '.join(members)} run together but group {group!r} runs "
                               f"at most {limit} at once (raise its max_running, or move a "
                               "dependency out of it)"))
    return errors


def _semaphore_errors(data: Mapping[str, Any],
                      services: Mapping[str, Any]) -> list[tuple[str, str]]:
    launchers = [(f"machines.{mid}.semaphore", m["semaphore"])
                 for mid, m in _mapping(data.get("machines")).items()
                 if isinstance(m, Mapping) and m.get("semaphore") is not None]
    for sid, service in services.items():
        if not isinstance(service, Mapping):
            continue
        fallbacks = service.get("fallbacks")
        places = [("launcher", service)] + [(f"fallbacks[{i}].launcher", f) for i, f in
                                            enumerate(fallbacks if isinstance(fallbacks, list)
                                                      else [])]
        for where, place in places:
            launcher = place.get("launcher") if isinstance(place, Mapping) else None
            if isinstance(launcher, Mapping) and launcher.get("semaphore") is not None:
                launchers.append((backend_path(f"services.{sid}.{where}.semaphore"),
                                  launcher["semaphore"]))
    block = data.get("semaphore")
    if not launchers:
        return []
    if block is None:
        return [("semaphore", f"required by {launchers[0][0]} (give semaphore.url and a "
                              "token, or set SEMAPHORE_BASE_URL and SEMAPHORE_API_TOKEN)")]
    if not isinstance(block, Mapping) or block.get("project") is not None:
        return []
    return [(f"{path}.project", "no project (give it here or as semaphore.project)")
            for path, launcher in launchers
            if isinstance(launcher, Mapping) and launcher.get("project") is None]


def _mapping(value: Any) -> Mapping[Any, Any]:
    return value if isinstance(value, Mapping) else {}


# --- unknown keys -------------------------------------------------------------------------------

def submodel(annotation: Any) -> type[BaseModel] | None:
    """The model an annotation holds: `X`, `X | None`, `list[X]`, `dict[str, X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if get_origin(arg) is Annotated:  # a tagged union's member (`keep_warm`)
            arg = get_args(arg)[0]
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model that validates the mapping at `loc` (a pydantic error location)."""
    model: type[BaseModel] | None = root
    container = False  # the next item is a dict key or a list index
    for item in loc:
        if container:
            container = False
            continue
        field = model.model_fields.get(str(item)) if model is not None else None
        if field is None:
            return None
        model = submodel(field.annotation)
        container = get_origin(field.annotation) in (dict, list)
    return None if container else model


def unknown_key(root: type[BaseModel], loc: tuple[Any, ...],
                extra: Mapping[str, tuple[str, ...]]) -> str:
    """The message for the key `loc[-1]` that the model at `loc[:-1]` does not have: the
    closest valid key, and all of them. `extra` adds keys the loader removes before the models
    see them (by model name), and `routes` is never offered (it is computed)."""
    key = str(loc[-1])
    model = _model_at(root, loc[:-1])
    if model is None:
        return "unknown key"
    valid = [name for name in model.model_fields if name != "routes" or model is not root]
    valid += extra.get(model.__name__, ())
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    what = "launcher" if model.__name__ == "LauncherConfig" else "key"
    return f"unknown {what} {key!r}{hint}; valid: {', '.join(valid)}"


# --- warnings -------------------------------------------------------------------------------------

_SAME_HOST = {"localhost": "127.0.0.1"}


# What `upstream_warnings` reads of the models (config.py), which this module does not import.
class _Place(Protocol):  # a service, or a fallback of one
    @property
    def upstream_host(self) -> str: ...
    @property
    def upstream_port(self) -> int: ...


class _Service(_Place, Protocol):
    @property
    def fallbacks(self) -> Sequence[_Place]: ...
    @property
    def shared_upstream(self) -> bool: ...


class _Config(Protocol):
    @property
    def services(self) -> Mapping[str, _Service]: ...


def upstream_warnings(config: _Config) -> list[tuple[str, str]]:
    """`(path, message)` for each upstream address (host and port, primary or fallback) that
    several services use when not all of them say `shared_upstream: true`: whatever answers
    there serves them all, which is rarely meant (a copied block, a forgotten port)."""
    users: dict[tuple[str, int], list[tuple[str, str, bool]]] = {}
    for sid, service in config.services.items():
        places = [("upstream", service)] + [(f"fallbacks[{i}].upstream", f)
                                            for i, f in enumerate(service.fallbacks)]
        for where, place in places:
            host = place.upstream_host.lower()
            found = users.setdefault((_SAME_HOST.get(host, host), place.upstream_port), [])
            if all(other != sid for other, _, _ in found):
                found.append((sid, backend_path(f"services.{sid}.{where}"),
                              service.shared_upstream))
    warnings = []
    for (host, port), found in users.items():
        if len(found) > 1 and not all(shared for _, _, shared in found):
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            others = ", ".join(path for _, path, _ in found[1:])
            warnings.append((found[0][1], f"{address} is also the upstream of {others}: "
                             "whatever answers there serves them all; if that is meant, set "
                             "`shared_upstream: true` on each"))
    return warnings
