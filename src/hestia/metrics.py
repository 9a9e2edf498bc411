"""Prometheus metrics: what the proxy and the supervisors did, for `GET /metrics`.

Every gateway keeps its own `CollectorRegistry` (never the process-wide default), so several
gateways in one test process never share or clash on a sample. Label values are bounded: a
`service` is one of the configured supervisors (events for any other service are not counted),
a `machine` one of the machines in their placements (else `other`), a status an HTTP status
code, and every other label a fixed word. Never a path.

| metric | type | labels |
|---|---|---|
| `hestia_requests_total` | counter | `service`, `status` (HTTP status code) |
| `hestia_request_duration_seconds` | histogram | `service` |
| `hestia_upstream_first_byte_seconds` | histogram | `service` |
| `hestia_queue_wait_seconds` | histogram | `service` (only requests that waited) |
| `hestia_cold_start_seconds` | histogram | `service`, `machine` (from `ready` events) |
| `hestia_queue_depth` | gauge | `service` (waiting for a start, or for a connection slot) |
| `hestia_in_flight` | gauge | `service` |
| `hestia_connections_in_use` | gauge | `service` (leases counted against `max_connections`) |
| `hestia_max_connections` | gauge | `service` (`max_connections`; 0: no cap) |
| `hestia_backend_state` | gauge | `service`, `state` (1 for the current state, else 0) |
| `hestia_starts_total` | counter | `service`, `result` (`ready`, `failed`, `cancelled`) |
| `hestia_start_attempts_total` | counter | `service`, `machine`, `result` (`ok`, `failed`) |
| `hestia_stops_total` | counter | `service`, `reason` (`STOP_REASONS`) |
| `hestia_queue_rejections_total` | counter | `service`, `reason` (`full`, `timeout`) |
| `hestia_semaphore_task_duration_seconds` | histogram | `service`, `action`, `status` |
| `hestia_routing_decisions_total` | counter | `service`, `backend`, `reason` (several backends) |

The gauges are read from the supervisors at scrape time by a custom collector, so the
proxy's hot path does no bookkeeping for them. Counters and histograms per service exist from
the start (at zero), so `rate()` sees a series before its first increment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .lifecycle.leases import State

if TYPE_CHECKING:
    from .events import Event
    from .lifecycle.supervisor import Supervisor

__all__ = ["Metrics"]

log = structlog.get_logger("hestia.metrics")

# A proxied request: 1 ms … 60 s; long streams (model output, websockets) land in +Inf.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
# Waiting for a lease includes a cold start.
QUEUE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                 120.0, 300.0, 600.0)
# A remote machine may be woken and provisioned first: 10 ms … 30 min.
COLD_START_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                      300.0, 600.0, 1200.0, 1800.0)
TASK_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0)

START_RESULTS = ("ready", "failed", "cancelled")
# Why a backend stopped: the `reason` of its `stopped` event, `crash`, or `other`.
STOP_REASONS = ("idle", "api", "evicted", "dependency_stopped", "reload", "removed", "shutdown",
                "crash", "other")
STOPPED_REASONS = frozenset(STOP_REASONS) - {"crash", "other"}  # a `stopped` event's own
REJECTIONS = ("full", "timeout")
TASK_ACTIONS = frozenset({"start", "stop"})
# What Semaphore reports for a task, plus Hestia's own `not_created`; anything else is `other`.
TASK_STATUSES = frozenset({"success", "error", "stopped", "not_created", "waiting", "starting",
                           "running", "waiting_confirmation", "confirmed", "rejected"})
OTHER = "other"
ROUTE_REASONS = frozenset({"map", "alias", "default", "balance", "ready", "first", "failover",
                           "sticky"})


def _bounded(value: Any, allowed: frozenset[str] | set[str]) -> str:
    return value if value in allowed else OTHER


class _SupervisorGauges(Collector):
    """Queue depth, in-flight requests, connection slots and state, read from the supervisors
    when scraped."""

    def __init__(self, supervisors: Mapping[str, Supervisor]) -> None:
        self._supervisors = supervisors

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        depth, in_flight, in_use, cap, state = families
        for name, sup in self._supervisors.items():
            depth.add_metric([name], sup.queue_pending)
            in_flight.add_metric([name], sup.in_flight)
            in_use.add_metric([name], sup.connections_in_use)
            cap.add_metric([name], sup.config.max_connections)
            for member in State:
                state.add_metric([name, member.name], 1.0 if sup.state is member else 0.0)
        return iter(families)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("hestia_queue_depth", "Requests waiting in the hold queue (for "
                              "a start, or for a connection slot).", labels=["service"]),
            GaugeMetricFamily("hestia_in_flight", "Leases held (requests being served).",
                              labels=["service"]),
            GaugeMetricFamily("hestia_connections_in_use",
                              "Leases counted against max_connections.", labels=["service"]),
            GaugeMetricFamily("hestia_max_connections",
                              "max_connections of the backend (0: no cap).",
                              labels=["service"]),
            GaugeMetricFamily("hestia_backend_state",
                              "1 for the backend's current state, 0 for the others.",
                              labels=["service", "state"]),
        )


class Metrics:
    """One per gateway: `bus.add_listener(metrics.listen)`, and the proxy calls `request`."""

    def __init__(self, supervisors: Mapping[str, Supervisor]) -> None:
        self._supervisors = supervisors
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("hestia_requests_total", "Proxied requests, by HTTP status.",
                                ["service", "status"], registry=registry)
        self.request_duration = Histogram(
            "hestia_request_duration_seconds", "Proxied requests, from arrival to the end.",
            ["service"], buckets=REQUEST_BUCKETS, registry=registry)
        self.first_byte_seconds = Histogram(
            "hestia_upstream_first_byte_seconds", "Upstream time to the first response byte.",
            ["service"], buckets=REQUEST_BUCKETS, registry=registry)
        self.queue_wait_seconds = Histogram(
            "hestia_queue_wait_seconds", "How long requests that waited waited for a lease.",
            ["service"], buckets=QUEUE_BUCKETS, registry=registry)
        self.cold_start = Histogram(
            "hestia_cold_start_seconds", "Whole starts, from COLD to READY.",
            ["service", "machine"], buckets=COLD_START_BUCKETS, registry=registry)
        self.starts = Counter("hestia_starts_total", "Starts, by how they ended.",
                              ["service", "result"], registry=registry)
        self.start_attempts = Counter("hestia_start_attempts_total", "Start attempts.",
                                      ["service", "machine", "result"], registry=registry)
        self.stops = Counter("hestia_stops_total", "Backends stopped or crashed, by reason.",
                             ["service", "reason"], registry=registry)
        self.rejections = Counter("hestia_queue_rejections_total",
                                  "Requests refused by the hold queue.",
                                  ["service", "reason"], registry=registry)
        self.semaphore_tasks = Histogram(
            "hestia_semaphore_task_duration_seconds", "Semaphore tasks, by action and status.",
            ["service", "action", "status"], buckets=TASK_BUCKETS, registry=registry)
        self.routing = Counter("hestia_routing_decisions_total",
                               "Backends chosen by a strategy, and why.",
                               ["service", "backend", "reason"], registry=registry)
        registry.register(_SupervisorGauges(supervisors))

        # The hot path: one dict lookup, then the children (label lookups take a lock and
        # build tuples; this does not).
        self._request_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._first_byte: dict[str, Any] = {}
        self._queue_wait: dict[str, Any] = {}
        for name in supervisors:
            self._child_for(name)
            for result in START_RESULTS:
                self.starts.labels(name, result)
            for reason in STOP_REASONS:
                self.stops.labels(name, reason)
            for reason in REJECTIONS:
                self.rejections.labels(name, reason)
        self._handlers: dict[str, Callable[[str, dict[str, Any]], None]] = {
            "ready": self._on_ready,
            "start_failed": self._on_start_failed,
            "start_attempt": self._on_start_attempt,
            "stopped": self._on_stopped,
            "crashed": self._on_crashed,
            "queue_overflow": self._on_queue_overflow,
            "queue_timeout": self._on_queue_timeout,
            "semaphore_task": self._on_semaphore_task,
        }

    def __repr__(self) -> str:
        return f"<Metrics services={len(self._supervisors)}>"

    # --- the proxy's hot path ------------------------------------------------------------------

    def request(self, service: str, status: int, duration_s: float) -> None:
        """One proxied request finished. A service not configured is not counted."""
        try:
            counter, histogram = self._request_children[service, status]
        except KeyError:
            if service not in self._supervisors:
                return
            histogram = self._child_for(service)
            counter = self.requests.labels(service, str(status))
            self._request_children[service, status] = (counter, histogram)
        counter.inc()
        histogram.observe(duration_s)

    def routed(self, service: str, backend: str, reason: str) -> None:
        """A strategy chose `backend` of `service` (several backends) for `reason`."""
        if f"{service}@{backend}" in self._supervisors:
            self.routing.labels(service, backend, _bounded(reason, ROUTE_REASONS)).inc()

    def first_byte(self, service: str, seconds: float) -> None:
        child = self._first_byte.get(service)
        if child is not None:
            child.observe(seconds)

    def queue_wait(self, service: str, seconds: float) -> None:
        child = self._queue_wait.get(service)
        if child is not None:
            child.observe(seconds)

    def _child_for(self, service: str) -> Any:
        """Create a service's histogram children; return its request-duration child."""
        self._first_byte[service] = self.first_byte_seconds.labels(service)
        self._queue_wait[service] = self.queue_wait_seconds.labels(service)
        return self.request_duration.labels(service)

    # --- events --------------------------------------------------------------------------------

    def listen(self, event: Event) -> None:
        """An `EventBus` listener. Never raises: a malformed event is logged and skipped."""
        handler = self._handlers.get(event.kind)
        if handler is None or event.service not in self._supervisors:
            return
        try:
            handler(event.service, event.data)
        except Exception:
            log.exception("metrics_event_failed", kind=event.kind, service=event.service)

    def _machine(self, machine: Any) -> str:
        for sup in self._supervisors.values():
            for placement in sup.placements:
                if placement.machine == machine:
                    return machine
        return OTHER

    def _on_ready(self, service: str, data: dict[str, Any]) -> None:
        self.starts.labels(service, "ready").inc()
        if data.get("duration_ms") is not None:
            self.cold_start.labels(service, self._machine(data.get("machine"))).observe(
                data["duration_ms"] / 1000)

    def _on_start_failed(self, service: str, data: dict[str, Any]) -> None:
        self.starts.labels(service, "cancelled" if data.get("cancelled") else "failed").inc()

    def _on_start_attempt(self, service: str, data: dict[str, Any]) -> None:
        self.start_attempts.labels(service, self._machine(data.get("machine")),
                                   "ok" if data.get("ok") else "failed").inc()

    def _on_stopped(self, service: str, data: dict[str, Any]) -> None:
        reason = _bounded(data.get("reason"), STOPPED_REASONS)
        self.stops.labels(service, reason).inc()

    def _on_crashed(self, service: str, data: dict[str, Any]) -> None:
        self.stops.labels(service, "crash").inc()

    def _on_queue_overflow(self, service: str, data: dict[str, Any]) -> None:
        self.rejections.labels(service, "full").inc()

    def _on_queue_timeout(self, service: str, data: dict[str, Any]) -> None:
        self.rejections.labels(service, "timeout").inc()

    def _on_semaphore_task(self, service: str, data: dict[str, Any]) -> None:
        if data.get("duration_ms") is None:
            return
        self.semaphore_tasks.labels(
            service, _bounded(data.get("action"), TASK_ACTIONS),
            _bounded(data.get("status"), TASK_STATUSES)).observe(data["duration_ms"] / 1000)

    # --- exposition ----------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def as_json(self) -> dict[str, Any]:
        """The same samples as `render`, as JSON; families named as in the text exposition."""
        families = []
        for family in self.registry.collect():
            # The text format names a counter family after its `_total` sample; so does this.
            name = f"{family.name}_total" if family.type == "counter" else family.name
            families.append({
                "name": name, "type": family.type, "help": family.documentation,
                "samples": [{"name": s.name, "labels": dict(s.labels), "value": s.value}
                            for s in family.samples]})
        return {"metrics": families}
