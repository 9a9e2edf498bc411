"""Hestia's performance benchmark: one run, one table.

    python benchmarks/run.py [--quick] [--json PATH] [--loadgen auto|wrk|python] [--no-pin]

1. Throughput and latency at concurrency 1 and 32 of
   (a) the upstream directly (benchmarks/fast_upstream.py, asyncio raw protocol),
   (b) hypercorn's trio worker serving a minimal raw ASGI hello-world (benchmarks/hello_asgi.py),
   (c) Hestia proxying to the same upstream, backend already warm;
   with (c)/(b) at c=32 and the p50 that (c) adds over (a) at c=1.
2. Cold-start added latency: from the moment the upstream listens (it writes `time.time()` to a
   stamp file) to the moment the client has its response, median over several cold starts.
3. Gateway memory (VmRSS, VmHWM) while 2,000 requests are held during one slow (10 s) start,
   and whether all of them are answered 200.
4. Streaming (benchmarks/streaming.py, upstream benchmarks/stream_upstream.py), direct and
   through Hestia: the delay a chunk of a chunked response takes to arrive (1,000 chunks 5 ms
   apart), 1 GiB download and upload throughput, and the gateway's peak RSS meanwhile.
   `--quick`: 200 chunks and 128 MiB.

Every server runs in a process of its own. With two or more CPUs (and without --no-pin) the
server under test (Hestia or hypercorn) is pinned to CPU 0, and the load generator and the
upstream to CPU 1, so the gateway has a core to itself. The load generator is `wrk` when it is on
PATH (`--loadgen python` forces benchmarks/loadgen.py). Targets are reported, never asserted.
Every process started here is stopped on the way out, on error and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import streaming
from streaming import cpu_seconds

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
UPSTREAM = HERE / "fast_upstream.py"
HELLO = HERE / "hello_asgi.py"
LOADGEN = HERE / "loadgen.py"

TARGET_RATIO = 0.75          # (c)/(b) rps at c=32
TARGET_ADDED_P50_MS = 1.0    # (c) p50 - (a) p50 at c=1
TARGET_COLD_MS = 20.0        # median cold-start added latency
TARGET_HELD = 2000           # requests held during one slow start
TARGET_RSS_MB = 150.0


# --- processes ------------------------------------------------------------------------------


class Processes:
    """Every process this run starts, stopped in reverse order at the end whatever happens."""

    def __init__(self) -> None:
        self._procs: list[tuple[subprocess.Popen[bytes], str, float]] = []
        self.extra_pids: set[int] = set()  # e.g. backends a gateway started

    def spawn(self, name: str, cmd: list[str], *, cpus: set[int] | None = None,
              stdout: Any = subprocess.DEVNULL, stderr: Any = subprocess.DEVNULL,
              stop_grace: float = 5.0, env: dict[str, str] | None = None,
              ) -> subprocess.Popen[bytes]:
        def preexec() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)
            _die_with_parent()

        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=preexec, env=env)
        self._procs.append((proc, name, stop_grace))
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        for i, (p, _, grace) in enumerate(self._procs):
            if p is proc:
                del self._procs[i]
                _stop_process(p, grace, self.extra_pids)
                return

    def stop_all(self) -> None:
        while self._procs:
            proc, _, grace = self._procs.pop()
            _stop_process(proc, grace, self.extra_pids)
        for pid in list(self.extra_pids):
            _kill_group(pid)
        self.extra_pids.clear()


def _die_with_parent() -> None:
    """Linux: SIGTERM this child if the benchmark itself is killed (even by SIGKILL)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _kill_group(pid: int) -> None:
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)


