"""The CLI's commands for a running gateway, over its HTTP API: `status`, `start`, `stop`,
`reload`.

Which gateway: `--url`, else `$HESTIA_URL`, else the `listen` address of the configuration
(`-c`, else `$HESTIA_CONFIG`, else the built-in demo's). Which key: `$HESTIA_API_KEY`, else
the file `--key-file` (or `$HESTIA_KEY_FILE`) names, else the key the gateway of the
configuration wrote to `<data_dir>/cli.key` at its start. With `--url` that last one is used
only when `-c` is given too: a key of this machine is never sent to a URL it was not meant for.

Exit status: 0 when the gateway did what was asked or there was nothing to do (`start` of a
READY service, `stop` of a COLD one); 1 when it could not (with one line saying why, and every
error listed for an invalid configuration); 1 when no gateway answers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import httpx

from .config import Config, parse_config
from .config_data import read_yaml
from .errors import ConfigError
from .gateway import CLI_KEY_FILE

__all__ = ["add_commands", "table"]

Load = Callable[[str | None], tuple[Config, str]]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *,
          right: frozenset[int] = frozenset()) -> str:
    """Columns as wide as their widest cell, two spaces apart; `right`: the columns (by index)
    aligned right (numbers). The last column is not padded."""
    cells = [[str(c) for c in headers], *[["-" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


class Target:
    """Where the gateway is and the key to use; `request` exits with a message when no gateway
    answers."""

    def __init__(self, args: argparse.Namespace) -> None:
        # An explicit --url wins; an explicit -c wins over $HESTIA_URL (so that the admin key
        # of the configuration named is only ever sent to that configuration's gateway).
        url = args.url or (None if args.config else os.environ.get("HESTIA_URL"))
        config = _where(args.load, args.config) if args.config or not url else None
        if url is None:
            assert config is not None
            host, _, port = config.listen.rpartition(":")
            host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
            url = f"http://{host}:{port}"
        if not url.startswith(("http://", "https://")):
            raise SystemExit(f"hestia: --url {url}: must start with http:// or https://")
        self.url = url.rstrip("/")
        self.headers = {}
        key = os.environ.get("HESTIA_API_KEY") or _read_key(args, config)
        if key:
            self.headers["X-API-Key"] = key
        self.timeout = 30.0  # for an answer; `reload` waits longer

    def client(self, read: float | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers,
                            timeout=httpx.Timeout(10.0, read=read or self.timeout))

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            with self.client() as http:
                return http.request(method, path, **kwargs)
        except httpx.ReadTimeout:
            raise SystemExit(f"hestia: the gateway at {self.url} did not answer within "
                             f"{self.timeout:g}s; what was asked may still be under way "
                             "there") from None
        except httpx.TransportError as exc:
            raise SystemExit(self.unreachable(exc)) from None

    def unreachable(self, exc: Exception) -> str:
        return f"hestia: no gateway answers at {self.url}: {exc or type(exc).__name__}"


def _where(load: Load, path: str | None) -> Config:
    """The configuration `-c` names (or $HESTIA_CONFIG, or the demo), for its `listen` and
    `data_dir`. A file with errors elsewhere (one a reload is about to be refused for, by the
    gateway, which logs and answers every error) gives just those two, read as the gateway
    reads them."""
    try:
        return load(path)[0]
    except ConfigError:
        named = path or os.environ.get("HESTIA_CONFIG")
        if not named:
            raise
        raw = read_yaml(named, named)
        where = {k: raw[k] for k in ("listen", "data_dir") if isinstance(raw, dict) and k in raw}
        return parse_config(where, source=named)


def _read_key(args: argparse.Namespace, config: Config | None) -> str | None:
    named = args.key_file or os.environ.get("HESTIA_KEY_FILE")
    if named:
        try:
            with open(named) as f:
                return f.read().strip()
        except OSError as exc:
            raise SystemExit(f"hestia: cannot read the key file {named}: "
                             f"{exc.strerror or exc}") from None
    if config is None:
        return None
    try:
        return (config.data_dir / CLI_KEY_FILE).read_text().strip()
    except OSError:
        return None  # auth is off, or the gateway never ran: ask without a key


def _failed(response: httpx.Response, what: str) -> int:
    """One line for the error the gateway answered, then each listed error; exit status 1."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "detail" not in body:
        text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
        print(f"hestia: {what}: the gateway answered {response.status_code} {text}".rstrip(),
              file=sys.stderr)
        return 1
    hint = ("; give a key with $HESTIA_API_KEY or --key-file, or -c with the gateway's "
            "configuration" if response.status_code == 401 else "")
    print(f"hestia: {what}: {body['detail']} ({response.status_code} {body.get('error')}){hint}",
          file=sys.stderr)
    for error in body.get("errors") or []:
        if isinstance(error, dict):
            path, message = error.get("path"), error.get("message")
            print(f"  {path}: {message}" if path else f"  {message}", file=sys.stderr)
    return 1


