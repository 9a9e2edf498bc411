"""A stand-in for the `podman` / `docker` command line, for tests on machines without an engine.

Run as:  python tests/fake_container_cli.py PROG SUBCOMMAND [ARGS]
(PROG is `podman` or `docker`; a test puts a wrapper of that name first on PATH.)

It follows the real CLI's contract for the subcommands Hestia uses, exit statuses included
(125: the CLI itself failed; otherwise the container's own status):

  run [--rm] --name N [OPTIONS] IMAGE [ARGS]
        125 "the container name "N" is already in use" when N exists. Otherwise N is recorded
        as running and ARGS (the container's command; the image is not looked at) run in the
        foreground until they exit or `stop`/`rm -f` ends them; the CLI then exits with their
        status (128+signal when killed) and removes N when `--rm` was given. As with a real
        engine the container runs in a session of its own, not in the CLI's process group, so
        only the CLI (stop, rm -f, or SIGTERM/SIGINT proxied by `run`) reaches it. Its
        environment is a container's: PATH plus what `-e K=V` / `-e K` give, not the CLI's.
  start N
        0 when N exists (a test creates it with `create_container`), its command then runs
        detached; 125 "no such container" otherwise.
  stop -t T N
        SIGTERM to the container, SIGKILL after T seconds; 0 once it is gone (the foreground
        `run` of N then exits), 125 "no such container" when N does not exist.
  rm -f N
        kills N if it runs and removes it; always 0.

Every invocation's argv (`[PROG, SUBCOMMAND, ...]`) is appended as a JSON line to the file named
by env FAKE_CLI_LOG; its `HESTIA_*` variables, if env FAKE_CLI_ENV_LOG names a file, likewise.
Containers are `<name>.json` files in the directory named by env FAKE_CLI_STATE.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# `run` options that take a value (the first word after the options is the image).
VALUE_OPTIONS = {"-p", "--publish", "-e", "--env", "-v", "--volume", "--name", "--network",
                 "--net", "--device", "--gpus", "-w", "--workdir", "-u", "--user",
                 "--entrypoint", "-l", "--label", "--mount", "--pull", "--restart",
                 "--shm-size", "-m", "--memory", "--cpus", "--security-opt", "--add-host"}
IDLE = [sys.executable, "-c", "import time\nwhile True: time.sleep(3600)"]


def create_container(state_dir: Path, name: str, command: list[str],
                     env: dict[str, str] | None = None) -> None:
    """What `podman create` would leave behind: a stopped container N running `command`."""
    state_dir.mkdir(parents=True, exist_ok=True)
    _save(state_dir, name, {"command": command, "env": {"PATH": CONTAINER_PATH, **(env or {})},
                            "running": False, "pid": None, "run_pid": None, "rm": False})


def _path(state: Path, name: str) -> Path:
    return state / f"{name}.json"


def _load(state: Path, name: str) -> dict[str, Any] | None:
    try:
        return json.loads(_path(state, name).read_text())
    except FileNotFoundError:
        return None


def _save(state: Path, name: str, data: dict[str, Any]) -> None:
    tmp = state / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(_path(state, name))  # readers never see half a file


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie counts: only its parent's wait is missing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # someone else's process: alive
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not process_gone(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _no_such(prog: str, name: str) -> int:
    if prog == "docker":
        print(f"Error response from daemon: No such container: {name}", file=sys.stderr)
    else:
        print(f'Error: no container with name or ID "{name}" found: no such container',
              file=sys.stderr)
    return 125


def _container_env(options: list[tuple[str, str]]) -> dict[str, str]:
    env = {"PATH": CONTAINER_PATH}
    for option, value in options:
        if option in ("-e", "--env"):
            key, sep, given = value.partition("=")
            if sep:
                env[key] = given
            elif key in os.environ:  # `-e K` passes the CLI's own K, as the real CLI does
                env[key] = os.environ[key]
    return env


def cmd_run(prog: str, state: Path, args: list[str]) -> int:
    options: list[tuple[str, str]] = []
    flags: set[str] = set()
    i = 0
    while i < len(args) and args[i].startswith("-"):
        option, sep, value = args[i].partition("=")
        if option in VALUE_OPTIONS and not sep:
            i += 1
            value = args[i]
        if option in VALUE_OPTIONS:
            options.append((option, value))
        else:
            flags.add(option)
        i += 1
    if i >= len(args):
        print(f"Error: {prog} run requires at least one argument", file=sys.stderr)
        return 125
    command = args[i + 1:] or IDLE
    name = dict(options).get("--name")
    if name is None:
        print("fake: run without --name is not supported", file=sys.stderr)
        return 125
    if _load(state, name) is not None:
        if prog == "docker":
            print(f'docker: Error response from daemon: Conflict. The container name "/{name}" '
                  'is already in use by container "0123456789ab". You have to remove (or '
                  'rename) that container to be able to reuse that name.', file=sys.stderr)
        else:
            print(f'Error: creating container storage: the container name "{name}" is already '
                  'in use by 0123456789ab. You have to remove that container to be able to '
                  'reuse that name: that name is already in use', file=sys.stderr)
        return 125
    env = _container_env(options)
    data = {"command": command, "env": env, "running": True, "pid": None,
            "run_pid": os.getpid(), "rm": "--rm" in flags}
    _save(state, name, data)
    try:
        child = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    except OSError as exc:
        print(f"Error: crun: executable file `{command[0]}` not found: {exc.strerror}: OCI "
              "runtime attempted to invoke a command that was not found", file=sys.stderr)
        _finish(state, name, data)
        return 127
    data["pid"] = child.pid
    _save(state, name, data)

    def proxy(signum: int, frame: object) -> None:  # --sig-proxy, on by default
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, proxy)
    signal.signal(signal.SIGINT, proxy)
    status = child.wait()
    _finish(state, name, data)
    return 128 - status if status < 0 else status


def _finish(state: Path, name: str, data: dict[str, Any]) -> None:
    """The container ended: gone with `--rm`, else kept as an exited container. Only the
    process that owns it (the foreground `run`, or `stop` for a detached one) may do this, and
    only while it is still this container (not removed and recreated meanwhile)."""
    current = _load(state, name)
    if current is None or current.get("run_pid") != data.get("run_pid"):
        return
    if data.get("rm"):
        _path(state, name).unlink(missing_ok=True)
    else:
        _save(state, name, {**current, "running": False, "pid": None, "run_pid": None})


def cmd_start(prog: str, state: Path, args: list[str]) -> int:
    name = args[-1]
    data = _load(state, name)
    if data is None:
        code = _no_such(prog, name)
        if prog == "docker":
            print(f"Error: failed to start containers: {name}", file=sys.stderr)
        return code
    if not data["running"]:
        with (state / f"{name}.log").open("ab") as log:
            child = subprocess.Popen(data["command"], env=data["env"], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        _save(state, name, {**data, "running": True, "pid": child.pid, "run_pid": None})
    print(name)
    return 0


def cmd_stop(prog: str, state: Path, args: list[str]) -> int:
    timeout = 10.0
    if "-t" in args:
        timeout = float(args[args.index("-t") + 1])
    name = args[-1]
    data = _load(state, name)
    if data is None:
        return _no_such(prog, name)
    pid = data.get("pid")
    if data["running"] and pid:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not _wait_gone(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5)
    run_pid = data.get("run_pid")
    if run_pid is not None:
        # The foreground `run` records the exit (and its --rm) itself; give it the moment.
        deadline = time.monotonic() + 5
        while not process_gone(run_pid) and time.monotonic() < deadline:
            time.sleep(0.01)
    current = _load(state, name)
    if current is not None and current.get("running") and current.get("pid") == pid:
        _finish(state, name, current)  # detached, or its `run` was killed: nobody else will
    print(name)
    return 0


def cmd_rm(prog: str, state: Path, args: list[str]) -> int:
    """Only `rm -f`: a running container is killed first, a missing one is no error."""
    name = args[-1]
    data = _load(state, name)
    if data is None:
        return 0
    if data["running"] and data.get("pid"):
        os.kill(data["pid"], signal.SIGKILL)
        _wait_gone(data["pid"], 5)
    _path(state, name).unlink(missing_ok=True)
    print(name)
    return 0


COMMANDS = {"run": cmd_run, "start": cmd_start, "stop": cmd_stop, "rm": cmd_rm}


def main(argv: list[str]) -> int:
    prog, args = argv[0], argv[1:]
    with open(os.environ["FAKE_CLI_LOG"], "a") as log:
        log.write(json.dumps([prog, *args]) + "\n")
    if os.environ.get("FAKE_CLI_ENV_LOG"):
        with open(os.environ["FAKE_CLI_ENV_LOG"], "a") as log:
            log.write(json.dumps({k: v for k, v in sorted(os.environ.items())
                                  if k.startswith("HESTIA_")}) + "\n")
    state = Path(os.environ["FAKE_CLI_STATE"])
    state.mkdir(parents=True, exist_ok=True)
    if not args or args[0] not in COMMANDS:
        print(f"Error: unrecognized command `{prog} {' '.join(args[:1])}`", file=sys.stderr)
        return 125
    return COMMANDS[args[0]](prog, state, args[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