def _stop_process(proc: subprocess.Popen[bytes], grace: float, extra: set[int]) -> None:
    """SIGTERM (a gateway stops its backends then), wait `grace`, then SIGKILL the group and
    whatever descendants it left behind."""
    if proc.poll() is None:
        leftovers = _descendants(proc.pid) if os.path.isdir("/proc") else set()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(proc.pid)
        for pid in leftovers:
            _kill_group(pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# --- small helpers --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, timeout: float = 5.0) -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid` in kB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def listen_overflows() -> int | None:
    """TcpExt ListenOverflows: SYNs dropped because an accept queue was full (system-wide)."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            if "ListenOverflows" in fields:
                return int(fields["ListenOverflows"])
    return None


def versions(python: str, modules: list[str]) -> dict[str, str]:
    """Installed versions as `python` (the one running hestia) sees them."""
    code = ("import json, sys, importlib.metadata as m\n"
            "out = {}\n"
            "for name in sys.argv[1:]:\n"
            "    try: out[name] = m.version(name)\n"
            "    except m.PackageNotFoundError: out[name] = '?'\n"
            "print(json.dumps(out))")
    try:
        done = subprocess.run([python, "-c", code, *modules], capture_output=True, text=True,
                              timeout=30, check=True)
        return json.loads(done.stdout)
    except (subprocess.SubprocessError, ValueError, OSError):
        return {name: "?" for name in modules}


def hestia_python() -> str:
    """A Python that can import hestia and hypercorn: this one, else the project's venv."""
    try:
        import hypercorn  # noqa: F401

        import hestia  # noqa: F401
        return sys.executable
    except ImportError:
        venv = ROOT / ".venv" / "bin" / "python"
        if venv.exists():
            return str(venv)
        raise SystemExit("hestia is not importable: run with the project's venv "
                         "(.venv/bin/python benchmarks/run.py)") from None


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# --- load generation ------------------------------------------------------------------------

_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNIT[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for pct, key in (("50", "p50_ms"), ("90", "p90_ms"), ("99", "p99_ms")):
        match = re.search(rf"^\s+{pct}%\s+(\S+)", output, re.M)
        result[key] = _wrk_ms(match.group(1)) if match else None
    match = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", output)
    result["max_ms"] = _wrk_ms(match.group(1)) if match else None
    match = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    if match:
        result["requests"] = int(match.group(1))
        seconds = _wrk_ms(match.group(2) + match.group(3)) / 1e3
        result["rps"] = result["requests"] / seconds if seconds else None
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non2xx"] = int(match.group(1)) if match else 0
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      output)
    result["errors"] = sum(int(g) for g in match.groups()) if match else 0
    return result


class LoadGenerator:
    def __init__(self, kind: str, procs: Processes, cpus: set[int] | None) -> None:
        self.kind = kind
        self.procs = procs
        self.cpus = cpus

    def describe(self) -> str:
        if self.kind == "wrk":
            out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
            first = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) \
                else "wrk"
            return first.split(" Copyright")[0].strip() + " (1 thread)" * bool(self.cpus)
        return "benchmarks/loadgen.py (asyncio raw protocol)"

    def measure(self, url: str, concurrency: int, duration: float, warmup: float,
                watch: dict[str, int | None]) -> dict[str, Any]:
        """Load `url`; also the CPU use of the `watch` processes during the measured window."""
        if self.kind == "wrk":
            return self._wrk(url, concurrency, duration, warmup, watch)
        return self._python(url, concurrency, duration, warmup, watch)

    def _run(self, cmd: list[str], timeout: float, window: tuple[float, float],
             watch: dict[str, int | None]) -> tuple[str, dict[str, float | None]]:
        proc = self.procs.spawn(cmd[0], cmd, cpus=self.cpus, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            time.sleep(max(0.0, window[0] - time.time()))
            before = {k: cpu_seconds(pid) for k, pid in watch.items()}
            t0 = time.time()
            time.sleep(max(0.0, window[1] - time.time()))
            after = {k: cpu_seconds(pid) for k, pid in watch.items()}
            elapsed = time.time() - t0
            out, err = proc.communicate(timeout=timeout)
        finally:
            self.procs.stop(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err.decode()[-2000:]}")
        cpu = {k: (None if before[k] is None or after[k] is None
                   else 100.0 * (after[k] - before[k]) / elapsed)  # type: ignore[operator]
               for k in watch}
        return out.decode(), cpu

    def _wrk(self, url: str, c: int, duration: float, warmup: float,
             watch: dict[str, int | None]) -> dict[str, Any]:
        threads = 1 if self.cpus and len(self.cpus) == 1 else min(c, 2)
        base = ["wrk", f"-t{threads}", f"-c{c}", "--latency", "--timeout", "10s"]
        if warmup > 0:
            self._run([*base, f"-d{max(1, round(warmup))}s", url], warmup + 30,
                      (time.time(), time.time()), {})
        now = time.time()
        out, cpu = self._run([*base, f"-d{round(duration)}s", url], duration + 30,
                             (now + 0.1, now + duration - 0.1), watch)
        result = parse_wrk(out)
        result.update(concurrency=c, duration_s=duration, warmup_s=warmup, cpu_pct=cpu)
        return result

    def _python(self, url: str, c: int, duration: float, warmup: float,
                watch: dict[str, int | None]) -> dict[str, Any]:
        start_at = time.time() + 0.5
        cmd = [sys.executable, str(LOADGEN), "run", "--url", url, "-c", str(c),
               "-d", str(duration), "--warmup", str(warmup), "--start-at", repr(start_at)]
        out, cpu = self._run(cmd, warmup + duration + 60,
                             (start_at + warmup + 0.05, start_at + warmup + duration - 0.05),
                             watch)
        result = json.loads(out.strip().splitlines()[-1])
        result["cpu_pct"] = cpu
        return result


# --- servers --------------------------------------------------------------------------------


class Gateway:
    """`hestia serve` in a process of its own, with a YAML (JSON) configuration file."""

    def __init__(self, procs: Processes, python: str, workdir: Path, name: str,
                 services: dict[str, Any], cpus: set[int] | None, log_level: str) -> None:
        self.procs = procs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        config = {"listen": f"127.0.0.1:{self.port}", "data_dir": str(self.dir / "data"),
                  "log_level": log_level, "grace_period": "2s", "services": services}
        self.config_path = self.dir / "hestia.yml"
        self.config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.stderr_path = self.dir / "gateway.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.proc = procs.spawn(f"hestia-{name}", [python, "-m", "hestia", "serve", "-c",
                                                   str(self.config_path), "--log-format", "json"],
                                cpus=cpus, stderr=self._stderr, stop_grace=15.0)
        try:
            wait_until(lambda: self.proc.poll() is None
                       and http("GET", self.url + "/__health", 1.0)[0] == 200
                       or self._died(), 20, "the gateway to answer /__health")
        except BaseException:
            self.stop()
            raise

    def _died(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the gateway exited ({self.proc.returncode}): "
                               f"{self.stderr_tail()}")
        return False

    def stderr_tail(self, n: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self, service: str) -> dict[str, Any]:
        code, body = http("GET", f"{self.url}/v1/services/{service}/status")
        if code != 200:
            raise RuntimeError(f"status of {service}: HTTP {code} {body!r}")
        if body.get("pid"):
            self.procs.extra_pids.add(body["pid"])
        return body

    def wait_state(self, service: str, state: str, timeout: float) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def check() -> bool:
            found.update(self.status(service))
            return found["state"] == state

        wait_until(check, timeout, f"{service} to be {state}", interval=0.005)
        return found

    def stop(self) -> None:
        self.procs.stop(self.proc)
        self._stderr.close()


