"""A small client for Ansible Semaphore's HTTP API (the part Hestia uses).

Written against `shared/semaphore/CONTRACT.md` (Semaphore v2.10; the paths are the same in later
releases, §8 lists what differs). What the contract says Semaphore does, and this client copes
with:

- Errors mostly have an empty body, so the status code is all there is to go on: 401 (bad or
  expired credentials), 403 (the user's role may not run tasks), 404 (unknown template or
  project, or the user is no member), 400 (an unknown *task*, not 404), 500 (on 2.10, an
  unknown *template* when a task is created; later releases say 404).
- A password login is a cookie session; it can expire, so a 401 is answered by logging in again
  once. An API token is sent as `Authorization: Bearer`. From about 2.12 a user with TOTP gets
  a session that every call refuses (401 `TOTP_REQUIRED`): such a user needs a token.
- A task's `environment` is a JSON object encoded as a *string*, and a stop needs a JSON body.
- A task's output is its whole log, never truncated by the server: `output_tail` reads it as a
  stream within `output_timeout` and keeps only the last lines.

Every request is bounded by `request_timeout`. Every failure is a `SemaphoreError` whose message
names the request and what went wrong, for the start failure a person reads.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import structlog
import trio

from ..config import SemaphoreConfig

__all__ = ["SemaphoreClient", "SemaphoreError"]

log = structlog.get_logger("hestia.semaphore")

_EXPLAIN = {
    400: "Semaphore refused the request (400; for a task: no such task in this project)",
    401: "Semaphore refused the credentials (401)",
    403: "the Semaphore user may not do this in the project (403; running tasks needs the "
         "task_runner role or above)",
    404: "no such template (or project), or the Semaphore user is not a member of the "
         "project (404)",
    500: "Semaphore failed (500; when creating a task on Semaphore 2.10: no such template, or "
         "the template cannot take this task, e.g. task variables for a template without an "
         "environment)",
}
TOTP = ("the Semaphore user {user!r} has two-factor authentication (TOTP) on: a password login "
        "gives a session that needs a one-time code, which Hestia cannot type (401 "
        "TOTP_REQUIRED). Use an API token (semaphore.token or SEMAPHORE_API_TOKEN)")
# What is kept of a task's output while it streams in: its last bytes, enough for many lines.
TAIL_BYTES = 256 * 1024
_ROW = '{"task_id"'  # each output row starts so (db.TaskOutput's first field)


class SemaphoreError(Exception):
    """A request to Semaphore failed. `reason` is one of `unreachable`, `timeout`, `http_<status>`,
    `bad_response`; `status` the HTTP status when there was one."""

    def __init__(self, message: str, *, reason: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.status = status


class SemaphoreClient:
    """One per gateway: a pooled httpx client, logged in at most once at a time."""

    def __init__(self, config: SemaphoreConfig, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.base_url = config.url.removesuffix("/api").rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/api", transport=transport, verify=config.verify_tls,
            timeout=httpx.Timeout(config.request_timeout,
                                  connect=min(5.0, config.request_timeout)),
            headers={"accept": "application/json"})
        self._login_lock = trio.Lock()
        self._logged_in = False

    def __repr__(self) -> str:
        how = "token" if self.config.token is not None else f"user {self.config.username}"
        return f"<SemaphoreClient {self.base_url} {how}>"

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- the API -------------------------------------------------------------------------------

    async def user(self) -> dict[str, Any]:
        """The authenticated user: a cheap check that the credentials work."""
        return await self._json("GET", "/user")

    async def templates(self, project: int) -> list[dict[str, Any]]:
        return await self._json("GET", f"/project/{project}/templates") or []

    async def template(self, project: int, template_id: int) -> dict[str, Any]:
        return await self._json("GET", f"/project/{project}/templates/{template_id}")

    async def template_tasks(self, project: int, template_id: int) -> list[dict[str, Any]]:
        """The template's newest tasks (up to 200), newest first."""
        return await self._json("GET", f"/project/{project}/templates/{template_id}/tasks/last"
                                ) or []

    async def create_task(self, project: int, body: dict[str, Any]) -> dict[str, Any]:
        return await self._json("POST", f"/project/{project}/tasks", json=body)

    async def task(self, project: int, task_id: int) -> dict[str, Any]:
        return await self._json("GET", f"/project/{project}/tasks/{task_id}")

    async def output(self, project: int, task_id: int) -> list[str]:
        """The task's output lines, oldest first (Semaphore answers `null` for none yet)."""
        rows = await self._json("GET", f"/project/{project}/tasks/{task_id}/output") or []
        return [str(row.get("output", "")) for row in rows if isinstance(row, dict)]

    async def output_tail(self, project: int, task_id: int, lines: int, *,
                          timeout: float) -> list[str]:
        """The task's last `lines` output lines, oldest first, read within `timeout` however
        long the log is. Raises `SemaphoreError` (reason `timeout` when the time ran out)."""
        path = f"/project/{project}/tasks/{task_id}/output"
        try:
            with trio.fail_after(timeout):
                rows = await self._stream_tail(path)
        except trio.TooSlowError:
            raise SemaphoreError(f"GET {path}: the task's output did not arrive within "
                                 f"{timeout:g}s", reason="timeout") from None
        return [str(row.get("output", "")) for row in rows if isinstance(row, dict)][-lines:]

    async def stop_task(self, project: int, task_id: int, *, force: bool = False) -> None:
        # The body is required: without it Semaphore answers 400 (CONTRACT §6).
        await self._request("POST", f"/project/{project}/tasks/{task_id}/stop",
                            json={"force": force})

    async def confirm_task(self, project: int, task_id: int) -> None:
        await self._request("POST", f"/project/{project}/tasks/{task_id}/confirm")

    async def reject_task(self, project: int, task_id: int) -> None:
        """Refuse a task's confirmation (2.13 and later; older ones answer 404 for the path)."""
        await self._request("POST", f"/project/{project}/tasks/{task_id}/reject")

    # --- plumbing ------------------------------------------------------------------------------

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise SemaphoreError(f"{method} {path}: Semaphore answered {response.status_code} "
                                 "with a body that is not JSON", reason="bad_response",
                                 status=response.status_code) from None

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self.config.token is None and not self._logged_in:
            await self._login()
        response = await self._send(method, path, **kwargs)
        if response.status_code == 401 and self.config.token is None:
            # The session expired (7 days unused, or Semaphore's store was reset): once more.
            self._logged_in = False
            await self._login()
            response = await self._send(method, path, **kwargs)
        if response.status_code >= 400:
            raise self._error(method, path, response.status_code, response.content)
        return response

    async def _stream_tail(self, path: str) -> list[Any]:
        """GET `path`'s JSON array as a stream, keeping the rows that fit in `TAIL_BYTES`."""
        if self.config.token is None and not self._logged_in:
            await self._login()
        for attempt in (1, 2):
            try:
                async with self._http.stream("GET", path, headers=self._headers()) as response:
                    if response.status_code == 401 and self.config.token is None and \
                            attempt == 1:
                        self._logged_in = False
                        await self._login()
                        continue
                    if response.status_code >= 400:
                        raise self._error("GET", path, response.status_code,
                                          await response.aread())
                    tail, cut = bytearray(), False
                    async for chunk in response.aiter_bytes():
                        tail += chunk
                        if len(tail) > 2 * TAIL_BYTES:
                            del tail[:-TAIL_BYTES]
                            cut = True
            except httpx.TimeoutException:
                raise self._timeout("GET", path) from None
            except httpx.TransportError as exc:
                raise self._unreachable("GET", path, exc) from None
            rows = _tail_rows(bytes(tail), cut)
            if rows is None:
                raise SemaphoreError(f"GET {path}: Semaphore answered {response.status_code} "
                                     "with a body that is not a JSON array",
                                     reason="bad_response", status=response.status_code)
            return rows
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _headers(self) -> dict[str, str]:
        if self.config.token is None:
            return {}
        return {"authorization": f"Bearer {self.config.token.get_secret_value()}"}

    def _timeout(self, method: str, path: str) -> SemaphoreError:
        return SemaphoreError(f"{method} {path}: Semaphore at {self.base_url} did not answer "
                              f"within {self.config.request_timeout}s", reason="timeout")

    def _unreachable(self, method: str, path: str, exc: BaseException) -> SemaphoreError:
        return SemaphoreError(f"{method} {path}: cannot reach Semaphore at {self.base_url}: "
                              f"{_transport_detail(exc)}", reason="unreachable")

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, headers=self._headers(), **kwargs)
        except httpx.TimeoutException:
            raise self._timeout(method, path) from None
        except httpx.TransportError as exc:
            raise self._unreachable(method, path, exc) from None

    async def _login(self) -> None:
        async with self._login_lock:
            if self._logged_in:
                return  # another task logged in while this one waited
            assert self.config.username is not None and self.config.password is not None
            body = {"auth": self.config.username,
                    "password": self.config.password.get_secret_value()}
            response = await self._send("POST", "/auth/login", json=body)
            if response.status_code == 401:
                raise SemaphoreError(f"Semaphore refused the login of user "
                                     f"{self.config.username!r} (401: wrong username or "
                                     "password, or an LDAP/OIDC user)",
                                     reason="http_401", status=401)
            if response.status_code >= 400:
                raise self._error("POST", "/auth/login", response.status_code, response.content)
            self._logged_in = True  # the session cookie now sits in the client's jar
            log.info("semaphore_logged_in", url=self.base_url, username=self.config.username)

    def _error(self, method: str, path: str, status: int, body: bytes = b"") -> SemaphoreError:
        explain = _EXPLAIN.get(status, f"Semaphore answered {status}")
        if status == 401 and b"TOTP_REQUIRED" in body:
            explain = TOTP.format(user=self.config.username)
        elif status == 400 and body.strip():
            # Validation errors carry {"error": ...} (CONTRACT §0), e.g. an undeclared variable.
            message = _error_message(body)
            if message:
                explain = f"Semaphore refused the request (400: {message})"
        return SemaphoreError(f"{method} {path}: {explain}", reason=f"http_{status}",
                              status=status)


