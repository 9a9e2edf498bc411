"""Browser sessions (sessions.py) and the rules of the login (http/login.py): sessions stored
hashed, expiring, ending with their key; failed logins backing off in virtual time; `next` never
leaving the host; the same-origin rule; the cookie never going upstream.

The store is a real file in `tmp_path` (its synchronous reads and writes); the caches and the
backoff follow trio's clock, so `autojump_clock` moves them."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from hestia.http.auth import hash_key, new_key
from hestia.http.context import facts
from hestia.http.forwarding import forwarded_headers
from hestia.http.login import LoginBackoff, safe_next, same_origin
from hestia.sessions import CACHE_S, Sessions, session_token
from hestia.store import Store

TTL = 3600.0


class Wall:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path):
    store = Store(tmp_path / "data" / "hestia.db")
    yield store
    store.close()


@pytest.fixture
def wall() -> Wall:
    return Wall()


def add_key(store: Store, name: str, scope: str = "admin") -> str:
    key = new_key()
    store.add_key(name, scope, hash_key(key), key[:12])
    return key


async def test_a_session_has_its_keys_scope_and_only_its_hash_is_stored(store, wall, tmp_path):
    key = add_key(store, "laptop", "read")
    sessions = Sessions(store, TTL, wall_clock=wall)
    token = sessions.create(hash_key(key))
    session = sessions.find(token)
    assert session is not None
    assert (session.key_name, session.scope, session.expires_at) == ("laptop", "read",
                                                                      wall.now + TTL)
    assert len(token) >= 43  # 256 random bits
    store.close()
    dump = "\n".join(sqlite3.connect(tmp_path / "data" / "hestia.db").iterdump())
    assert token not in dump
    assert session.token_hash in dump


async def test_a_tampered_or_unknown_token_finds_nothing(store, wall):
    sessions = Sessions(store, TTL, wall_clock=wall)
    token = sessions.create(hash_key(add_key(store, "k")))
    assert sessions.find(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert sessions.find("") is None
    assert sessions.find(token) is not None


async def test_a_session_expires_after_its_ttl(store, wall):
    sessions = Sessions(store, TTL, wall_clock=wall)
    token = sessions.create(hash_key(add_key(store, "k")))
    wall.now += TTL - 1
    assert sessions.find(token) is not None
    wall.now += 1
    assert sessions.find(token) is None  # the cached row is checked again, every time


async def test_expired_sessions_are_deleted_at_the_next_login(store, wall):
    sessions = Sessions(store, TTL, wall_clock=wall)
    key_hash = hash_key(add_key(store, "k"))
    sessions.create(key_hash)
    wall.now += TTL
    sessions.create(key_hash)
    assert store._db.execute("SELECT count(*) FROM sessions").fetchone() == (1,)


async def test_revoking_the_key_ends_its_sessions_within_the_cache_time(
        store, wall, autojump_clock):
    sessions = Sessions(store, TTL, wall_clock=wall)
    token = sessions.create(hash_key(add_key(store, "phone")))
    assert sessions.find(token) is not None
    assert store.revoke_key("phone")
    await trio.sleep(CACHE_S - 0.1)
    assert sessions.find(token) is not None  # cached, as keys are
    await trio.sleep(0.2)
    assert sessions.find(token) is None


async def test_a_key_made_again_under_a_revoked_name_does_not_revive_old_sessions(store, wall):
    sessions = Sessions(store, TTL, wall_clock=wall)
    token = sessions.create(hash_key(add_key(store, "phone")))
    store.revoke_key("phone")
    add_key(store, "phone")
    sessions._cache.clear()
    assert sessions.find(token) is None


async def test_logout_ends_the_session_at_once(store, wall):
    sessions = Sessions(store, TTL, wall_clock=wall)
    token = sessions.create(hash_key(add_key(store, "k")))
    assert sessions.find(token) is not None
    sessions.end(token)
    assert sessions.find(token) is None
    assert store._db.execute("SELECT count(*) FROM sessions").fetchone() == (0,)


async def test_the_table_survives_a_second_opening(store, wall, tmp_path):
    sessions = Sessions(store, TTL, wall_clock=wall)
    token = sessions.create(hash_key(add_key(store, "k")))
    store.close()
    again = Store(tmp_path / "data" / "hestia.db")
    try:
        assert Sessions(again, TTL, wall_clock=wall).find(token) is not None
    finally:
        again.close()


@pytest.mark.parametrize(("headers", "token"), [
    ([(b"cookie", b"hestia_session=abc")], "abc"),
    ([(b"cookie", b"a=1; hestia_session=abc; b=2")], "abc"),
    ([(b"cookie", b"a=1"), (b"cookie", b"hestia_session=\"abc\"")], "abc"),
    ([(b"cookie", b"xhestia_session=abc")], None),
    ([(b"cookie", b"hestia_session=")], None),
    ([(b"x-cookie", b"hestia_session=abc")], None),
    ([], None),
])
def test_the_session_token_is_read_from_the_cookies(headers, token):
    assert session_token(headers) == token


# --- failed logins back off -----------------------------------------------------------------

async def test_failed_logins_back_off_after_five_with_a_doubling_wait(autojump_clock):
    backoff = LoginBackoff(free=5, first_delay=1, max_delay=8)
    for _ in range(5):
        assert backoff.retry_after("10.0.0.9") == 0
        backoff.failed("10.0.0.9")
    assert backoff.retry_after("10.0.0.9") == 1
    assert backoff.retry_after("10.0.0.8") == 0  # per address
    waits = []
    for _ in range(6):
        await trio.sleep(backoff.retry_after("10.0.0.9"))
        assert backoff.retry_after("10.0.0.9") == 0
        backoff.failed("10.0.0.9")
        waits.append(backoff.retry_after("10.0.0.9"))
    assert waits == [2, 4, 8, 8, 8, 8]


async def test_a_successful_login_or_a_quiet_while_forgets_the_failures(autojump_clock):
    backoff = LoginBackoff(free=2, first_delay=1, max_delay=4, forget_after=60)
    for _ in range(3):
        backoff.failed("a")
    assert backoff.retry_after("a") == 2
    backoff.succeeded("a")
    assert backoff.retry_after("a") == 0
    for _ in range(3):
        backoff.failed("a")
    await trio.sleep(60)
    assert backoff.retry_after("a") == 0
    backoff.failed("a")
    assert backoff.retry_after("a") == 0  # one failure since: free again


async def test_the_backoff_remembers_a_bounded_number_of_addresses(autojump_clock):
    backoff = LoginBackoff(free=1, max_clients=100)
    for i in range(1000):
        backoff.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(backoff._failures) == 100
    assert backoff.retry_after("10.0.3.231") > 0  # the newest are kept
    assert backoff.retry_after("10.0.0.0") == 0


# --- next, origins ----------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("/", "/"),
    ("/services/nb/lab?x=1&y=%2F#top", "/services/nb/lab?x=1&y=%2F#top"),
    ("/v1/services", "/v1/services"),
    (None, "/"), ("", "/"),
    ("https://evil.example/", "/"),
    ("//evil.example/", "/"),
    ("/\\evil.example/", "/"),
    ("\\\\evil.example", "/"),
    ("/\t/evil.example", "/"),
    ("/ /evil.example", "/"),
    ("javascript:alert(1)", "/"),
    ("evil.example", "/"),
    ("/é", "/"),
    ("/__hestia/login?next=/", "/"),
    ("/__hestia/logout", "/"),
    ("/" + "a" * 3000, "/"),
])
def test_next_is_only_ever_a_path_on_this_host(value, expected):
    assert safe_next(value) == expected


def request(*headers: tuple[bytes, bytes], scheme: str = "http") -> dict[str, Any]:
    return {"type": "http", "scheme": scheme,
            "headers": [(b"host", b"nb.localhost:8080"), *headers]}


@pytest.mark.parametrize(("scope", "strict", "same"), [
    (request((b"origin", b"http://nb.localhost:8080")), True, True),
    (request((b"origin", b"HTTP://NB.localhost:8080")), True, True),
    (request((b"origin", b"http://localhost:8080")), True, False),  # same site, other origin
    (request((b"origin", b"http://nb.localhost:8081")), True, False),
    (request((b"origin", b"https://nb.localhost:8080")), True, False),
    (request((b"origin", b"null")), True, False),
    (request((b"origin", b"https://nb.localhost:8080")
             , (b"x-forwarded-proto", b"https")), True, True),
    (request((b"origin", b"https://nb.localhost:8080"), scheme="https"), True, True),
    (request((b"sec-fetch-site", b"same-origin")), True, True),
    (request((b"sec-fetch-site", b"same-site")), True, False),
    (request((b"sec-fetch-site", b"same-origin"), (b"origin", b"http://evil.example")), True,
     False),
    (request(), True, False),
    (request(), False, True),
    ({"type": "http", "scheme": "http", "headers": [(b"origin", b"http://x")]}, True, False),
])
def test_same_origin(scope, strict, same):
    assert same_origin(scope, strict=strict) is same


def test_default_ports_are_the_same_origin():
    scope = {"type": "http", "scheme": "https",
             "headers": [(b"host", b"hestia.example.com:443"),
                         (b"origin", b"https://hestia.example.com")]}
    assert same_origin(scope, strict=True)


# --- the cookie never goes upstream -----------------------------------------------------------

@pytest.mark.parametrize(("cookies", "upstream"), [
    ([b"hestia_session=tok"], []),
    ([b"a=1; hestia_session=tok; b=2"], [b"a=1; b=2"]),
    ([b"a=1;hestia_session=tok"], [b"a=1"]),
    ([b"hestia_session=tok", b"a=1"], [b"a=1"]),
    ([b"a=1; stolen=hestia_" + b"k" * 43], [b"a=1"]),  # a key pasted as a cookie
    ([b"_xsrf=2|abc; username-nb=xyz"], [b"_xsrf=2|abc; username-nb=xyz"]),  # untouched
])
def test_the_session_cookie_and_keys_are_taken_out_of_cookie_headers(cookies, upstream):
    scope = {"type": "http", "method": "GET", "http_version": "1.1", "client": ("10.0.0.1", 1),
             "headers": [(b"host", b"x"), *[(b"cookie", c) for c in cookies]]}
    facts(scope).forward_key = True  # not even then
    out = forwarded_headers(scope, "rid", drop=frozenset(), proto=b"http")
    assert [v for k, v in out if k == b"cookie"] == upstream