# --- status ---------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    response = Target(args).request("GET", "/v1/services")
    if response.status_code != 200:
        return _failed(response, "status")
    if args.json:
        return _print_json(response)
    now = time.time()
    rows = [(s["serviceId"], s["state"], s["machineId"] or "-", s["inFlight"],
             s["queuePending"], _ago(s["lastUsed"], now), _note(s, now))
            for s in response.json()["services"]]
    print(table(("SERVICE", "STATE", "MACHINE", "IN FLIGHT", "HELD", "LAST USED", "NOTE"), rows,
                right=frozenset({3, 4})))
    return 0


def _seconds_since(iso: str | None, now: float) -> float | None:
    if not iso:
        return None
    return now - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                      ("m", 60, "s", 1)):
        if s >= size:
            rest = (s % size) // sub_size
            return f"{s // size}{unit}" + (f" {rest}{sub}" if rest else "")
    return f"{s}s"


def _ago(iso: str | None, now: float) -> str:
    since = _seconds_since(iso, now)
    return "never" if since is None else f"{_duration(since)} ago"


def _note(s: dict[str, Any], now: float) -> str:
    """What a person wants to know next about a service in this state."""
    state = s["state"]
    error = (s.get("lastError") or {}).get("detail") or ""
    error = error.splitlines()[0][:80] if error else ""
    if state == "READY":
        if s.get("keepWarm"):
            return "kept warm"
        idle, since = s.get("idleTimeoutS"), _seconds_since(s.get("lastUsed")
                                                            or s.get("readySince"), now)
        if not idle:
            return "no idle stop"
        if s["inFlight"] == 0 and since is not None:
            return f"idle stop in {_duration(max(0.0, idle - since))}"
        return ""
    if state == "STARTING" and s.get("estimatedWaitMs") is not None:
        return f"ready in about {_duration(s['estimatedWaitMs'] / 1000)}"
    if state == "FAILED":
        retry = s.get("cooldownRemainingS")
        return error + (f"; retry allowed in {_duration(retry)}" if retry else "")
    if state == "COLD" and s.get("failuresInARow") and error:
        return f"last start failed: {error}"
    return ""


# --- start, stop ------------------------------------------------------------------------------

# Per action: the states a 409 answers in which there is nothing to do, the one of those in
# which it is still being done (--wait waits for it), and the state it reaches.
_ACTIONS = {
    "start": ({"READY", "STARTING"}, "STARTING", "READY"),
    "stop": ({"COLD", "FAILED", "STOPPING"}, "STOPPING", "COLD"),
}


