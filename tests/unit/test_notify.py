"""Webhooks in virtual time: retried with backoff, bounded, filtered, in order."""

from __future__ import annotations

import json

import httpx
import trio

from hestia.config import NotifyConfig
from hestia.events import EventBus
from hestia.notify import Notifier


class Receiver:
    """Answers `statuses` in turn (then 200), noting when each POST arrived."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.calls: list[tuple[float, dict]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((trio.current_time(), json.loads(request.content)))
        return httpx.Response(self.statuses.pop(0) if self.statuses else 200)


async def start(nursery, receiver: Receiver, **hook) -> tuple[EventBus, Notifier]:
    bus = EventBus()
    notifier = Notifier([NotifyConfig(url="http://hooks.test/in", **hook)], bus,
                        transport=httpx.MockTransport(receiver))
    await nursery.start(notifier.run)
    return bus, notifier


async def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(nursery,
                                                                           autojump_clock):
    receiver = Receiver(500, 503)
    bus, notifier = await start(nursery, receiver)
    bus.publish("ready", "ollama", machine="gpu", duration_ms=1200.0, attempts=1)
    await trio.sleep(10)
    assert [t for t, _ in receiver.calls] == [0.0, 1.0, 3.0]
    body = receiver.calls[-1][1]
    assert (body["kind"], body["service"], body["duration_ms"], body["seq"]) == (
        "ready", "ollama", 1200.0, 1)
    assert (notifier.delivered, notifier.dropped) == (1, 0)


async def test_delivery_is_bounded_and_the_event_dropped_after_the_last_attempt(
        nursery, autojump_clock):
    receiver = Receiver(*[500] * 100)
    bus, notifier = await start(nursery, receiver, attempts=4)
    bus.publish("crashed", "ollama", detail="exited with status 1", exit_status=1)
    bus.publish("ready", "ollama", machine="local", duration_ms=5.0, attempts=1)
    await trio.sleep(60)
    # 4 tries of the first (at 0, 1, 3, 7), then 4 of the second (at 7, 8, 10, 14).
    assert [t for t, _ in receiver.calls] == [0.0, 1.0, 3.0, 7.0, 7.0, 8.0, 10.0, 14.0]
    assert [b["kind"] for _, b in receiver.calls] == ["crashed"] * 4 + ["ready"] * 4
    assert (notifier.delivered, notifier.dropped) == (0, 2)


async def test_only_the_chosen_kinds_and_services_are_sent(nursery, autojump_clock):
    receiver = Receiver()
    bus, _ = await start(nursery, receiver, events=["crashed", "start_failed"],
                         services=["ollama"])
    bus.publish("ready", "ollama", machine="local", duration_ms=5.0, attempts=1)
    bus.publish("crashed", "comfyui", detail="x", exit_status=1)
    bus.publish("start_failed", "ollama", detail="no GPU", attempts=3, cancelled=False,
                duration_ms=9.0)
    bus.publish("crashed", "ollama", detail="y", exit_status=2)
    await trio.sleep(1)
    assert [(b["kind"], b["service"]) for _, b in receiver.calls] == [
        ("start_failed", "ollama"), ("crashed", "ollama")]


async def test_a_receiver_that_never_answers_times_out_each_try(nursery, autojump_clock):
    async def hang(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()

    bus = EventBus()
    notifier = Notifier([NotifyConfig(url="http://hooks.test/in", timeout="2s", attempts=2)],
                        bus, transport=httpx.MockTransport(hang))
    await nursery.start(notifier.run)
    bus.publish("stopped", "ollama", reason="idle", duration_ms=3.0)
    await trio.sleep(4.5)
    assert notifier.dropped == 0
    await trio.sleep(0.6)  # 2 s, 1 s of backoff, 2 s: given up at 5 s
    assert notifier.dropped == 1
