"""`GET /v1/openapi.json`: the OpenAPI 3.1 description of the `/v1` API, `/`, `/__health` and
`/metrics`, with JSON Schema 2020-12 schemas under `components.schemas`.

The document is data built here, not generated from the handlers, so it says what clients may
rely on. tests/integration/test_openapi.py keeps it true: every route the app serves must be
described, real responses in every state must validate against it, and schemathesis fuzzes the
API against it. A handler that changes what it answers must change this document too.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from quart import Blueprint, Response, jsonify

__all__ = ["openapi_blueprint", "openapi_document"]

Schema = dict[str, Any]

STATES = ["COLD", "STARTING", "READY", "STOPPING", "FAILED"]
JSON = "application/json"
# What an HTTP/1.1 header can carry: a token as its name, visible Latin-1 (and tab) as its value.
HEADER_NAME = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
HEADER_VALUE = "^[\\t\\x20-\\x7E\\x80-\\xFF]*$"

DESCRIPTION = """\
Hestia starts services on their first request, holds requests while they start, and stops them
again once idle. This is its control API.

The data plane is not described here: `/services/{id}/…` is a transparent reverse proxy (HTTP and
WebSocket) to the service's upstream; what it answers is the upstream's own API, except for
Hestia's errors (the `Error` body: 404 unknown service, 413/431 over a limit, 502/504 upstream
errors, 503 with `Retry-After` while a start fails or the hold queue is full).

Authentication: when `auth.enabled` is on, every route but `/__health` needs an API key, sent as
`X-API-Key: KEY` or `Authorization: Bearer KEY` (or the session cookie of a browser that logged
in with one); `read` keys may use `GET` on `/`, `/v1/…` and `/metrics`, `admin` keys everything.
Without a key: 401; a key of the wrong scope: 403. With `auth.enabled` off (the default) no key
is needed.

