"""Browser sessions: what the login page (http/login.py) trades an API key for.

A session is a random token (256 bits) in the `hestia_session` cookie. Only its SHA-256 is
stored, in the `sessions` table next to `auth_keys`, with the hash of the key it was made from
and when it expires: as for keys, a fast hash is right for a random token, and a stolen database
yields no cookie. The session has its key's scope, and lives while that key does: a lookup joins
the key's row, so revoking the key ends its sessions too (within `CACHE_S`, as for keys), and a
key made again under a revoked key's name is another key, whose hash no old session names.

Sessions expire `ttl` seconds after the login (wall-clock time, since they outlive restarts), and
end at logout. Expired rows are deleted at each login, so the table holds at most the sessions of
one `ttl`.

Writes are synchronous, like API keys' (`Store.transaction`): a login is rare and wants its row
written before the redirect that uses it. The table is created when the first `Sessions` opens a
store (`if_not_exists`, in one transaction, as the store's migrations do), so a database without
it (written by a Hestia before sessions) needs no migration.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlite_utils import Database

from .caching import cached
from .store import Store

__all__ = ["CACHE_S", "COOKIE", "Session", "Sessions", "session_token"]

COOKIE = "hestia_session"
_COOKIE = COOKIE.encode()
CACHE_S = 5.0


@dataclass(frozen=True, slots=True)
class Session:
    """A live session: whose key made it (its name, for logs) and what it may do."""

    key_name: str
    scope: str
    expires_at: float  # wall clock
    token_hash: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def session_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The session token among the request's cookies (the first, if several claim to be)."""
    for name, value in headers:
        if name != b"cookie" or _COOKIE not in value:
            continue
        for pair in value.split(b";"):
            cookie, eq, token = pair.strip().partition(b"=")
            if eq and cookie == _COOKIE:
                token = token.strip().strip(b'"')
                return token.decode("latin-1") if token else None
    return None


def _create_table(db: Database) -> None:
    db["sessions"].create({
        "token_hash": str, "key_hash": str, "created_at": float, "expires_at": float,
    }, pk="token_hash", not_null={"key_hash", "created_at", "expires_at"}, if_not_exists=True)
    db["sessions"].create_index(["expires_at"], if_not_exists=True)


class Sessions:
    """The sessions in `store`'s database. Methods run on the event loop's thread, the only
    one that may use `store.db`."""

    def __init__(self, store: Store, ttl: float, *,
                 wall_clock: Callable[[], float] = time.time) -> None:
        """Raises `StoreError` when the table cannot be created."""
        self.ttl = ttl
        self._store = store
        self._wall = wall_clock
        self._cache: dict[str, tuple[float, Session | None]] = {}
        self._write("create the sessions table", _create_table)

    def __repr__(self) -> str:
        return f"<Sessions ttl={self.ttl:g}s cached={len(self._cache)}>"

    def _write(self, what: str, write: Callable[[Database], object]) -> None:
        with self._store.transaction(what) as db:
            write(db)

    def create(self, key_hash: str) -> str:
        """A new session for the key with this hash; returns its token (the cookie's value),
        which is stored nowhere. Raises `StoreError` when it cannot be written."""
        token = secrets.token_urlsafe(32)
        digest = hash_token(token)
        now = self._wall()

        def insert(db: Database) -> None:
            db.execute("DELETE FROM sessions WHERE expires_at <= ?", [now])
            db["sessions"].insert({"token_hash": digest, "key_hash": key_hash,
                                   "created_at": now, "expires_at": now + self.ttl})

        self._write("start a session", insert)
        return token

    def find(self, token: str) -> Session | None:
        """The live session with this token: None when there is none, it expired, or its key
        was revoked (seen within `CACHE_S`)."""
        digest = hash_token(token)
        session = cached(self._cache, digest, CACHE_S, self._read)
        if session is None or not hmac.compare_digest(session.token_hash, digest):
            return None
        if session.expires_at <= self._wall():
            return None
        return session

    def _read(self, digest: str) -> Session | None:
        # One indexed read: the session by its primary key, its key by the unique key_hash.
        rows = self._store.db.execute(
            "SELECT k.name, k.scope, s.expires_at, s.token_hash FROM sessions s "
            "JOIN auth_keys k ON k.key_hash = s.key_hash AND k.revoked_at IS NULL "
            "WHERE s.token_hash = ?", [digest]).fetchall()
        return Session(*rows[0]) if rows else None

    def end(self, token: str) -> None:
        """End the session with this token (nothing happens if there is none). Raises
        `StoreError` when it cannot be deleted."""
        digest = hash_token(token)
        self._cache.pop(digest, None)
        self._write("end a session",
                    lambda db: db.execute("DELETE FROM sessions WHERE token_hash = ?", [digest]))
