"""One error tree for Hestia, and the one function that turns an error into an HTTP answer.

```
HestiaError
├── ConfigError                 bad configuration: every problem, each with its path
├── StrategyError               a strategy plugin does not load, or a service's strategy cannot
│                               be made (unknown name, bad options); at start, never per request
└── GatewayError                answered to a client (status, error code, Retry-After)
    ├── HTTPProblem             4xx  what the API's routing refuses (405 + Allow, …), by status
    ├── NotFound                404  no such machine (or route)
    ├── Conflict                409  a start or stop that does not apply to the current state
    │   ├── RestartRequired     409  a reload that changes `listen` or `data_dir` (or another
    │   │                       field only a restart applies): nothing of it was applied
    │   └── NotReloadable       409  a reload of a gateway that has no configuration file
    ├── ConfigInvalid           422  a reload whose file is invalid (`errors`: path, message)
    ├── Unauthorized            401  + WWW-Authenticate: no key, an unknown key, a stale session
    ├── Forbidden               403  the key's scope does not cover the request
    │   ├── CrossOrigin         403  a session-authenticated change from another origin (CSRF)
    │   └── HostNotAllowed      403  a `Host` that is none of the gateway's names (DNS rebinding)
    ├── UnknownService          404  no service with that id
    ├── NoRoute                 4xx/5xx  the routing strategy refuses the request, with the
    │   │                       status and code it chooses (a plugin raises its own)
    │   ├── UnknownModel        404  `by_model`: a model it does not serve (`models` lists them)
    │   └── NoBackendLeft       503  + Retry-After: every backend that could serve it was tried
    ├── RequestRejected         4xx  a bad request, or one that breaks a limit (`limits`)
    │   ├── NotAutomated        400  a Semaphore start or stop of a service with no Semaphore
    │   ├── BadFraming          400  a body whose length is ambiguous (connection closed)
    │   ├── BodyTooLarge        413  body over `limits.max_body_size`
    │   └── HeadersTooLarge     431  headers over `limits.max_header_size`
    ├── BackendUnavailable      503  + Retry-After
    │   ├── QueueFull           the backend's hold queue is at `queue.max`
    │   ├── QueueTimeout        waited `queue.timeout` without the backend becoming ready
    │   ├── StartFailed         the start attempt failed (reason, exit status, log tail)
    │   ├── StartCancelled      a stop request or shutdown ended the start
    │   └── BackendSleeping     an ignored request (`activity.ignore`) for a backend not READY
    ├── UpstreamError           502
    │   ├── ResponseTooLarge    an answer too large for `POST /v1/requests` to hold
    │   ├── WebSocketRefused    the upstream refused a WebSocket handshake: its own answer is
    │   │                       relayed (status, headers, body), not Hestia's JSON
    │   ├── UpstreamUnreachable connection refused / no route / DNS
    │   ├── UpstreamReset       the upstream closed or reset the connection before answering
    │   ├── BackendCrashed      the backend process exited while this request was using it
    │   └── BackendStopped      the backend was stopped (idle, API, shutdown) under this request
    └── UpstreamTimeout         504  connect, first byte or total deadline passed
```

Every error Hestia answers goes through `error_response`, so every error body has the same
shape: `{"error", "detail", "service", "request_id"}` plus optional extra fields, and carries
the error's own headers (`Retry-After`, `WWW-Authenticate`, `Allow`). The exceptions: a
browser navigation gets an HTML page instead (the login page, the waiting page, the list of
services: http/browser.py), and `WebSocketRefused` relays the upstream's own answer.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = [
    "BackendCrashed",
    "BackendSleeping",
    "BackendStopped",
    "BackendUnavailable",
    "BadFraming",
    "BodyTooLarge",
    "ConfigError",
    "ConfigInvalid",
    "Conflict",
    "CrossOrigin",
    "Forbidden",
    "GatewayError",
    "HTTPProblem",
    "HostNotAllowed",
    "HeadersTooLarge",
    "HestiaError",
    "NoBackendLeft",
    "NoRoute",
    "NotAutomated",
    "NotFound",
    "NotReloadable",
    "QueueFull",
    "QueueTimeout",
    "RequestRejected",
    "ResponseTooLarge",
    "RestartRequired",
    "StartCancelled",
    "StartFailed",
    "StrategyError",
    "Unauthorized",
    "UnknownModel",
    "UnknownService",
    "UpstreamError",
    "UpstreamReset",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "WebSocketRefused",
    "error_response",
]


class HestiaError(Exception):
    """Base of every error Hestia raises on purpose."""


class ConfigError(HestiaError):
    """The configuration is invalid. `errors` lists `(path, message)` pairs, all of them."""

    def __init__(self, errors: list[tuple[str, str]], source: str = "configuration") -> None:
        self.errors = errors
        self.source = source
        lines = "\n".join(f"  {path}: {message}" if path else f"  {message}"
                          for path, message in errors)
        super().__init__(f"{source}: {len(errors)} error(s)\n{lines}")


class StrategyError(HestiaError):
    """A strategy plugin cannot be loaded, or a service's strategy cannot be made. Raised at
    start, never per request; the message names the plugin file and line where that is known.
    `errors` lists `(path, message)` pairs with paths relative to the service's `strategy:`
    block (`map.llama3`; "" for the block itself), so each bad option is reported at its place.
    """

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors if errors is not None else [("", message)]


class GatewayError(HestiaError):
    """An error that is answered to an HTTP client."""

    status = 500
    code = "internal_error"
    close_connection = False  # the answer ends the client's connection (`Connection: close`)
    headers: tuple[tuple[bytes, bytes], ...] = ()  # more headers of the answer

    def __init__(self, detail: str, *, service: str | None = None,
                 retry_after: float | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.service = service
        self.retry_after = retry_after
        self.extra = extra


class HTTPProblem(GatewayError):
    """What the API's routing itself refuses (an unknown path 404, a method 405 with `Allow`):
    the status and code come from the refusal."""

    def __init__(self, status: int, code: str, detail: str,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.headers = headers


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class Conflict(GatewayError):
    status = 409
    code = "conflict"


class RestartRequired(Conflict):
    """A reload changes what only a restart applies (`fields`); nothing of it was applied."""

    code = "restart_required"


class NotReloadable(Conflict):
    """A reload of a gateway that was not started from a file (the built-in demo)."""

    code = "not_reloadable"


class ConfigInvalid(GatewayError):
    """A reload read an invalid file: `errors` lists each problem (`path`, `message`); the
    running configuration stays."""

    status = 422
    code = "config_invalid"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"
    headers = ((b"www-authenticate", b'Bearer realm="hestia"'),)


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"


class CrossOrigin(Forbidden):
    code = "csrf"


class HostNotAllowed(Forbidden):
    code = "host_not_allowed"


class UnknownService(GatewayError):
    status = 404
    code = "unknown_service"


class NoRoute(GatewayError):
    """The routing strategy refuses the request: answered with `status`, the JSON code `error`
    and `detail`, plus `extra` fields (such as the known `models`). The constructor takes the
    status and code because a plugin strategy chooses its own; the caller fills in `service`."""

    def __init__(self, status: int, error: str, detail: str, *, service: str | None = None,
                 retry_after: float | None = None, **extra: Any) -> None:
        super().__init__(detail, service=service, retry_after=retry_after, **extra)
        self.status = status
        self.code = error


class UnknownModel(NoRoute):
    status = 404
    code = "unknown_model"

    def __init__(self, detail: str, **kwargs: Any) -> None:
        super().__init__(self.status, self.code, detail, **kwargs)


class NoBackendLeft(NoRoute):
    """No backend is left that may serve the request: all were tried (a failover retry), or
    the one that serves its model failed and no `default` remains. Worth retrying soon."""

    status = 503
    code = "no_backend"

    def __init__(self, detail: str, *, retry_after: float | None = 1, **kwargs: Any) -> None:
        super().__init__(self.status, self.code, detail, retry_after=retry_after, **kwargs)


class RequestRejected(GatewayError):
    status = 400
    code = "bad_request"


class NotAutomated(RequestRejected):
    code = "not_automated"


class BadFraming(RequestRejected):
    """The request's body length is ambiguous or invalid (RFC 9112 §6.1, §6.3): what follows
    it on the connection cannot be trusted to be a request of its own."""

    code = "bad_framing"
    close_connection = True


class BodyTooLarge(RequestRejected):
    status = 413
    code = "body_too_large"


class HeadersTooLarge(RequestRejected):
    status = 431
    code = "headers_too_large"


class BackendUnavailable(GatewayError):
    status = 503
    code = "backend_unavailable"


class QueueFull(BackendUnavailable):
    code = "queue_full"


class QueueTimeout(BackendUnavailable):
    code = "queue_timeout"


class StartFailed(BackendUnavailable):
    code = "start_failed"


class StartCancelled(BackendUnavailable):
    code = "start_cancelled"


class BackendSleeping(BackendUnavailable):
    code = "backend_sleeping"


class UpstreamError(GatewayError):
    status = 502
    code = "bad_gateway"


class ResponseTooLarge(UpstreamError):
    code = "response_too_large"


class WebSocketRefused(UpstreamError):
    """The upstream refused a WebSocket handshake with `status`: the client gets that answer
    (its end-to-end `upstream_headers` and `body`), framed by Hestia, not a JSON error."""

    code = "websocket_rejected"

    def __init__(self, status: int, upstream_headers: list[tuple[bytes, bytes]],
                 body: bytes) -> None:
        super().__init__(f"the upstream refused the WebSocket with {status}")
        self.status = status
        self.upstream_headers = upstream_headers
        self.body = body


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"


class UpstreamReset(UpstreamError):
    code = "upstream_reset"


class BackendCrashed(UpstreamError):
    code = "backend_crashed"


class BackendStopped(UpstreamError):
    code = "backend_stopped"


class UpstreamTimeout(GatewayError):
    status = 504
    code = "upstream_timeout"


def error_response(
    error: GatewayError, request_id: str
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Map a gateway error to `(status, headers, body)`; the body is JSON of the common shape."""
    payload: dict[str, Any] = {
        "error": error.code,
        "detail": error.detail,
        "service": error.service,
        "request_id": request_id,
    }
    payload.update(error.extra)
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        (b"cache-control", b"no-store"),
    ]
    if error.close_connection:
        headers.append((b"connection", b"close"))
    if error.retry_after is not None:
        headers.append((b"retry-after", str(max(1, math.ceil(error.retry_after))).encode()))
    headers.extend(error.headers)
    return error.status, headers, body