Every response carries `X-Request-ID` (the client's own when it sent a sane one), and every error
body has the `Error` shape."""


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _or_null(schema: Schema) -> Schema:
    if "enum" in schema:
        return {**schema, "type": [schema["type"], "null"], "enum": [*schema["enum"], None]}
    if "type" in schema and isinstance(schema["type"], str):
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Schema], *, optional: dict[str, Schema] | None = None,
            description: str | None = None, closed: bool = False) -> Schema:
    """An object whose `properties` are all required; `optional` ones may be absent."""
    schema: Schema = {"type": "object", "required": list(properties),
                      "properties": {**properties, **(optional or {})}}
    if description:
        schema["description"] = description
    if closed:
        schema["additionalProperties"] = False
    return schema


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
COUNT: Schema = {"type": "integer", "minimum": 0}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "format": "date-time",
                "description": "UTC, milliseconds: `2026-11-24T10:00:00.123Z`"}
STRINGS: Schema = {"type": "array", "items": STR}

_TASK: dict[str, Schema] = {
    "task_id": _or_null(INT), "action": {"type": "string", "examples": ["start", "stop"]},
    "status": {"type": "string", "description": "Semaphore's status of the task (`waiting`, "
               "`running`, `success`, `error`, `stopped`…), `creating` before it exists, "
               "`not_created` when Semaphore refused it"},
    "template_id": _or_null(INT), "template": {"type": "string", "description": "as "
                                               "configured: a template name, or its id"},
    "project_id": INT, "machine_id": STR, "started_at": _or_null(TIME),
}
_TASK_DONE: dict[str, Schema] = {"completed_at": _or_null(TIME),
                                 "duration_ms": _or_null(NUM), "error": _or_null(STR)}

_MACHINE: dict[str, Schema] = {
    "machineId": STR, "enabled": BOOL, "available": BOOL, "reason": _or_null(STR),
    "failuresInARow": COUNT, "maxFailures": {"type": "integer", "minimum": 1},
    "skipForS": {"type": "number", "minimum": 0}}
_VIEW: dict[str, Schema] = {"serviceId": STR, "state": _ref("State"),
                            "automation": _ref("Automation")}

SCHEMAS: dict[str, Schema] = {
    "Error": _object(
        {"error": {"type": "string", "description": "a stable code: `unknown_service`, "
                   "`conflict`, `bad_request`, `not_found`, `start_failed`, `queue_full`…"},
         "detail": {"type": "string", "description": "for people"},
         "service": _or_null(STR), "request_id": STR},
        optional={"state": {"type": "string", "description": "the backend's state (conflicts, "
                            "503s; `sleeping` for an ignored request)"},
                  "services": {**STRINGS, "description": "the configured services (404)"},
                  "attempts": {"type": "array", "items": _ref("StartAttempt")},
                  "reason": STR, "exit_status": _or_null(INT), "log_tail": STRINGS,
                  "estimated_wait_ms": COUNT, "limit": COUNT,
                  "errors": {"type": "array", "items": _ref("ConfigProblem"),
                             "description": "`config_invalid`: every problem of the file"},
                  "fields": {**STRINGS, "description": "`restart_required`: what changed"}},
        description="Every error Hestia answers itself; further fields may be added."),
    "State": {"type": "string", "enum": STATES},
    "StartAttempt": _object(
        {"attempt": COUNT, "machine": STR, "launcher": STR, "detail": STR,
         "duration_ms": NUM},
        optional={"reason": STR, "exit_status": _or_null(INT), "log_tail": STRINGS},
        description="One start attempt that failed (`attempt` 0: the machine was skipped)."),
    "LastError": _object(
        {"at": TIME, "error": STR, "detail": STR},
        optional={"attempts": {"type": "array", "items": _ref("StartAttempt")},
                  "reason": STR, "exit_status": _or_null(INT), "log_tail": STRINGS},
        description="The last failed start or crash, with the fields of its error."),
    "Placement": _object({"machine": STR, "upstream": STR, "launcher": STR}, closed=True),
    "ServiceStatus": _object({
        "serviceId": STR, "state": _ref("State"),
        "machineId": {**_or_null(STR), "description": "where it runs (null unless running)"},
        "launcher": STR, "upstream": STR,
        "placements": {"type": "array", "items": _ref("Placement"), "minItems": 1},
        "readiness": _object({"probe": STR, "ready": BOOL, "lastResult": _or_null(STR)},
                             closed=True),
        "queuePending": {**COUNT, "description": "requests in the hold queue: waiting for a "
                         "start, or (READY) for one of `maxConnections`"},
        "inFlight": {**COUNT, "description": "leases held: requests, streams and open "
                     "WebSockets using the backend"},
        "connectionsInUse": {**COUNT, "description": "the leases counted against "
                             "`maxConnections`"},
        "maxConnections": {**COUNT, "description": "`max_connections` (0: no cap)"},
        "lastUsed": _or_null(TIME), "readySince": _or_null(TIME),
        "lastStartDurationMs": _or_null(NUM), "expectedStartMs": _or_null(COUNT),
        "estimatedWaitMs": {**_or_null(COUNT), "description": "while starting, from past starts"},
        "lastError": {"anyOf": [_ref("LastError"), {"type": "null"}]},
        "cooldownRemainingS": {**_or_null({"type": "number", "minimum": 0}),
                               "description": "while FAILED"},
        "failuresInARow": {**COUNT, "description": "failed starts and crashes since the "
                           "backend last stayed READY a minute (or was stopped on purpose)"},
        "nextAttemptAt": {**_or_null(TIME), "description": "after failures: the earliest "
                          "time the next start may begin"},
        "nextAttemptInS": {**_or_null({"type": "number", "minimum": 0}),
                           "description": "the same, in seconds from now"},
        "group": _or_null(STR), "idleTimeoutS": {"type": "number", "minimum": 0},
        "keepWarm": {**BOOL, "description": "kept up now whatever the idle timer says: "
                     "`keep_warm: true`, an open schedule window, or a dependent that is up"},
        "keepWarmSchedule": {"anyOf": [_ref("KeepWarmSchedule"), {"type": "null"}]},
        "dependsOn": {**STRINGS, "description": "`depends_on`: started first, in order"},
        "heldBy": {**STRINGS, "description": "the services depending on this one that are up "
                   "or starting: it stays up while they are"},
        "pid": _or_null(INT), "logTail": STRINGS,
        "starts": {**COUNT, "description": "starts begun, each once whatever its attempts "
                   "(failed ones too), across Hestia's restarts"},
        "automation": _ref("Automation"),
    }, closed=True),
    "KeepWarmSchedule": _object({
        "schedule": {**STRINGS, "description": "the windows, as written"},
        "timezone": STR, "leadS": {"type": "number", "minimum": 0},
        "open": {**BOOL, "description": "the schedule holds the backend up now (its lead "
                 "before a window included)"},
        "nextChangeAt": {**_or_null(TIME), "description": "when `open` changes next (null: "
                         "never)"},
        "nextChangeInS": _or_null({"type": "number", "minimum": 0}),
    }, closed=True, description="`keep_warm` by the clock."),
    "TaskRecord": _object({**_TASK, **_TASK_DONE}, closed=True,
                          description="A Semaphore task Hestia ran."),
    "CurrentTask": _object({**_TASK, "error": _or_null(STR)}, closed=True,
                           description="The task under way (a `TaskRecord` less its end)."),
    "Automation": _object(
        {"enabled": BOOL, "provider": _or_null({"type": "string", "enum": ["semaphore"]}),
         "machine_id": _or_null(STR),
         "current_task": {"anyOf": [_ref("CurrentTask"), {"type": "null"}]},
         "last_task": {"anyOf": [_ref("TaskRecord"), {"type": "null"}]},
         "tasks": {"type": "array", "items": _ref("TaskRecord"),
                   "description": "newest first"}},
        closed=True, description="The Semaphore side of a service; `enabled: false` (and "
        "nulls) for a service with no `semaphore` placement."),
    "Machine": _object(_MACHINE, closed=True),
    "MachineChange": _object({**_MACHINE, "changed": {
        "type": "boolean", "description": "false when it already was so"}}, closed=True),
    "Accepted": _object({"serviceId": STR, "state": {"enum": ["STARTING", "STOPPING"]},
                         "accepted": {"const": True}}, closed=True),
    "SemaphoreView": _object(_VIEW, closed=True),
    "SemaphoreAccepted": _object(
        {**_VIEW, "state": {"enum": ["STARTING", "STOPPING"]}, "accepted": {"const": True}},
        optional={"machineId": {**_or_null(STR), "description": "start only: the machine "
                                "asked for"}}, closed=True),
    "SemaphoreStart": _object({"serviceId": STR},
                              optional={"machineId": {**_or_null(STR), "description": "one of "
                                        "the service's semaphore placements' machines"}}),
    "SemaphoreStop": _object({"serviceId": STR}),
    "GatewayRequest": _object(
        {"serviceId": {"type": "string", "minLength": 1}},
        optional={
            "method": {"type": "string", "pattern": "^[A-Za-z]+$", "default": "GET"},
            "path": {"type": "string", "pattern": "^/[^\\s]*$", "default": "/",
                     "description": "below the service, with its query"},
            "headers": {"type": "object", "propertyNames": {"pattern": HEADER_NAME},
                        "additionalProperties": {"type": "string", "pattern": HEADER_VALUE}},
            "body": _or_null(STR),
            "bodyEncoding": {"enum": ["utf-8", "base64"], "default": "utf-8"}},
        description="One request, proxied as `/services/{serviceId}{path}` would be."),
    "GatewayResponse": _object(
        {"status": {"type": "integer", "minimum": 100, "maximum": 599},
         "headers": {"type": "array", "description": "in the upstream's order",
                     "items": {"type": "array", "prefixItems": [STR, STR], "items": False,
                               "minItems": 2}},
         "body": STR, "bodyEncoding": {"enum": ["utf-8", "base64"]}},
        closed=True, description="The upstream's answer, whatever its status."),
    "ActivityRecord": _object(
        {"id": INT, "at": TIME,
         "service": _or_null(STR), "kind": STR, "reason": _or_null(STR),
         "duration_ms": _or_null(NUM),
         "detail": {**_or_null({"type": "object"}), "description": "the event's fields"}},
        closed=True, description="A stored lifecycle event (a gateway keeps them in SQLite)."),
    "Event": _object({"seq": COUNT, "at": TIME, "kind": STR, "service": _or_null(STR)},
                     description="A lifecycle event and its kind's fields (see events.py)."),
    "MetricFamily": _object(
        {"name": STR, "type": {"enum": ["counter", "gauge", "histogram", "summary", "info",
                                        "stateset", "gaugehistogram", "unknown"]},
         "help": STR,
         "samples": {"type": "array", "items": _object(
             {"name": STR, "labels": {"type": "object", "additionalProperties": STR},
              "value": NUM}, closed=True)}}, closed=True),
    "Index": _object(
        {"name": {"const": "hestia"},
         "services": {"type": "object", "additionalProperties": _object(
             {"url": STR, "state": {"anyOf": [_ref("State"), {"type": "null"}]},
              "backends": STRINGS}, closed=True)},
         "api": STRINGS}, closed=True),
    "RouteStatus": _object(
        {"serviceId": STR, "strategy": {"type": ["string", "null"]},
         "options": {"type": "object"},
         "backends": {"type": "array", "items": _object(
             {"name": STR, "id": STR, "state": _ref("State"), "healthy": {"type": "boolean"},
              "weight": {"type": "integer", "minimum": 1}, "inFlight": COUNT},
             optional={"status": _ref("ServiceStatus")}, closed=True)},
         "decisions": {"type": "array", "items": _object(
             {"backend": STR, "reason": STR, "count": COUNT}, closed=True)}}, closed=True),
    "Strategies": _object(
        {"strategies": {"type": "array", "items": _object(
            {"name": STR, "origin": STR, "doc": STR}, closed=True)},
         "services": {"type": "array", "items": _ref("RouteStatus")}}, closed=True),
    "Health": _object({"status": {"const": "ok"}, "services": COUNT}, closed=True),
    "ConfigProblem": _object({"path": STR, "message": STR}, closed=True,
                             description="`path` is empty for a problem of the whole file"),
    "ConfigChanges": _object(
        {"added": STRINGS, "removed": STRINGS,
         "restarted": {"type": "object", "additionalProperties": STRINGS,
                       "description": "backend → the fields that changed (a launch field "
                       "among them): drained, stopped, started again with them"},
         "updated": {"type": "object", "additionalProperties": STRINGS,
                     "description": "backend (or service, for `strategy`) → the policy "
                     "fields taken in place"},
         "unchanged": COUNT, "topLevel": STRINGS}, closed=True),
    "ReloadResult": _object(
        {"ok": BOOL, "at": TIME, "source": _or_null(STR),
         "changes": {"anyOf": [_ref("ConfigChanges"), {"type": "null"}]},
         "error": _or_null(STR), "detail": _or_null(STR),
         "errors": {"type": "array", "items": _ref("ConfigProblem")}}, closed=True,
        description="One reload: applied (`changes`), or refused (`error`, `detail`, "
                    "`errors`) with the running configuration unchanged"),
    "GatewayStatus": _object(
        {"configFile": _or_null(STR), "services": COUNT, "backends": COUNT,
         "lastReload": {"anyOf": [_ref("ReloadResult"), {"type": "null"}]}}, closed=True),
}


def _headers(*, retry_after: bool = False, auth: bool = False) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}}
    if retry_after:
        headers["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
    if auth:
        headers["WWW-Authenticate"] = {"schema": STR, "required": True}
    return headers


def _json(schema: Schema, description: str) -> dict[str, Any]:
    return {"description": description, "headers": _headers(),
            "content": {JSON: {"schema": schema}}}


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    return {"description": description, "headers": _headers(retry_after=retry_after),
            "content": {JSON: {"schema": _ref("Error")}}}


AUTH_ERRORS = {"401": {"$ref": "#/components/responses/Unauthorized"},
               "403": {"$ref": "#/components/responses/Forbidden"}}
UNKNOWN = _error("`unknown_service`: no such service (`services` lists them)")
TOO_LARGE = _error("`request_entity_too_large`: the body is over 1 MiB")


def _op(operation_id: str, summary: str, responses: dict[str, Any], *,
        parameters: list[Any] | None = None, body: str | None = None,
        tag: str = "services", secured: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary, "tags": [tag],
                          "responses": {**responses, **(AUTH_ERRORS if secured else {})}}
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {"required": True,
                             "content": {JSON: {"schema": _ref(body)}}}
    # Every route reads (and bounds) a body before it acts, whether it takes one or not.
    op["responses"].setdefault("413", TOO_LARGE)
    if not secured:
        op["security"] = []
    return op


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": STR,
            "description": description}


def _query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


SERVICE = _path("serviceId", "a configured service")
MACHINE = _path("machineId", "a machine (`local` always exists)")
CONFLICT = _error("`conflict`: already starting or running / nothing to stop (`state` says "
                  "which)")


def _machine_op(action: str) -> dict[str, Any]:
    return {"post": _op(
        f"{action}Machine", f"{action.capitalize()} a machine: placements on it are "
        f"{'tried again' if action == 'enable' else 'skipped by starts'}",
        {"200": _json(_ref("MachineChange"), "the machine, and whether this changed it"),
         "404": _error("`not_found`: no such machine")},
        parameters=[MACHINE], tag="machines")}


PATHS: dict[str, Any] = {
    "/": {"get": _op("index", "What this gateway serves", {"200": _json(_ref("Index"), "ok")},
                     tag="meta")},
    "/__health": {"get": _op("health", "Liveness of the gateway itself (never needs a key)",
                             {"200": _json(_ref("Health"), "ok")}, tag="meta", secured=False)},
    "/metrics": {"get": _op("prometheus", "Prometheus metrics", {"200": {
        "description": "the text exposition format", "headers": _headers(),
        "content": {"text/plain": {"schema": STR}}}}, tag="observe")},
    "/v1/openapi.json": {"get": _op("openapi", "This document", {"200": _json(
        {"type": "object"}, "OpenAPI 3.1")}, tag="meta")},
    "/v1/services": {"get": _op("listServices", "Every service's status", {"200": _json(
        _object({"services": {"type": "array", "items": _ref("ServiceStatus")}}, closed=True),
        "ok")})},
    "/v1/services/{serviceId}/status": {"get": _op(
        "serviceStatus", "One service's status",
        {"200": _json({"anyOf": [_ref("ServiceStatus"), _ref("RouteStatus")]},
                      "one backend's status; for a service with several, its route with each "
                      "backend's status"),
         "404": UNKNOWN}, parameters=[SERVICE])},
    "/v1/services/{serviceId}/start": {"post": _op(
        "startService", "Start a service without a request (from FAILED too: skips the "
        "cool-down)", {"202": _json(_ref("Accepted"), "the start is under way"),
                       "400": _error("the service has several backends: start one of them, "
                                     "`<service>@<backend>`"),
                       "404": UNKNOWN, "409": CONFLICT}, parameters=[SERVICE])},
    "/v1/services/{serviceId}/stop": {"post": _op(
        "stopService", "Stop a service (in-flight requests get the grace period; a start "
        "under way is cancelled)", {"202": _json(_ref("Accepted"), "the stop is under way"),
                                    "404": UNKNOWN, "409": CONFLICT}, parameters=[SERVICE])},
    "/v1/status": {"get": _op("gatewayStatus", "The gateway's own status: its configuration "
                              "file, its counts, and the last reload's result",
                              {"200": _json(_ref("GatewayStatus"), "ok")}, tag="meta")},
    "/v1/reload": {"post": _op(
        "reload", "Read the configuration file again and apply what changed (as SIGHUP does)",
        {"200": _json(_ref("ReloadResult"), "applied: what changed"),
         "409": _error("`restart_required`: `listen`, `data_dir` or `log_level` changed "
                       "(`fields`), nothing applied; or `not_reloadable`: the gateway has no "
                       "configuration file (the built-in demo)"),
         "422": _error("`config_invalid`: the file is invalid (`errors`); nothing applied")},
        tag="meta")},
    "/v1/machines": {"get": _op("listMachines", "Machines and whether each is in rotation",
                                {"200": _json(_object({"machines": {
                                    "type": "array", "items": _ref("Machine")}}, closed=True),
                                    "ok")}, tag="machines")},
    "/v1/machines/{machineId}/enable": _machine_op("enable"),
    "/v1/machines/{machineId}/disable": _machine_op("disable"),
    "/v1/semaphore/status": {"get": _op(
        "semaphoreStatus", "The Semaphore side of one service, or of every service that has "
        "a semaphore placement",
        {"200": _json({"oneOf": [_ref("SemaphoreView"), _object({"services": {
            "type": "array", "items": _ref("SemaphoreView")}}, closed=True)]},
            "with `serviceId`: that service's view; without: `{services: [...]}`"),
         "404": UNKNOWN},
        parameters=[_query("serviceId", STR, "one service (any service, automated or not)")],
        tag="semaphore")},
    "/v1/semaphore/start": {"post": _op(
        "semaphoreStart", "Start a service on its semaphore placement (on `machineId`'s)",
        {"202": _json(_ref("SemaphoreAccepted"), "the start is under way"),
         "400": _error("`bad_request` (not a JSON object with a string `serviceId`, or a "
                       "machine with no semaphore placement), or `not_automated`"),
         "404": UNKNOWN, "409": CONFLICT}, body="SemaphoreStart", tag="semaphore")},
    "/v1/semaphore/stop": {"post": _op(
        "semaphoreStop", "Stop a service that has a semaphore placement",
        {"202": _json(_ref("SemaphoreAccepted"), "the stop is under way"),
         "400": _error("`bad_request` or `not_automated`"), "404": UNKNOWN, "409": CONFLICT},
        body="SemaphoreStop", tag="semaphore")},
    "/v1/requests": {"post": _op(
        "dispatch", "One request described as JSON, proxied (the service is started if needed)",
        {"200": _json(_ref("GatewayResponse"), "the upstream answered (any status)"),
         "400": _error("`bad_request`: not a valid GatewayRequest"),
         "404": UNKNOWN,
         "413": _error("the API body is over 1 MiB, or the described body over the service's "
                       "`limits.max_body_size`"),
         "431": _error("the described headers are over `limits.max_header_size`"),
         "502": _error("no answer from the upstream, or `response_too_large` (over 16 MiB)"),
         "503": _error("the start failed or was cancelled, or the hold queue is full or "
                       "timed out", retry_after=True),
         "504": _error("an upstream deadline passed")},
        body="GatewayRequest", tag="dispatch")},
    "/v1/events": {"get": _op(
        "events", "Lifecycle events as server-sent events (endless)",
        {"200": {"description": "`event:` the kind, `id:` the sequence number, `data:` the "
                 "event's JSON (`Event`); a comment line every 15 s", "headers": _headers(),
                 "content": {"text/event-stream": {"schema": STR}}}},
        parameters=[_query("service", STR, "only this service's events"),
                    {"name": "Last-Event-ID", "in": "header", "required": False,
                     "schema": {"type": "string", "pattern": "^[0-9]*$"},
                     "description": "first replay the recent events after this one"}],
        tag="observe")},
    "/v1/activity": {"get": _op(
        "activity", "Stored lifecycle events, newest first",
        {"200": _json(_object({"activity": {"type": "array", "items": {
            "anyOf": [_ref("ActivityRecord"), _ref("Event")]}}}, closed=True),
            "`ActivityRecord`s (an app without a store answers `Event`s)"),
         "400": _error("`bad_request`: `limit` is not a whole number, 0 or more")},
        parameters=[_query("serviceId", STR, "only this service's events"),
                    _query("limit", {"type": "integer", "minimum": 0, "default": 100},
                           "how many, newest first; more than 1,000 means 1,000")],
        tag="observe")},
    "/v1/strategies": {"get": _op(
        "strategies", "Loaded routing strategies, and each multi-backend service's route",
        {"200": _json(_ref("Strategies"), "ok")}, tag="observe")},
    "/v1/metrics": {"get": _op("metrics", "The Prometheus samples as JSON", {"200": _json(
        _object({"metrics": {"type": "array", "items": _ref("MetricFamily")}}, closed=True),
        "ok")}, tag="observe")},
}


@cache
def openapi_document() -> dict[str, Any]:
    """The document (built once; callers must not change it)."""
    try:
        hestia_version = version("hestia")
    except PackageNotFoundError:  # running from a source tree that was never installed
        hestia_version = "0+unknown"
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {"title": "Hestia", "version": hestia_version, "description": DESCRIPTION,
                 "license": {"name": "MIT", "identifier": "MIT"}},
        "security": [{}, {"apiKey": []}, {"bearer": []}],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                           "description": "needed only when `auth.enabled` is on"},
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "the same key; needed only when `auth.enabled`"}},
            "headers": {
                "RequestId": {"required": True, "schema": {"type": "string", "minLength": 1},
                              "description": "the request's id, also in logs and errors"},
                "RetryAfter": {"required": True, "schema": {"type": "integer", "minimum": 1},
                               "description": "seconds"}},
            "responses": {
                "Unauthorized": {"description": "`unauthorized`: no key or an unknown one "
                                 "(only with `auth.enabled`)",
                                 "headers": _headers(auth=True),
                                 "content": {JSON: {"schema": _ref("Error")}}},
                "Forbidden": _error("`forbidden`: the key's scope does not cover this (only "
                                    "with `auth.enabled`)")},
        },
    }


def openapi_blueprint() -> Blueprint:
    api = Blueprint("openapi", __name__)

    @api.get("/v1/openapi.json")
    async def openapi() -> Response:
        return jsonify(openapi_document())

    return api
