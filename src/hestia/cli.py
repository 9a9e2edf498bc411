"""The `hestia` command: `serve` and `check`."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import version

import trio

from .config import Config, load_config, parse_config
from .defaults import DEMO_CONFIG
from .errors import ConfigError
from .gateway import run
from .observability import configure_logging
from .semaphore.hub import SemaphoreHub

__all__ = ["main"]


def _load(path: str | None) -> tuple[Config, str]:
    path = path or os.environ.get("HESTIA_CONFIG")
    if path:
        return load_config(path), path
    return parse_config(DEMO_CONFIG, source="built-in demo configuration"), "built-in demo"


def _serve(args: argparse.Namespace) -> int:
    config, source = _load(args.config)
    if args.listen:
        config = parse_config({**config.model_dump(), "listen": args.listen},
                              env={}, source=f"{source} with --listen {args.listen}")
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
    return status


def _check(args: argparse.Namespace) -> int:
    config, source = _load(args.config)
    note = ""
    if config.semaphore is not None and config.semaphore_launchers():
        errors, unreachable = trio.run(_check_semaphore, config)
        if errors:
            raise ConfigError(errors, f"{source} (checked against Semaphore)")
        note = ("; Semaphore template names checked" if unreachable is None else
                f"; template names NOT checked: {unreachable}")
    names = ", ".join(config.services) or "none"
    print(f"{source}: ok ({len(config.services)} service(s): {names}){note}")
    return 0


async def _check_semaphore(config: Config) -> tuple[list[tuple[str, str]], str | None]:
    hub = SemaphoreHub(config)
    try:
        return await hub.check()
    finally:
        await hub.aclose()


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

    args = parser.parse_args(argv)
    try:
        status = args.handler(args)
    except ConfigError as exc:
        print(f"hestia: invalid configuration {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        status = 130
    sys.exit(status)