def _error_message(body: bytes) -> str | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    message = value.get("error") if isinstance(value, dict) else None
    return message if isinstance(message, str) and message else None


def _tail_rows(data: bytes, cut: bool) -> list[Any] | None:
    """The rows of an output array; `cut`: `data` is its end only, starting mid-row. Rows are
    found by their first key: `{"task_id"` cannot occur inside a JSON string (its quotes would
    be escaped). None if the data is not such an array."""
    text = data.decode("utf-8", errors="replace")
    if not cut:
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return [] if value is None else value if isinstance(value, list) else None
    decoder = json.JSONDecoder()
    rows: list[Any] = []
    at = text.find(_ROW)
    while at != -1:
        try:
            row, end = decoder.raw_decode(text, at)
        except ValueError:
            return None
        rows.append(row)
        rest = text[end:].lstrip()
        if not rest.startswith(","):
            break
        at = text.find(_ROW, end)
    return rows or None


def _transport_detail(exc: BaseException) -> str:
    """The useful part of a connection failure: httpx wraps trio's OSError, which wraps an
    exception group holding one error per address tried ("connection refused")."""
    seen: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        cause = pending.pop(0)
        if cause in seen:
            continue
        seen.append(cause)
        if isinstance(cause, OSError) and cause.errno is not None and cause.strerror:
            return cause.strerror.lower()
        if isinstance(cause, BaseExceptionGroup):
            pending.extend(cause.exceptions)
        pending.extend(c for c in (cause.__cause__, cause.__context__) if c is not None)
    return str(exc) or type(exc).__name__