def _start_or_stop(args: argparse.Namespace) -> int:
    gateway = Target(args)
    service, action = args.service, args.action
    settled, moving, goal = _ACTIONS[action]
    path = f"/v1/services/{service}/{action}"
    if not args.wait:
        response = gateway.request("POST", path)
        return _answered(response, service, action, settled)
    # The events are followed before the start is asked for, so that none is missed.
    try:
        with gateway.client(read=min(args.timeout, 20.0)) as http, \
                http.stream("GET", "/v1/events", params={"service": service}) as stream:
            if stream.status_code != 200:
                stream.read()
                return _failed(stream, action)
            events = _sse(stream.iter_lines())
            next(events)  # the stream's opening comment: subscribed
            response = http.post(path)
            status = _answered(response, service, action, settled, quiet=True)
            if status != 0:
                return status
            state = response.json().get("state")
            if response.status_code == 409 and state != moving:
                print(f"{service}: already {state}")
                return 0
            return _wait(events, service, action, goal, time.monotonic() + args.timeout)
    except httpx.TimeoutException:
        print(f"hestia: {service}: not {goal} after {args.timeout:g}s; the gateway goes on "
              "with it", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        raise SystemExit(gateway.unreachable(exc)) from None


def _answered(response: httpx.Response, service: str, action: str, settled: set[str], *,
              quiet: bool = False) -> int:
    """0 when the gateway took the request (202) or there is nothing to do (409 in a settled
    state); 1 otherwise, said on stderr."""
    if response.status_code == 202:
        if not quiet:
            print(f"{service}: {response.json()['state']}")
        return 0
    if response.status_code == 409:
        state = response.json().get("state")
        if state in settled:
            if not quiet:
                print(f"{service}: already {state}")
            return 0
    return _failed(response, f"{action} {service}")


def _wait(events: Iterator[tuple[str, dict[str, Any]]], service: str, action: str, goal: str,
          deadline: float) -> int:
    for kind, data in events:  # a keep-alive comment every 15 s at the latest
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("deadline")
        if action == "start" and kind == "ready":
            took = data.get("duration_ms")
            print(f"{service}: READY" + (f" (started in {took / 1000:.1f}s on "
                                         f"{data.get('machine')})" if took is not None else ""))
            return 0
        if action == "start" and kind == "start_failed":
            print(f"hestia: start {service}: {data.get('detail')}", file=sys.stderr)
            return 1
        # A start ends with its `ready` event (after the state's), which says how long it took.
        if action == "stop" and kind == "state" and data.get("state") == goal:
            print(f"{service}: {goal}")
            return 0
    print(f"hestia: {service}: the gateway ended the event stream before {goal} "
          "(is it shutting down?)", file=sys.stderr)
    return 1


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """`(kind, data)` per server-sent event, and `("", {})` per comment (the opening one, and
    the keep-alives)."""
    kind, data = "", ""
    for line in lines:
        if line.startswith(":"):
            yield "", {}
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif not line and kind:
            yield kind, json.loads(data) if data else {}
            kind, data = "", ""


# --- reload ---------------------------------------------------------------------------------


def _reload(args: argparse.Namespace) -> int:
    target = Target(args)
    target.timeout = args.timeout
    response = target.request("POST", "/v1/reload")
    if response.status_code != 200:
        return _failed(response, "reload")
    if args.json:
        return _print_json(response)
    body = response.json()
    print("\n".join(_reload_summary(body)))
    return 0


def _print_json(response: httpx.Response) -> int:
    """`--json`: the API's answer as it is, one line ending in a newline."""
    sys.stdout.write(response.text if response.text.endswith("\n") else response.text + "\n")
    return 0


def _reload_summary(body: dict[str, Any]) -> list[str]:
    changes = body.get("changes") or {}
    source = f" {body['source']}" if body.get("source") else ""
    lines = []
    for label, key in (("added", "added"), ("removed", "removed"), ("restarted", "restarted"),
                       ("updated", "updated"), ("top level", "topLevel")):
        value = changes.get(key)
        if not value:
            continue
        if isinstance(value, dict):
            listed = ", ".join(f"{name} ({', '.join(fields)})" if fields else name
                               for name, fields in value.items())
        else:
            listed = ", ".join(value)
        lines.append(f"  {label}: {listed}")
    if not lines:
        return [f"reloaded{source}: no changes"]
    unchanged = changes.get("unchanged")
    if unchanged:
        lines.append(f"  unchanged: {unchanged}")
    return [f"reloaded{source}:", *lines]


# --- the parsers ------------------------------------------------------------------------------


def _gateway_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="YAML configuration file: the gateway is at its "
                        "`listen`, its key in <data_dir>/cli.key (default: $HESTIA_CONFIG)")
    parser.add_argument("--url", help="the gateway's URL, e.g. http://127.0.0.1:8080 "
                        "(default: $HESTIA_URL, else the configuration's `listen`)")
    parser.add_argument("--key-file", help="a file holding the API key (default: "
                        "$HESTIA_KEY_FILE; $HESTIA_API_KEY, the key itself, comes first)")


def add_commands(commands: Any, load: Load) -> None:
    """`status`, `start`, `stop` and `reload` on the `hestia` parser's subcommands."""
    status = commands.add_parser("status", help="the services of the running gateway")
    _gateway_options(status)
    status.add_argument("--json", action="store_true",
                        help="the API's JSON (GET /v1/services) as it is, for scripts")
    status.set_defaults(handler=_status, load=load)
    for action in ("start", "stop"):
        command = commands.add_parser(action, help=f"{action} a service of the running gateway")
        command.add_argument("service")
        _gateway_options(command)
        command.add_argument("--wait", action="store_true",
                             help=f"return once the service is {_ACTIONS[action][2]} "
                                  "(exit 1 when its start fails)")
        command.add_argument("--timeout", type=float, default=300.0,
                             help="with --wait: give up after this many seconds (default 300)")
        command.set_defaults(handler=_start_or_stop, action=action, load=load)
    reload = commands.add_parser("reload", help="make the running gateway read its "
                                 "configuration file again (POST /v1/reload)")
    _gateway_options(reload)
    reload.add_argument("--json", action="store_true", help="the API's answer as it is")
    reload.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the reload to be applied (default 120)")
    reload.set_defaults(handler=_reload, load=load)
