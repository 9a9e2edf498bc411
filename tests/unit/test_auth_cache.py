"""The API-key lookup cache (http/auth.py) in virtual time: a key revoked or created while the
gateway runs is seen exactly `CACHE_S` after its last lookup, not before and not later.

The store is a real file in `tmp_path` (its reads are synchronous); the cache follows trio's
clock, so `autojump_clock` moves it. End to end, with the CLI revoking a key beside a running
gateway: tests/integration/test_state.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from hestia import parse_config
from hestia.http.auth import CACHE_S, AuthGate, hash_key, new_key
from hestia.store import Store


@pytest.fixture
def store(tmp_path: Path):
    store = Store(tmp_path / "data" / "hestia.db")
    yield store
    store.close()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def gate(store: Store, tmp_path: Path) -> AuthGate:
    config = parse_config({"data_dir": str(tmp_path / "data"), "auth": {"enabled": True}},
                          env={})
    return AuthGate(app, config, store)


async def status(gate: AuthGate, key: str) -> int:
    """The status of `GET /v1/services` with `key`."""
    scope = {"type": "http", "method": "GET", "path": "/v1/services",
             "raw_path": b"/v1/services", "query_string": b"", "scheme": "http",
             "http_version": "1.1", "client": ("127.0.0.1", 50000),
             "headers": [(b"host", b"localhost"), (b"x-api-key", key.encode())]}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await gate(scope, receive, send)
    return sent[0]["status"]


def add_key(store: Store, name: str) -> str:
    key = new_key()
    store.add_key(name, "read", hash_key(key), key[:12])
    return key


async def test_a_revoked_key_works_until_its_cached_lookup_expires(store, tmp_path,
                                                                   autojump_clock):
    key = add_key(store, "laptop")
    auth = gate(store, tmp_path)
    await trio.sleep_until(10)
    assert await status(auth, key) == 200  # looked up at 10: cached until 10 + CACHE_S
    store.revoke_key("laptop")
    await trio.sleep_until(12)
    assert await status(auth, key) == 200  # the cached lookup, not renewed by this use
    await trio.sleep_until(10 + CACHE_S - 0.001)
    assert await status(auth, key) == 200
    await trio.sleep_until(10 + CACHE_S)
    assert await status(auth, key) == 401


async def test_a_key_created_after_a_failed_lookup_works_once_that_expires(store, tmp_path,
                                                                          autojump_clock):
    key = new_key()
    auth = gate(store, tmp_path)
    assert trio.current_time() == 0
    assert await status(auth, key) == 401  # unknown at 0: that answer is cached too
    store.add_key("late", "read", hash_key(key), key[:12])
    await trio.sleep_until(CACHE_S - 0.001)
    assert await status(auth, key) == 401
    await trio.sleep_until(CACHE_S)
    assert await status(auth, key) == 200
