"""A small client for Ansible Semaphore's HTTP API (the part Hestia uses).

Written against `shared/semaphore/CONTRACT.md` (Semaphore v2.10; the paths are the same in later
releases). What the contract says Semaphore does, and this client copes with:

- Errors mostly have an empty body, so the status code is all there is to go on: 401 (bad or
  expired credentials), 403 (the user's role may not run tasks), 404 (unknown project, or the
  user is no member), 400 (an unknown *task*, not 404), 500 (an unknown *template* when a task
  is created).
- A password login is a cookie session; it can expire, so a 401 is answered by logging in again
  once. An API token is sent as `Authorization: Bearer`.
- A task's `environment` is a JSON object encoded as a *string*, and a stop needs a JSON body.

Every request is bounded by `request_timeout`. Every failure is a `SemaphoreError` whose message
names the request and what went wrong, for the start failure a person reads.
"""

from __future__ import annotations

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
    404: "no such project, or the Semaphore user is not a member of it (404)",
    500: "Semaphore failed (500; when creating a task: no such template, or the template "
         "cannot take this task)",
}


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

    async def stop_task(self, project: int, task_id: int, *, force: bool = False) -> None:
        # The body is required: without it Semaphore answers 400 (CONTRACT §6).
        await self._request("POST", f"/project/{project}/tasks/{task_id}/stop",
                            json={"force": force})

    async def confirm_task(self, project: int, task_id: int) -> None:
        await self._request("POST", f"/project/{project}/tasks/{task_id}/confirm")

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
            raise self._error(method, path, response.status_code)
        return response

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {}
        if self.config.token is not None:
            headers["authorization"] = f"Bearer {self.config.token.get_secret_value()}"
        try:
            return await self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TimeoutException:
            raise SemaphoreError(
                f"{method} {path}: Semaphore at {self.base_url} did not answer within "
                f"{self.config.request_timeout}s", reason="timeout") from None
        except httpx.TransportError as exc:
            raise SemaphoreError(f"{method} {path}: cannot reach Semaphore at {self.base_url}: "
                                 f"{_transport_detail(exc)}", reason="unreachable") from None

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
                raise self._error("POST", "/auth/login", response.status_code)
            self._logged_in = True  # the session cookie now sits in the client's jar
            log.info("semaphore_logged_in", url=self.base_url, username=self.config.username)

    def _error(self, method: str, path: str, status: int) -> SemaphoreError:
        explain = _EXPLAIN.get(status, f"Semaphore answered {status}")
        return SemaphoreError(f"{method} {path}: {explain}", reason=f"http_{status}",
                              status=status)


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