def upstream_service(port: int, python: str, *, cpus: set[int] | None, delay: float = 0.0,
                     stamp: Path | None = None, queue_max: int = 5000,
                     readiness_interval: str | None = None) -> dict[str, Any]:
    command = [python, str(UPSTREAM)]
    if cpus:
        command += ["--cpus", ",".join(map(str, sorted(cpus)))]
    if delay:
        command += ["--delay-start", str(delay)]
    if stamp:
        command += ["--listen-stamp", str(stamp)]
    readiness = {"http": "/health", "timeout": "60s"}
    if readiness_interval:
        readiness["interval"] = readiness_interval
    return {
        "upstream": f"http://127.0.0.1:{port}",
        "launcher": {"process": {"command": command, "stop_timeout": "5s"}},
        "readiness": readiness,
        "idle_timeout": 0,
        "queue": {"max": queue_max, "timeout": "120s"},
    }


@contextlib.contextmanager
def hello_server(procs: Processes, python: str, cpus: set[int] | None) -> Iterator[
        tuple[str, int]]:
    port = free_port()
    proc = procs.spawn("hello", [python, str(HELLO), "--port", str(port)], cpus=cpus,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until(lambda: (proc.poll() is None or _raise(RuntimeError("hello_asgi exited")))
                   and http("GET", url, 1.0)[0] == 200, 20, "hello_asgi to answer")
        yield url, proc.pid
    finally:
        procs.stop(proc)


def _raise(exc: Exception) -> bool:
    raise exc


# --- the three benchmarks -------------------------------------------------------------------


def bench_throughput(args: argparse.Namespace, procs: Processes, python: str, workdir: Path,
                     loadgen: LoadGenerator, server_cpus: set[int] | None,
                     client_cpus: set[int] | None, results: dict[str, Any]) -> Gateway:
    up_port, slow_port = free_port(), free_port()
    stamp = workdir / "cold.stamp"
    gateway = Gateway(procs, python, workdir, "gateway", {
        "up": upstream_service(up_port, sys.executable, cpus=client_cpus),
        "slow": upstream_service(slow_port, sys.executable, cpus=client_cpus, delay=0.3,
                                 stamp=stamp, readiness_interval=args.readiness_interval),
    }, server_cpus, args.gateway_log_level)
    code, _ = http("GET", f"{gateway.url}/services/up/", timeout=30)  # cold start, then warm
    if code != 200:
        raise RuntimeError(f"warming the backend answered {code}: {gateway.stderr_tail()}")
    upstream_pid = gateway.wait_state("up", "READY", 10)["pid"]
    direct = f"http://127.0.0.1:{up_port}/"
    proxied = f"{gateway.url}/services/up/"
    rows = results["throughput"] = []
    plan: list[tuple[str, str, str | None, dict[str, int | None]]] = [
        ("a", "upstream direct", direct, {"upstream": upstream_pid}),
        ("b", "hypercorn trio hello-world", None, {}),
        ("c", "Hestia -> upstream", proxied, {"gateway": gateway.pid,
                                              "upstream": upstream_pid}),
    ]
    for key, label, url, watch in plan:
        for c in (1, 32):
            print(f"  ({key}) {label}, c={c} ...", file=sys.stderr, flush=True)
            if url is None:
                with hello_server(procs, python, server_cpus) as (hello_url, hello_pid):
                    row = loadgen.measure(hello_url, c, args.duration, args.warmup,
                                          {"hypercorn": hello_pid})
            else:
                row = loadgen.measure(url, c, args.duration, args.warmup, watch)
            row.update(key=key, label=label, concurrency=c)
            rows.append(row)
    with contextlib.suppress(OSError):
        results["gateway_rss_after_load_kb"] = proc_status(gateway.pid)
    return gateway


def bench_cold(args: argparse.Namespace, gateway: Gateway, workdir: Path,
               results: dict[str, Any]) -> None:
    stamp = workdir / "cold.stamp"
    host, port = "127.0.0.1", gateway.port
    request = (f"GET /services/slow/ HTTP/1.1\r\nHost: {host}:{port}\r\n"
               "Connection: close\r\n\r\n").encode()
    samples = []
    for i in range(args.cold_runs):
        print(f"  cold start {i + 1}/{args.cold_runs} ...", file=sys.stderr, flush=True)
        state = gateway.status("slow")["state"]
        if state != "COLD":
            if state == "READY":
                code, body = http("POST", f"{gateway.url}/v1/services/slow/stop")
                if code != 202:
                    raise RuntimeError(f"stop answered {code}: {body!r}")
            gateway.wait_state("slow", "COLD", 20)
        with contextlib.suppress(FileNotFoundError):
            stamp.unlink()
        time.sleep(0.05)
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sent = time.time()
            sock.sendall(request)
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                if sep:
                    match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                    if match and len(body) >= int(match.group(1)):
                        break
            answered = time.time()
        status = int(data[9:12]) if len(data) >= 12 else 0
        listened = float(stamp.read_text())
        info = gateway.status("slow")
        samples.append({"status": status, "added_ms": (answered - listened) * 1000,
                        "request_ms": (answered - sent) * 1000,
                        "start_duration_ms": info.get("lastStartDurationMs")})
    added = [s["added_ms"] for s in samples]
    results["cold_start"] = {
        "runs": samples, "median_added_ms": statistics.median(added),
        "min_added_ms": min(added), "max_added_ms": max(added),
        "median_request_ms": statistics.median(s["request_ms"] for s in samples),
        "all_200": all(s["status"] == 200 for s in samples),
    }


def bench_memory(args: argparse.Namespace, procs: Processes, python: str, workdir: Path,
                 server_cpus: set[int] | None, client_cpus: set[int] | None,
                 results: dict[str, Any]) -> None:
    count = args.held
    stamp = workdir / "memory.stamp"
    port = free_port()
    gateway = Gateway(procs, python, workdir, "gateway-memory", {
        "up": upstream_service(port, sys.executable, cpus=client_cpus, delay=args.slow_start,
                               stamp=stamp, queue_max=max(2500, count + 100)),
    }, server_cpus, args.gateway_log_level)
    try:
        time.sleep(0.3)
        baseline = proc_status(gateway.pid)
        overflows = listen_overflows()
        client = procs.spawn("hold", [sys.executable, str(LOADGEN), "hold", "--url",
                                      f"{gateway.url}/services/up/", "-n", str(count),
                                      "--rate", str(args.hold_rate),
                                      "--timeout", str(args.slow_start + 60)],
                             cpus=client_cpus, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(
            line.decode() for line in iter(client.stderr.readline, b"")), daemon=True)
        reader.start()
        held_rss = held_max_pending = 0
        peak_rss = 0
        sent_at = all_held_at = None
        deadline = time.monotonic() + args.slow_start + 90
        last_status = 0.0
        while client.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the hold client did not finish in time")
            rss = proc_status(gateway.pid)["VmRSS"]
            peak_rss = max(peak_rss, rss)
            if sent_at is None:
                sent_at = next((float(line.split()[2]) for line in lines
                                if line.startswith("sent ")), None)
            if not stamp.exists():  # the backend is not listening yet: requests are held
                held_rss = max(held_rss, rss)
                if time.monotonic() - last_status > 0.25:
                    last_status = time.monotonic()
                    with contextlib.suppress(OSError, RuntimeError):
                        pending = gateway.status("up")["queuePending"]
                        if pending >= count and all_held_at is None:
                            all_held_at = time.time()
                        held_max_pending = max(held_max_pending, pending)
            time.sleep(0.05)
        out, _ = client.communicate(timeout=10)
        reader.join(timeout=5)
        result = json.loads(out.decode().strip().splitlines()[-1])
        final = proc_status(gateway.pid)
        overflows_after = listen_overflows()
        listened = float(stamp.read_text()) if stamp.exists() else None
        results["memory"] = {
            "held": count, "ok": result["ok"], "statuses": result["statuses"],
            "connect_errors": result["connect_errors"],
            "max_queue_pending": held_max_pending,
            "rss_idle_kb": baseline["VmRSS"], "rss_held_kb": held_rss,
            "rss_peak_sampled_kb": peak_rss, "hwm_kb": final["VmHWM"],
            "rss_after_kb": final["VmRSS"],
            "all_sent_before_ready": bool(sent_at and listened and sent_at < listened),
            "send_s": (sent_at - result["began"]) if sent_at else None,
            "all_held_s": (all_held_at - result["began"]) if all_held_at else None,
            "hold_rate": args.hold_rate,
            "listen_overflows": (overflows_after - overflows
                                 if overflows is not None and overflows_after is not None
                                 else None),
            "drain_s": (result["last_response_at"] - listened)
            if listened and result["last_response_at"] else None,
        }
    finally:
        gateway.stop()


def bench_streaming(args: argparse.Namespace, procs: Processes, python: str, workdir: Path,
                    server_cpus: set[int] | None, client_cpus: set[int] | None,
                    results: dict[str, Any]) -> None:
    port = free_port()
    gateway = Gateway(procs, python, workdir, "gateway-streaming", {
        streaming.SERVICE: streaming.upstream_service(port, sys.executable, client_cpus),
    }, server_cpus, args.gateway_log_level)
    try:
        results["streaming"] = streaming.measure(gateway, port, quick=args.quick)
    finally:
        gateway.stop()


# --- report ---------------------------------------------------------------------------------


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    rows = {(r["key"], r["concurrency"]): r for r in results.get("throughput", [])}
    summary: dict[str, Any] = {}
    with contextlib.suppress(KeyError, TypeError, ZeroDivisionError):
        ratio = rows[("c", 32)]["rps"] / rows[("b", 32)]["rps"]
        summary["ratio_c_b_c32"] = {"value": ratio, "target": f">= {TARGET_RATIO}",
                                    "pass": ratio >= TARGET_RATIO}
    with contextlib.suppress(KeyError, TypeError):
        added = rows[("c", 1)]["p50_ms"] - rows[("a", 1)]["p50_ms"]
        summary["added_p50_c1_ms"] = {"value": added, "target": f"<= {TARGET_ADDED_P50_MS} ms",
                                      "pass": added <= TARGET_ADDED_P50_MS}
    cold = results.get("cold_start")
    if cold:
        summary["cold_start_added_ms"] = {
            "value": cold["median_added_ms"], "target": f"<= {TARGET_COLD_MS} ms median",
            "pass": cold["median_added_ms"] <= TARGET_COLD_MS and cold["all_200"]}
    memory = results.get("memory")
    if memory:
        peak_mb = max(memory["hwm_kb"], memory["rss_peak_sampled_kb"]) / 1024
        summary["held_requests"] = {
            "value": f"{memory['ok']}/{memory['held']} answered 200",
            "target": f"all {TARGET_HELD}", "pass": memory["ok"] == memory["held"] >= TARGET_HELD}
        summary["gateway_rss_mb"] = {"value": peak_mb, "target": f"<= {TARGET_RSS_MB:.0f} MB",
                                     "pass": peak_mb <= TARGET_RSS_MB}
    summary.update(streaming.summarize(results.get("streaming")))
    return summary


def print_report(results: dict[str, Any]) -> None:
    env = results["environment"]
    print()
    print(f"Hestia {env['hestia']} benchmark  ({env['cpus']} CPUs, {env['cpu_model']}, Python "
          f"{env['python']}, hypercorn {env['hypercorn']}, trio {env['trio']}, h11 {env['h11']})")
    print(f"load generator: {env['loadgen']}; {env['duration_s']} s measured after "
          f"{env['warmup_s']} s warm-up; {env['pinning']}; gateway log_level "
          f"{env['gateway_log_level']}")
    rows = results.get("throughput", [])
    if rows:
        print()
        header = (f"{'':32} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'errors':>6}  CPU% during the run")
        print(header)
        print("-" * len(header) + "-" * 12)
        for r in rows:
            cpu = ", ".join(f"{k} {v:.0f}" for k, v in (r.get("cpu_pct") or {}).items()
                            if v is not None)
            errors = (r.get("errors") or 0) + (r.get("non2xx") or 0)
            print(f"({r['key']}) {r['label']:28} {r['concurrency']:>4} {fmt(r.get('rps'), 0):>9} "
                  f"{fmt(r.get('p50_ms'), 3):>8} {fmt(r.get('p99_ms'), 3):>8} {errors:>6}  {cpu}")
        rps = {(r["key"], r["concurrency"]): r.get("rps") for r in rows}
        with contextlib.suppress(KeyError, TypeError, ZeroDivisionError):
            print(f"load generator headroom: (a) at c=32 is {rps[('a', 32)] / rps[('b', 32)]:.0f}x "
                  f"(b) and {rps[('a', 32)] / rps[('c', 32)]:.0f}x (c), with the upstream sharing "
                  "the generator's CPU")
    cold = results.get("cold_start")
    if cold:
        print()
        runs = ", ".join(f"{s['added_ms']:.1f}" for s in cold["runs"])
        interval = results["environment"].get("readiness_interval") or "default"
        print(f"cold start (upstream --delay-start 0.3, readiness http /health, interval "
              f"{interval}): added latency "
              f"listen -> response, median {cold['median_added_ms']:.1f} ms "
              f"(min {cold['min_added_ms']:.1f}, max {cold['max_added_ms']:.1f}; runs: {runs}); "
              f"whole cold request median {cold['median_request_ms']:.0f} ms")
    memory = results.get("memory")
    if memory:
        print()
        env_slow = results["environment"]["slow_start_s"]
        print(f"memory: {memory['held']} requests held during a {env_slow} s start, opened at "
              f"{memory['hold_rate']:.0f} connections/s")
        print(f"  answered: {memory['ok']} x 200 {memory['statuses']}; queue peak "
              f"{memory['max_queue_pending']}, all held {fmt(memory['all_held_s'], 1)} s after "
              f"the first connect; all sent before the backend listened: "
              f"{memory['all_sent_before_ready']}; all answered {fmt(memory['drain_s'], 2)} s "
              "after it listened")
        print(f"  gateway VmRSS idle {memory['rss_idle_kb'] / 1024:.1f} MB, while held "
              f"{memory['rss_held_kb'] / 1024:.1f} MB, peak VmHWM {memory['hwm_kb'] / 1024:.1f} MB"
              f"; listen-queue overflows (dropped SYNs) during the test: "
              f"{memory['listen_overflows']}")
    if results.get("streaming"):
        print()
        print("\n".join(streaming.report(results["streaming"])))
    summary = results.get("summary", {})
    if summary:
        print()
        print("targets:")
        names = {"ratio_c_b_c32": "(c)/(b) req/s at c=32",
                 "added_p50_c1_ms": "added p50 (c)-(a) at c=1, ms",
                 "cold_start_added_ms": "cold-start added latency, median ms",
                 "held_requests": "held requests answered",
                 "gateway_rss_mb": "gateway peak RSS (VmHWM), MB", **streaming.TARGET_NAMES}
        for key, item in summary.items():
            value = item["value"]
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            print(f"  {names[key]:42} {shown:>22}  target {item['target']:18} "
                  f"{verdict(item['pass'])}")
    print()


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (about 40 s)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--duration", type=float, help="seconds measured per load run")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per load run")
    parser.add_argument("--cold-runs", type=int, help="number of cold starts")
    parser.add_argument("--held", type=int, default=2000, help="requests held during a start")
    parser.add_argument("--slow-start", type=float, default=10.0,
                        help="the upstream's start delay for the memory test")
    parser.add_argument("--hold-rate", type=float, default=500.0,
                        help="connections per second the memory test opens (0: at once)")
    parser.add_argument("--readiness-interval", metavar="DURATION",
                        help="readiness.interval of the cold-start service (default: Hestia's)")
    parser.add_argument("--gateway-log-level", default="warning",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--skip", action="append", default=[],
                        choices=["throughput", "cold", "memory", "streaming"])
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    args.cold_runs = args.cold_runs or (3 if args.quick else 7)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # inherited by children
    if wanted < 2 * args.held + 512:
        print(f"warning: RLIMIT_NOFILE hard limit {hard} is low for {args.held} held requests",
              file=sys.stderr)

    python = hestia_python()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) >= 2 and not args.no_pin:
        server_cpus: set[int] | None = {cpus[0]}
        client_cpus: set[int] | None = {cpus[1]}
        pinning = (f"server under test on CPU {cpus[0]}, load generator and upstream on "
                   f"CPU {cpus[1]}")
        os.sched_setaffinity(0, client_cpus)
    else:
        server_cpus = client_cpus = None
        pinning = "no CPU pinning"
    kind = args.loadgen
    if kind == "auto":
        kind = "wrk" if shutil.which("wrk") else "python"
    elif kind == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not on PATH")

    procs = Processes()
    loadgen = LoadGenerator(kind, procs, client_cpus)
    cpu_model = "?"
    with contextlib.suppress(OSError):
        cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                          if line.startswith("model name")), "?")
    results: dict[str, Any] = {"environment": {
        "cpus": os.cpu_count(), "cpu_model": cpu_model, "python": platform.python_version(),
        **versions(python, ["hestia", "hypercorn", "trio", "h11"]),
        "loadgen": loadgen.describe(), "pinning": pinning,
        "duration_s": args.duration, "warmup_s": args.warmup, "cold_runs": args.cold_runs,
        "slow_start_s": args.slow_start, "gateway_log_level": args.gateway_log_level,
        "readiness_interval": args.readiness_interval,
        "loadavg_before": open("/proc/loadavg").read().split()[:3]
        if os.path.exists("/proc/loadavg") else None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }}
    workdir = Path(tempfile.mkdtemp(prefix="hestia-bench-"))
    began = time.monotonic()
    failed = False
    try:
        if "throughput" not in args.skip or "cold" not in args.skip:
            if "throughput" in args.skip:
                gateway = _gateway_only(args, procs, python, workdir, server_cpus, client_cpus)
            else:
                print("throughput and latency:", file=sys.stderr, flush=True)
                gateway = bench_throughput(args, procs, python, workdir, loadgen, server_cpus,
                                           client_cpus, results)
            if "cold" not in args.skip:
                print("cold start:", file=sys.stderr, flush=True)
                bench_cold(args, gateway, workdir, results)
            gateway.stop()
        if "memory" not in args.skip:
            print(f"memory with {args.held} held requests:", file=sys.stderr, flush=True)
            bench_memory(args, procs, python, workdir, server_cpus, client_cpus, results)
        if "streaming" not in args.skip:
            print("streaming:", file=sys.stderr, flush=True)
            bench_streaming(args, procs, python, workdir, server_cpus, client_cpus, results)
    except KeyboardInterrupt:
        print("interrupted: stopping every process started", file=sys.stderr)
        failed = True
    except Exception as exc:
        print(f"benchmark failed: {exc!r}", file=sys.stderr)
        failed = True
        args.keep = True
    finally:
        procs.stop_all()
    results["environment"]["seconds"] = round(time.monotonic() - began, 1)
    if os.path.exists("/proc/loadavg"):
        results["environment"]["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    results["summary"] = summarize(results)
    print_report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.keep:
        print(f"work directory kept: {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def _gateway_only(args: argparse.Namespace, procs: Processes, python: str, workdir: Path,
                  server_cpus: set[int] | None, client_cpus: set[int] | None) -> Gateway:
    stamp = workdir / "cold.stamp"
    return Gateway(procs, python, workdir, "gateway", {
        "slow": upstream_service(free_port(), sys.executable, cpus=client_cpus, delay=0.3,
                                 stamp=stamp, readiness_interval=args.readiness_interval),
    }, server_cpus, args.gateway_log_level)


if __name__ == "__main__":
    sys.exit(main())
