"""The `hestia` command: `serve`, `check`, `keys`, and (cli_remote.py) `status`, `start`, `stop`,
`reload`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

import trio

from .cli_remote import add_commands, table
from .config import (
    Config,
    RouteConfig,
    StrategyCheck,
    load_config,
    parse_config,
    upstream_warnings,
)
from .defaults import DEMO_CONFIG
from .errors import ConfigError
from .gateway import DB_NAME, run
from .http.auth import SCOPES, hash_key, new_key
from .http.hypercorn_fixes import HypercornChanged
from .observability import configure_logging
from .routing.router import load_registry, strategy_errors
from .semaphore.hub import SemaphoreHub
from .store import Store, StoreError

__all__ = ["main"]


def _load(path: str | None,
          check_strategies: StrategyCheck | None = None) -> tuple[Config, str]:
    path = path or os.environ.get("HESTIA_CONFIG")
    if path:
        return load_config(path, check_strategies=check_strategies), path
    return parse_config(DEMO_CONFIG, source="built-in demo configuration",
                        check_strategies=check_strategies), "built-in demo"


def _serve(args: argparse.Namespace) -> int:
    config, source = _load(args.config)
    if args.listen:
        # Checked as the file's `listen` would be, then put in place of it.
        parse_config({"listen": args.listen}, env={}, source=f"--listen {args.listen}")
        config = config.model_copy(update={"listen": args.listen})
    configure_logging(config.log_level, fmt=args.log_format)
    if source == "built-in demo":
        host = config.listen
        print(f"hestia: no configuration file given; serving the built-in demo on http://{host}\n"
              f"  try:  curl http://{host}/services/demo/\n"
              f"  then: curl http://{host}/v1/services", file=sys.stderr, flush=True)
    status = 0
    try:
        trio.run(run, config)
    except* OSError as group:
        # Binding the listen address is the usual culprit: say so plainly, no traceback.
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        assert isinstance(first, OSError)
        print(f"hestia: cannot serve on {config.listen}: {first.strerror or first}",
              file=sys.stderr)
        status = 1
    except* (StoreError, HypercornChanged) as group:
        print(f"hestia: {group.exceptions[0]}", file=sys.stderr)
        status = 1
    return status


def _check(args: argparse.Namespace) -> int:
    config, source = _load(args.config, _strategy_errors)
    note = ""
    if config.semaphore is not None and config.semaphore_launchers():
        errors, unreachable = trio.run(_check_semaphore, config)
        if errors:
            raise ConfigError(errors, f"{source} (checked against Semaphore)")
        note = ("; Semaphore template names checked" if unreachable is None else
                f"; template names NOT checked: {unreachable}")
    names = ", ".join(config.services) or "none"
    print(f"{source}: ok ({len(config.services)} service(s): {names}){note}")
    for path, warning in upstream_warnings(config):
        print(f"  warning: {path}: {warning}")
    return 0


def _strategy_errors(directory: Path,
                     routes: Mapping[str, RouteConfig]) -> list[tuple[str, str]]:
    """Each strategy made once, as the gateway will, with the plugins in `directory`."""
    try:
        registry = load_registry(directory)
    except ConfigError as exc:
        return exc.errors
    return strategy_errors(routes, registry)


async def _check_semaphore(config: Config) -> tuple[list[tuple[str, str]], str | None]:
    hub = SemaphoreHub(config)
    try:
        return await hub.check()
    finally:
        await hub.aclose()


def _store(config: Config) -> Store:
    return Store(config.data_dir / DB_NAME)


def _keys_create(args: argparse.Namespace) -> int:
    config, _ = _load(args.config)
    store = _store(config)
    key = new_key()
    try:
        store.add_key(args.name, args.scope, hash_key(key), key[:12])
    except StoreError as exc:
        print(f"hestia: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    note = "" if config.auth.enabled else " (auth.enabled is off: keys are not checked yet)"
    print(f"created key {args.name!r} with scope {args.scope}{note}.\n"
          "It is shown once, now; Hestia keeps only its hash:", file=sys.stderr)
    print(key)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    config, _ = _load(args.config)
    store = _store(config)
    try:
        rows = store.keys()
    finally:
        store.close()
    print(table(("NAME", "SCOPE", "PREFIX", "CREATED", "LAST USED", "STATUS"),
                [(row["name"], row["scope"], row["prefix"], _when(row["created_at"]),
                  _when(row["last_used_at"]),
                  "revoked " + _when(row["revoked_at"]) if row["revoked_at"] else "active")
                 for row in rows]))
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    config, _ = _load(args.config)
    store = _store(config)
    try:
        revoked = store.revoke_key(args.name)
    finally:
        store.close()
    if not revoked:
        print(f"hestia: no active key named {args.name!r}", file=sys.stderr)
        return 1
    print(f"revoked key {args.name!r}")
    return 0


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _one_line(error: ConfigError) -> str:
    """A single error reads on one line (`file: path: message`); several are listed."""
    if len(error.errors) != 1:
        return str(error)
    path, message = error.errors[0]
    return f"{error.source}: {path}: {message}" if path else f"{error.source}: {message}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="hestia", description="A personal on-demand service gateway.")
    parser.add_argument("--version", action="version", version=f"hestia {version('hestia')}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("-c", "--config", help="YAML configuration file "
                       "(default: $HESTIA_CONFIG, else the built-in demo)")
    serve.add_argument("--listen", help="host:port to serve on, overriding the configuration")
    serve.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    serve.set_defaults(handler=_serve)

    check = commands.add_parser("check", help="validate a configuration and list every error")
    check.add_argument("-c", "--config", help="YAML configuration file")
    check.set_defaults(handler=_check)

    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key; prints it once")
    create.add_argument("name")
    create.add_argument("--scope", choices=SCOPES, default="admin")
    create.add_argument("-c", "--config", help="YAML configuration file")
    create.set_defaults(handler=_keys_create)
    listing = key_commands.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("-c", "--config", help="YAML configuration file")
    listing.set_defaults(handler=_keys_list)
    revoke = key_commands.add_parser("revoke", help="revoke a key")
    revoke.add_argument("name")
    revoke.add_argument("-c", "--config", help="YAML configuration file")
    revoke.set_defaults(handler=_keys_revoke)

    add_commands(commands, _load)

    args = parser.parse_args(argv)
    if args.handler is not _serve:
        # Results go to stdout, logs (a strategy plugin loaded, a migration) to stderr; `serve`
        # sets up its own from the configuration.
        configure_logging()
    try:
        status = args.handler(args)
    except ConfigError as exc:
        print(f"hestia: invalid configuration {_one_line(exc)}", file=sys.stderr)
        status = 1
    except StoreError as exc:
        print(f"hestia: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        status = 130
    sys.exit(status)
