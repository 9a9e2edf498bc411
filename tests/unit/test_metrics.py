"""Metrics: counters and histograms from events and the proxy, gauges read at scrape time."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from hestia.events import EventBus
from hestia.lifecycle.supervisor import Supervisor
from hestia.metrics import Metrics
from tests.fakes import FakeLauncher, FakeProbe, service, supervisor


def scrape(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the text exposition, keyed by (sample name, labels)."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def label_values(metrics: Metrics, label: str) -> set[str]:
    body, _ = metrics.render()
    return {s.labels[label] for family in text_string_to_metric_families(body.decode())
            for s in family.samples if label in s.labels}


def two_services() -> dict[str, Supervisor]:
    gpu = FakeLauncher()
    return {"echo": supervisor(),
            "llm": Supervisor("llm", service(machine="gpu"), gpu, FakeProbe(gpu))}


def wired() -> tuple[EventBus, Metrics]:
    bus = EventBus()
    metrics = Metrics(two_services())
    bus.add_listener(metrics.listen)
    return bus, metrics


def test_requests_are_counted_by_service_and_status():
    _, metrics = wired()
    metrics.request("echo", 200, 0.003)
    metrics.request("echo", 200, 0.2)
    metrics.request("echo", 502, 1.5)
    metrics.request("llm", 200, 120.0)  # a long stream: only +Inf
    samples = scrape(metrics)
    assert value(samples, "hestia_requests_total", service="echo", status="200") == 2
    assert value(samples, "hestia_requests_total", service="echo", status="502") == 1
    assert value(samples, "hestia_requests_total", service="llm", status="200") == 1
    assert value(samples, "hestia_request_duration_seconds_count", service="echo") == 3
    assert value(samples, "hestia_request_duration_seconds_sum",
                 service="echo") == pytest.approx(1.703)
    assert value(samples, "hestia_request_duration_seconds_bucket",
                 service="echo", le="0.005") == 1
    assert value(samples, "hestia_request_duration_seconds_bucket",
                 service="llm", le="60.0") == 0
    assert value(samples, "hestia_request_duration_seconds_bucket",
                 service="llm", le="+Inf") == 1


def test_first_byte_and_queue_wait_are_observed_per_service():
    _, metrics = wired()
    metrics.first_byte("echo", 0.05)
    metrics.queue_wait("llm", 12.0)
    metrics.queue_wait("llm", 3.0)
    samples = scrape(metrics)
    assert value(samples, "hestia_upstream_first_byte_seconds_count", service="echo") == 1
    assert value(samples, "hestia_upstream_first_byte_seconds_sum", service="echo") == 0.05
    assert value(samples, "hestia_upstream_first_byte_seconds_count", service="llm") == 0
    assert value(samples, "hestia_queue_wait_seconds_count", service="llm") == 2
    assert value(samples, "hestia_queue_wait_seconds_sum", service="llm") == 15.0
    assert value(samples, "hestia_queue_wait_seconds_bucket", service="llm", le="10.0") == 1


def test_lifecycle_events_are_counted():
    bus, metrics = wired()
    bus.publish("start_attempt", "llm", attempt=1, machine="gpu", launcher="semaphore",
                ok=False, duration_ms=900.0, detail="boom")
    bus.publish("start_attempt", "llm", attempt=2, machine="gpu", launcher="semaphore",
                ok=True, duration_ms=95_000.0)
    bus.publish("ready", "llm", machine="gpu", duration_ms=96_000.0, attempts=2)
    bus.publish("start_failed", "echo", detail="x", attempts=[], cancelled=False,
                duration_ms=10.0)
    bus.publish("start_failed", "echo", detail="x", attempts=[], cancelled=True,
                duration_ms=10.0)
    bus.publish("stopped", "echo", reason="idle", duration_ms=3.0)
    bus.publish("stopped", "echo", reason="something new", duration_ms=3.0)
    for reason in ("evicted", "dependency_stopped", "reload", "removed"):
        bus.publish("stopped", "echo", reason=reason, duration_ms=3.0)
    bus.publish("crashed", "llm", detail="exited", exit_status=1)
    bus.publish("queue_overflow", "echo", queue_max=10, state="STARTING")
    bus.publish("queue_timeout", "echo", waited_s=30.0, state="STARTING")
    bus.publish("queue_timeout", "echo", waited_s=30.0, state="STARTING")
    samples = scrape(metrics)
    attempts = "hestia_start_attempts_total"
    assert value(samples, attempts, service="llm", machine="gpu", result="failed") == 1
    assert value(samples, attempts, service="llm", machine="gpu", result="ok") == 1
    assert value(samples, "hestia_starts_total", service="llm", result="ready") == 1
    assert value(samples, "hestia_starts_total", service="echo", result="failed") == 1
    assert value(samples, "hestia_starts_total", service="echo", result="cancelled") == 1
    assert value(samples, "hestia_starts_total", service="echo", result="ready") == 0
    assert value(samples, "hestia_cold_start_seconds_sum", service="llm", machine="gpu") == 96
    assert value(samples, "hestia_cold_start_seconds_bucket",
                 service="llm", machine="gpu", le="60.0") == 0
    assert value(samples, "hestia_cold_start_seconds_bucket",
                 service="llm", machine="gpu", le="120.0") == 1
    assert value(samples, "hestia_stops_total", service="echo", reason="idle") == 1
    assert value(samples, "hestia_stops_total", service="echo", reason="other") == 1
    for reason in ("evicted", "dependency_stopped", "reload", "removed"):
        assert value(samples, "hestia_stops_total", service="echo", reason=reason) == 1
    assert value(samples, "hestia_stops_total", service="llm", reason="crash") == 1
    assert value(samples, "hestia_queue_rejections_total", service="echo", reason="full") == 1
    assert value(samples, "hestia_queue_rejections_total", service="echo",
                 reason="timeout") == 2


def test_semaphore_tasks_are_timed_and_unfinished_ones_skipped():
    bus, metrics = wired()
    bus.publish("semaphore_task", "llm", action="start", task_id=7, template_id=1,
                status="success", machine="gpu", duration_ms=42_000.0, error=None)
    bus.publish("semaphore_task", "llm", action="start", task_id=8, template_id=1,
                status="not_created", machine="gpu", duration_ms=None, error="refused")
    bus.publish("semaphore_task", "llm", action="stop", task_id=9, template_id=2,
                status="/etc/passwd", machine="gpu", duration_ms=1000.0, error=None)
    samples = scrape(metrics)
    name = "hestia_semaphore_task_duration_seconds_count"
    assert value(samples, name, service="llm", action="start", status="success") == 1
    assert value(samples, name, service="llm", action="start", status="not_created") is None
    assert value(samples, name, service="llm", action="stop", status="other") == 1


def test_unknown_services_and_machines_create_no_label_values():
    bus, metrics = wired()
    bus.publish("ready", "ghost", machine="gpu", duration_ms=1.0, attempts=1)
    bus.publish("stopped", "ghost", reason="idle", duration_ms=1.0)
    bus.publish("queue_overflow", None, queue_max=1, state="COLD")
    bus.publish("start_attempt", "echo", attempt=1, machine="a-new-box", launcher="process",
                ok=True, duration_ms=5.0)
    metrics.request("ghost", 200, 0.1)
    metrics.first_byte("ghost", 0.1)
    metrics.queue_wait("ghost", 0.1)
    assert label_values(metrics, "service") == {"echo", "llm"}
    assert label_values(metrics, "machine") == {"other"}


def test_a_malformed_event_does_not_raise():
    bus, metrics = wired()
    bus.publish("ready", "echo", machine="local", duration_ms="soon", attempts=1)
    metrics.listen(bus.publish("semaphore_task", "echo"))  # listen itself never raises


def test_gauges_read_the_supervisors_at_scrape_time():
    _, metrics = wired()
    samples = scrape(metrics)
    assert value(samples, "hestia_backend_state", service="echo", state="COLD") == 1
    assert value(samples, "hestia_backend_state", service="echo", state="READY") == 0
    assert value(samples, "hestia_in_flight", service="llm") == 0
    assert value(samples, "hestia_queue_depth", service="llm") == 0


async def hold_until(sup: Supervisor, done: trio.Event) -> None:
    async with sup.lease():
        await done.wait()


async def test_gauges_follow_a_backend_through_its_start(nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=2))
    metrics = Metrics({"echo": sup})
    await nursery.start(sup.run)
    done = trio.Event()
    nursery.start_soon(hold_until, sup, done)
    await trio.sleep(1)
    samples = scrape(metrics)
    assert value(samples, "hestia_backend_state", service="echo", state="STARTING") == 1
    assert value(samples, "hestia_backend_state", service="echo", state="COLD") == 0
    assert value(samples, "hestia_queue_depth", service="echo") == 1
    assert value(samples, "hestia_in_flight", service="echo") == 0
    await trio.sleep(2)
    samples = scrape(metrics)
    for state in ("COLD", "STARTING", "STOPPING", "FAILED"):
        assert value(samples, "hestia_backend_state", service="echo", state=state) == 0
    assert value(samples, "hestia_backend_state", service="echo", state="READY") == 1
    assert value(samples, "hestia_in_flight", service="echo") == 1
    assert value(samples, "hestia_queue_depth", service="echo") == 0
    done.set()
    await trio.sleep(0.1)
    assert value(scrape(metrics), "hestia_in_flight", service="echo") == 0


async def test_connection_slots_and_the_requests_waiting_for_one_are_gauged(
        nursery, autojump_clock):
    sup = supervisor(FakeLauncher(start_s=1), max_connections=2)
    metrics = Metrics({"echo": sup})
    await nursery.start(sup.run)
    done = trio.Event()
    for _ in range(3):
        nursery.start_soon(hold_until, sup, done)
    await trio.sleep(2)
    samples = scrape(metrics)
    assert value(samples, "hestia_max_connections", service="echo") == 2
    assert value(samples, "hestia_connections_in_use", service="echo") == 2
    assert value(samples, "hestia_in_flight", service="echo") == 2
    assert value(samples, "hestia_queue_depth", service="echo") == 1
    families = {f["name"]: f for f in metrics.as_json()["metrics"]}
    assert families["hestia_connections_in_use"]["samples"] == [
        {"name": "hestia_connections_in_use", "labels": {"service": "echo"}, "value": 2.0}]
    assert families["hestia_max_connections"]["type"] == "gauge"
    done.set()
    await trio.sleep(0.1)
    samples = scrape(metrics)
    assert value(samples, "hestia_connections_in_use", service="echo") == 0
    assert value(samples, "hestia_queue_depth", service="echo") == 0


def test_as_json_has_the_same_samples_as_the_text():
    bus, metrics = wired()
    metrics.request("echo", 404, 0.01)
    bus.publish("crashed", "llm", detail="exited", exit_status=1)
    families = {f["name"]: f for f in metrics.as_json()["metrics"]}
    requests = families["hestia_requests_total"]
    assert requests["type"] == "counter"
    assert requests["help"] == "Proxied requests, by HTTP status."
    [sample] = [s for s in requests["samples"] if s["name"] == "hestia_requests_total"]
    assert sample == {"name": "hestia_requests_total",
                      "labels": {"service": "echo", "status": "404"}, "value": 1.0}
    assert families["hestia_backend_state"]["type"] == "gauge"
    from_json: dict[tuple[str, frozenset[tuple[str, str]]], Any] = {
        (s["name"], frozenset(s["labels"].items())): s["value"]
        for f in families.values() for s in f["samples"]}
    from_text = scrape(metrics)
    created = {k for k in from_json if k[0].endswith("_created")}
    assert {k: v for k, v in from_json.items() if k not in created} == \
        {k: v for k, v in from_text.items() if not k[0].endswith("_created")}


def test_two_gateways_do_not_share_samples():
    first, second = Metrics(two_services()), Metrics(two_services())
    first.request("echo", 200, 0.01)
    assert value(scrape(first), "hestia_requests_total", service="echo", status="200") == 1
    assert value(scrape(second), "hestia_requests_total", service="echo", status="200") is None
