"""`GET /v1/openapi.json` is true: a valid OpenAPI 3.1 document that describes every route the app
serves, that real answers of a real gateway (in every state we can bring a service into) validate
against, and that schemathesis cannot catch out.

The trio tests use the real clock, each inside `trio.fail_after`; the schemathesis test is a
plain function that runs its gateway in a thread of its own.
"""

from __future__ import annotations

import copy
import queue
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import trio
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from hestia import Gateway, parse_config, run
from hestia.http.app import create_app
from hestia.http.auth import hash_key, new_key
from hestia.http.openapi import openapi_document
from hestia.store import Store
from tests.integration.conftest import client, upstream_service, wait_for_state
from tests.integration.test_semaphore import Machine, semaphore_block
from tests.semaphore_standin import SemaphoreStandin

DOC_URI = "urn:hestia:openapi"
JSON = "application/json"
AUTH_CODES = {"401", "403"}

FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    # jsonschema checks date-time only with an optional package; the API's own form is this.
    return not isinstance(value, str) or bool(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", value)
        and datetime.fromisoformat(value))


def _absolute(node: Any) -> Any:
    """The document with every `#/…` reference made absolute, so that any part of it can be
    validated on its own against a registry holding the whole."""
    if isinstance(node, dict):
        return {k: (DOC_URI + v if k == "$ref" and v.startswith("#") else _absolute(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_absolute(v) for v in node]
    return node


def _nodes(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object in the document, with where it is."""
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from _nodes(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _nodes(value, f"{where}/{i}")


def _schemas(doc: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every JSON Schema in the document (components', and those of parameters, headers and
    media types), with where it is."""
    for name, schema in doc["components"]["schemas"].items():
        yield f"/components/schemas/{name}", schema
    for where, node in _nodes({"paths": doc["paths"], "headers": doc["components"]["headers"],
                               "responses": doc["components"]["responses"]}):
        if isinstance(node.get("schema"), dict):
            yield f"{where}/schema", node["schema"]


def _text(response: httpx.Response) -> str:
    try:
        return response.text[:500]
    except httpx.ResponseNotRead:
        return "(a stream, not read)"


class Spec:
    """The document, and a checker of real responses against it that remembers what it saw."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        absolute = _absolute(doc)
        self.absolute = absolute
        self.registry: Registry = Registry().with_resource(
            DOC_URI, DRAFT202012.create_resource(absolute))
        self.templates = [(t, re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+",
                                                      re.escape(t)) + "$"))
                          for t in doc["paths"]]
        self.seen: set[tuple[str, str, str]] = set()

    def documented(self) -> set[tuple[str, str, str]]:
        return {(method, path, code) for path, item in self.doc["paths"].items()
                for method, op in item.items() for code in op["responses"]}

    def validate(self, instance: Any, schema: Any) -> None:
        validator = jsonschema.Draft202012Validator(schema, registry=self.registry,
                                                    format_checker=FORMATS)
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
        assert not errors, "\n".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5])

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = self.registry.resolver().lookup(node["$ref"]).contents
        return node

    def template(self, path: str) -> str:
        matches = [t for t, pattern in self.templates if pattern.match(path)]
        assert matches, f"{path} is not documented"
        return min(matches, key=lambda t: t.count("{"))  # a literal path beats a template

    def check(self, response: httpx.Response, status: int | None = None) -> Any:
        """Assert that `response` is documented, and valid by the document; return its JSON."""
        request = response.request
        method, path = request.method.lower(), request.url.path
        where = f"{request.method} {request.url.raw_path.decode()}"
        if status is not None:
            assert response.status_code == status, f"{where}: {_text(response)}"
        template = self.template(path)
        operation = self.absolute["paths"][template].get(method)
        assert operation is not None, f"{where}: the method is not documented"
        code = str(response.status_code)
        assert code in operation["responses"], \
            f"{where} answered {code}, which is not documented: {_text(response)}"
        answer = self.resolve(operation["responses"][code])
        media = response.headers.get("content-type", "").partition(";")[0].strip()
        assert media in answer["content"], f"{where}: {media} is not documented for {code}"
        for name, header in answer.get("headers", {}).items():
            header = self.resolve(header)
            value = response.headers.get(name)
            if value is None:
                assert not header.get("required"), f"{where}: no {name} header"
                continue
            schema = header["schema"]
            self.validate(int(value) if schema.get("type") == "integer" else value, schema)
        self.seen.add((method, template, code))
        if media != JSON:
            return None if media == "text/event-stream" else response.text
        body = response.json()
        try:
            self.validate(body, answer["content"][media]["schema"])
        except AssertionError as exc:
            raise AssertionError(f"{where} → {code}: {exc}\n{response.text[:1000]}") from None
        return body


@pytest.fixture
def spec() -> Spec:
    return Spec(copy.deepcopy(openapi_document()))


# --- the document itself -------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1_with_valid_schemas(spec):
    try:
        from schemathesis.specs.openapi.definitions import OPENAPI_31
    except ImportError:  # the meta schema ships inside schemathesis; still check the rest
        OPENAPI_31 = None
    if OPENAPI_31 is not None:
        errors = list(jsonschema.Draft202012Validator(OPENAPI_31).iter_errors(spec.doc))
        assert not errors, [e.message[:200] for e in errors[:5]]
    assert spec.doc["openapi"].startswith("3.1.")
    for _, node in _nodes(spec.absolute):
        if isinstance(node.get("$ref"), str):
            spec.registry.resolver().lookup(node["$ref"])  # raises for a reference to nothing
    for where, schema in _schemas(spec.doc):
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise AssertionError(f"{where}: {exc.message}") from None
    operation_ids = [op["operationId"] for item in spec.doc["paths"].values()
                     for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))
    assert not [p for p in spec.doc["paths"] if p.startswith("/services")]


def test_every_route_the_app_serves_is_documented_and_nothing_else(spec):
    app = create_app({})
    adapter = app.url_map.bind("hestia")
    documented: dict[str, set[str]] = {}
    for path, item in spec.doc["paths"].items():
        concrete = re.sub(r"\{[^/]+?\}", "x", path)
        for method in item:
            endpoint, _ = adapter.match(concrete, method=method.upper())
            documented.setdefault(endpoint, set()).add(method.upper())
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            # Quart's default static route: hestia has no static folder, so it only ever
            # answers 404. Not part of the API.
            continue
        if rule.rule.startswith("/__hestia/"):
            # The browser's pages (login, the waiting page's updates, scripts and styles):
            # HTML and event streams for Hestia's own pages, described in docs/web-uis.md.
            continue
        methods = set(rule.methods or ()) - {"HEAD", "OPTIONS"}
        missing = methods - documented.get(rule.endpoint, set())
        assert not missing, f"{sorted(missing)} {rule.rule} is not in the OpenAPI document"


# --- real answers of a real gateway ----------------------------------------------------------


def failing_service(**fields: Any) -> dict[str, Any]:
    """A backend whose process exits at once with status 3."""
    return upstream_service("--fail-start", "3", **fields)


async def oversized(gateway: Gateway, path: str, method: str = "POST") -> httpx.Response:
    """Send a body over the API's 1 MiB, on a connection of its own: after that 413 the
    connection is unusable (see `test_a_connection_serves_on_after_a_413`)."""
    async with client(gateway) as http:
        return await http.request(method, path, content=b" " * (1024 * 1024 + 1))


async def test_real_answers_in_every_state_match_the_document(start_gateway, spec):
    with trio.fail_after(45):
        gateway: Gateway = await start_gateway(
            machines={"spare": {}},
            services={
                "up": upstream_service(timeouts={"first_byte": "1s"},
                                       limits={"max_header_size": "4KiB",
                                               "max_body_size": "1KiB"}),
                "broken": failing_service(startup={"cooldown": 0}),
                "flaky": failing_service(startup={"cooldown": "60s"}),
                "duo": {**upstream_service(), "backends": {"a": {}, "b": {}}},
            })
        async with client(gateway) as http:
            check = spec.check
            # Everything COLD.
            assert check(await http.get("/__health"), 200) == {"status": "ok", "services": 5}
            index = check(await http.get("/"), 200)
            assert {re.sub(r"\{[^/]+\}", "{}", p) for p in index["api"]} == {
                re.sub(r"\{[^/]+\}", "{}", p) for p in spec.doc["paths"]} - {"/"}
            assert check(await http.get("/v1/openapi.json"), 200) == spec.doc
            assert "hestia_requests_total" in check(await http.get("/metrics"), 200)
            check(await http.get("/v1/metrics"), 200)
            listed = check(await http.get("/v1/services"), 200)["services"]
            assert [s["state"] for s in listed] == ["COLD"] * 5
            # A service with several backends: its route, the strategies, one backend each.
            route = check(await http.get("/v1/services/duo/status"), 200)
            assert [b["id"] for b in route["backends"]] == ["duo@a", "duo@b"]
            assert check(await http.get("/v1/strategies"), 200)["services"][0]["serviceId"] == \
                "duo"
            assert check(await http.post("/v1/services/duo/start"), 400)["backends"] == [
                "duo@a", "duo@b"]
            cold = check(await http.get("/v1/services/up/status"), 200)
            assert cold["pid"] is None and cold["automation"]["enabled"] is False
            unknown = check(await http.get("/v1/services/nope/status"), 404)
            assert unknown["services"] == ["broken", "duo", "flaky", "up"]
            check(await http.post("/v1/services/nope/start"), 404)
            check(await http.post("/v1/services/nope/stop"), 404)
            check(await http.post("/v1/services/up/stop"), 409)  # COLD: nothing to stop

            # Machines.
            check(await http.get("/v1/machines"), 200)
            assert check(await http.post("/v1/machines/spare/disable"), 200)["changed"] is True
            off = check(await http.post("/v1/machines/spare/disable"), 200)
            assert (off["changed"], off["available"], off["reason"]) == (
                False, False, "machine 'spare' is disabled")
            assert check(await http.post("/v1/machines/spare/enable"), 200)["enabled"] is True
            check(await http.post("/v1/machines/nope/enable"), 404)
            check(await http.post("/v1/machines/nope/disable"), 404)

            # Semaphore, for services that have no Semaphore placement.
            assert check(await http.get("/v1/semaphore/status"), 200) == {"services": []}
            view = check(await http.get("/v1/semaphore/status", params={"serviceId": "up"}),
                         200)
            assert view["automation"]["enabled"] is False
            check(await http.get("/v1/semaphore/status", params={"serviceId": "nope"}), 404)
            for action in ("start", "stop"):
                url = f"/v1/semaphore/{action}"
                assert check(await http.post(url, json={"serviceId": "up"}), 400)[
                    "error"] == "not_automated"
                check(await http.post(url, json={"serviceId": "nope"}), 404)
                for bad in (b"not json", b"[]", b'{"serviceId": 5}', b"{}"):
                    assert check(await http.post(url, content=bad), 400)[
                        "error"] == "bad_request"
                check(await oversized(gateway, url), 413)

            # Start through the API: STARTING, then READY.
            accepted = check(await http.post("/v1/services/up/start"), 202)
            assert accepted == {"serviceId": "up", "state": "STARTING", "accepted": True}
            assert check(await http.post("/v1/services/up/start"), 409)["state"] in (
                "STARTING", "READY")
            check(await http.get("/v1/services/up/status"), 200)
            await wait_for_state(gateway, "up", "READY")
            ready = check(await http.get("/v1/services/up/status"), 200)
            assert ready["pid"] > 0 and ready["machineId"] == "local" and ready["readySince"]

            # POST /v1/requests, answered and refused in every documented way.
            answer = check(await http.post("/v1/requests", json={
                "serviceId": "up", "method": "POST", "path": "/echo?a=1", "body": "hi",
                "headers": {"X-Trace": "t"}}), 200)
            assert answer["status"] == 200 and answer["bodyEncoding"] == "utf-8"
            raw = check(await http.post("/v1/requests", json={"serviceId": "up",
                                                               "path": "/bytes?n=300"}), 200)
            assert raw["bodyEncoding"] == "base64"
            assert check(await http.post("/v1/requests", json={
                "serviceId": "up", "path": "/status/418"}), 200)["status"] == 418
            for bad in ({}, {"serviceId": ""}, {"serviceId": "up", "path": "x"},
                        {"serviceId": "up", "method": "G T"}, {"serviceId": "up", "body": 1},
                        {"serviceId": "up", "headers": {"a": 1}},
                        {"serviceId": "up", "body": "%", "bodyEncoding": "base64"}):
                check(await http.post("/v1/requests", json=bad), 400)
            check(await http.post("/v1/requests", content=b"{"), 400)
            check(await http.post("/v1/requests", json={"serviceId": "nope"}), 404)
            check(await http.post("/v1/requests", json={
                "serviceId": "up", "method": "PUT", "path": "/upload", "body": "x" * 2048}), 413)
            check(await oversized(gateway, "/v1/requests"), 413)
            check(await http.post("/v1/requests", json={
                "serviceId": "up", "headers": {"X-Big": "x" * 5000}}), 431)
            assert check(await http.post("/v1/requests", json={
                "serviceId": "up", "path": "/close"}), 502)["error"] == "upstream_reset"
            assert check(await http.post("/v1/requests", json={
                "serviceId": "up", "path": "/slow?ms=3000"}), 504)["error"] == "upstream_timeout"

            # A start that fails with no cool-down: COLD again, with the error kept.
            failed = check(await http.post("/v1/requests", json={"serviceId": "broken"}), 503)
            assert failed["error"] == "start_failed" and failed["exit_status"] == 3
            check(await http.post("/v1/services/broken/start"), 202)
            await wait_for_state(gateway, "broken", "COLD")
            broken = check(await http.get("/v1/services/broken/status"), 200)
            assert broken["lastError"]["exit_status"] == 3 and broken["logTail"]

            # A start that fails with a cool-down: FAILED, refused at once, startable by hand.
            check(await http.post("/v1/requests", json={"serviceId": "flaky"}), 503)
            flaky = check(await http.get("/v1/services/flaky/status"), 200)
            assert flaky["state"] == "FAILED" and flaky["cooldownRemainingS"] > 0
            assert check(await http.post("/v1/requests", json={"serviceId": "flaky"}),
                         503)["error"] == "start_failed"
            assert check(await http.post("/v1/services/flaky/stop"), 409)["state"] == "FAILED"
            check(await http.post("/v1/services/flaky/start"), 202)
            await wait_for_state(gateway, "flaky", "FAILED")
            check(await http.get("/v1/services"), 200)

            # Events: the stream is `text/event-stream`, each event an `Event`.
            async with http.stream("GET", "/v1/events", params={"service": "up"}) as stream:
                spec.check(stream)
                lines = stream.aiter_lines()
                assert await anext(lines) == ": hestia events"
                check(await http.post("/v1/services/up/stop"), 202)
                data = None
                while data is None:
                    line = await anext(lines)
                    if line.startswith("data: "):
                        data = httpx.Response(200, content=line[6:]).json()
                spec.validate(data, {"$ref": f"{DOC_URI}#/components/schemas/Event"})
                assert data["service"] == "up"
            await wait_for_state(gateway, "up", "COLD")
            check(await http.post("/v1/services/up/stop"), 409)

            # The history the store kept.
            activity = check(await http.get("/v1/activity"), 200)["activity"]
            assert {"state", "ready", "start_failed", "stopped", "machine"} <= {
                a["kind"] for a in activity}
            assert len(check(await http.get("/v1/activity", params={
                "serviceId": "up", "limit": "2"}), 200)["activity"]) == 2
            assert check(await http.get("/v1/activity", params={"limit": "0"}), 200) == {
                "activity": []}
            # Times as everywhere in the API (ISO 8601, UTC, milliseconds), newest first.
            times = [datetime.fromisoformat(a["at"]) for a in activity]
            assert all(a["at"].endswith("Z") and len(a["at"]) == 24 for a in activity)
            assert times == sorted(times, reverse=True)
            check(await http.get("/v1/activity", params={"limit": "-1"}), 400)
            check(await http.get("/v1/metrics"), 200)

            # Reloads: the file as it is, an invalid one, one that only a restart applies.
            assert check(await http.get("/v1/status"), 200)["lastReload"] is None
            assert check(await http.post("/v1/reload"), 200)["changes"]["unchanged"] == 5
            path = gateway.config_file
            assert path is not None
            text = path.read_text()
            path.write_text(text.replace("grace_period: 2s", "grace_period: soon"))
            assert check(await http.post("/v1/reload"), 422)["errors"][0]["path"] == \
                "grace_period"
            path.write_text(text.replace("127.0.0.1:0", "127.0.0.1:1"))
            assert check(await http.post("/v1/reload"), 409)["fields"] == ["listen"]
            assert check(await http.get("/v1/status"), 200)["lastReload"]["error"] == \
                "restart_required"

        # Every route bounds a body before it acts, whether it takes one or not.
        for method, path, code in sorted(spec.documented() - spec.seen):
            if code == "413":
                url = path.replace("{serviceId}", "up").replace("{machineId}", "spare")
                check(await oversized(gateway, url, method.upper()), 413)

        # Auth codes have their own test; 202 and 409 of /v1/semaphore/* need Semaphore.
        elsewhere = {(m, p, c) for m, p, c in spec.documented() if c in AUTH_CODES or (
            p.startswith("/v1/semaphore/st") and c in ("202", "409"))}
        assert spec.documented() - elsewhere - spec.seen == set()


@pytest.fixture
async def standin(nursery: trio.Nursery) -> SemaphoreStandin:
    semaphore = SemaphoreStandin(tick=0.05)
    semaphore.url = await nursery.start(semaphore.serve)
    return semaphore


async def test_semaphore_answers_match_the_document(start_gateway, standin, spec):
    with trio.fail_after(30):
        project = standin.add_project("infra")
        machine = Machine()
        try:
            release = trio.Event()

            async def start_when_released(task: Any) -> int:
                await release.wait()
                return await machine.start(task)

            standin.add_template(project, "start echo", start_when_released, environment={})
            standin.add_template(project, "stop echo", machine.stop, environment={})
            gateway = await start_gateway(
                semaphore=semaphore_block(standin),
                machines={"gpu": {"semaphore": {"start_template": "start echo",
                                                "stop_template": "stop echo"}}},
                services={"echo": {"upstream": machine.upstream, "machine": "gpu",
                                   "readiness": {"http": "/health"}}})
            async with client(gateway) as http:
                check = spec.check
                assert check(await http.get("/v1/semaphore/status"), 200)["services"][0][
                    "automation"]["enabled"] is True
                started = check(await http.post("/v1/semaphore/start", json={
                    "serviceId": "echo", "machineId": "gpu"}), 202)
                assert (started["state"], started["machineId"]) == ("STARTING", "gpu")
                check(await http.post("/v1/semaphore/start", json={"serviceId": "echo"}), 409)
                assert check(await http.post("/v1/semaphore/start", json={
                    "serviceId": "echo", "machineId": "local"}), 400)["state"] == "STARTING"
                while True:  # the task under way is shown without its end
                    status = check(await http.get("/v1/services/echo/status"), 200)
                    if status["automation"]["current_task"] is not None:
                        break
                    await trio.sleep(0.02)
                assert status["automation"]["current_task"]["action"] == "start"
                release.set()
                await wait_for_state(gateway, "echo", "READY")
                status = check(await http.get("/v1/services/echo/status"), 200)
                assert status["automation"]["last_task"]["status"] == "success"
                check(await http.post("/v1/semaphore/stop", json={"serviceId": "echo"}), 202)
                await wait_for_state(gateway, "echo", "COLD")
                check(await http.post("/v1/semaphore/stop", json={"serviceId": "echo"}), 409)
                view = check(await http.get("/v1/semaphore/status",
                                            params={"serviceId": "echo"}), 200)
                assert [t["action"] for t in view["automation"]["tasks"]] == ["stop", "start"]
                activity = check(await http.get("/v1/activity"), 200)["activity"]
                assert "semaphore_task" in {a["kind"] for a in activity}
        finally:
            machine.kill()
        assert {("post", f"/v1/semaphore/{a}", c) for a in ("start", "stop")
                for c in ("202", "409")} <= spec.seen


async def test_auth_answers_match_the_document(start_gateway, spec, tmp_path):
    with trio.fail_after(20):
        gateway = await start_gateway(auth={"enabled": True},
                                      services={"up": upstream_service()})
        admin = (tmp_path / "data" / "cli.key").read_text().strip()
        reader = new_key()
        store = Store(tmp_path / "data" / "hestia.db")
        try:
            store.add_key("reader", "read", hash_key(reader), reader[:12])
        finally:
            store.close()
        async with client(gateway) as http:
            check = spec.check
            check(await http.get("/__health"), 200)  # never needs a key
            for method, path in (("get", "/v1/services"), ("post", "/v1/services/up/start"),
                                 ("get", "/metrics"), ("get", "/"),
                                 ("post", "/v1/requests")):
                check(await http.request(method, path), 401)
                check(await http.request(method, path, headers={"X-API-Key": "hestia_nope"}),
                      401)
            check(await http.get("/v1/services", headers={"X-API-Key": reader}), 200)
            check(await http.get("/v1/machines",
                                 headers={"Authorization": f"Bearer {reader}"}), 200)
            for path in ("/v1/services/up/stop", "/v1/machines/local/disable"):
                check(await http.post(path, headers={"X-API-Key": reader}), 403)
            check(await http.post("/v1/services/up/stop", headers={"X-API-Key": admin}), 409)


# --- schemathesis against a real gateway ------------------------------------------------------

FUZZ_EXAMPLES = 50  # per operation: 16 operations in about 6 s


@contextmanager
def gateway_thread(raw: dict[str, Any]) -> Iterator[Gateway]:
    """A real gateway serving `raw` (a configuration) from its own `trio.run` in a thread, for
    synchronous clients; shut down gracefully on the way out."""
    config = parse_config({"listen": "127.0.0.1:0", "grace_period": "2s", **raw}, env={})
    started: queue.Queue[Any] = queue.Queue()
    failure: list[BaseException] = []

    async def serve() -> None:
        token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            gateway = await nursery.start(partial(run, config, handle_signals=False))
            started.put((gateway, token))

    def main() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:
            failure.append(exc)
            started.put(exc)

    thread = threading.Thread(target=main, name="hestia-gateway", daemon=True)
    thread.start()
    item = started.get(timeout=30)
    if isinstance(item, BaseException):
        raise item
    gateway, token = item
    try:
        yield gateway
    finally:
        trio.from_thread.run_sync(gateway.shutdown, trio_token=token)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the gateway did not stop"
        if failure:
            raise failure[0]


FUZZ_SERVICES = {
    # The one cheap upstream: a described request that names it is answered in milliseconds,
    # and `timeouts.total` bounds whatever path the fuzzer makes up.
    "up": upstream_service(timeouts={"total": "3s"}, queue={"timeout": "10s"}),
    "broken": upstream_service("--fail-start", "3", startup={"cooldown": 0}),
}


def fuzz(tmp_path: Path, mode: str, *, only: tuple[str, ...] = ()) -> list[str]:
    """Run schemathesis over every operation (or `only` these paths) of a real gateway's
    document: what it found, one entry per operation."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode, checks

    fuzz_checks = [checks.not_a_server_error, checks.status_code_conformance,
                   checks.content_type_conformance, checks.response_schema_conformance,
                   checks.response_headers_conformance]
    failures: list[str] = []
    with gateway_thread({"data_dir": str(tmp_path / "data"), "services": FUZZ_SERVICES,
                         "machines": {"spare": {}}}) as gateway:
        schema = schemathesis.openapi.from_url(f"{gateway.url}/v1/openapi.json", timeout=10)
        # An endless stream: every example would wait for its end until its timeout.
        schema = schema.exclude(path="/v1/events")
        if only:
            schema = schema.include(path=list(only))
        operations = [result.ok() for result in schema.get_all_operations()]
        # schemathesis leaves out the document's own URL; everything else is fuzzed.
        assert {op.label for op in operations} == {
            f"{m.upper()} {p}" for p, item in openapi_document()["paths"].items() for m in item
            if p not in ("/v1/events", "/v1/openapi.json") and (not only or p in only)}
        for operation in operations:
            @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                      derandomize=True, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
            def one(case: Any) -> None:
                case.call_and_validate(base_url=gateway.url, checks=fuzz_checks, timeout=10)

            try:
                one()
            except (Exception, BaseExceptionGroup) as exc:  # collected: one run reports all
                failures.append(f"{operation.label}: {exc}")
    return failures


def test_schemathesis_finds_no_server_errors_and_no_undocumented_answers(tmp_path):
    failures = fuzz(tmp_path, "positive")
    assert not failures, "\n\n".join(failures)


def test_schemathesis_invalid_input_is_refused_not_a_server_error(tmp_path):
    # Only where the input can be invalid: JSON bodies and typed query parameters (a path
    # parameter is any string).
    failures = fuzz(tmp_path, "negative", only=(
        "/v1/requests", "/v1/semaphore/start", "/v1/semaphore/stop", "/v1/activity"))
    assert not failures, "\n\n".join(failures)


# --- what the fuzzing and the document found, fixed: each test is the request that showed it --


async def test_a_described_header_that_http_cannot_carry_is_refused(start_gateway, spec):
    with trio.fail_after(15):
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            spec.check(await http.post("/v1/requests", json={
                "serviceId": "up", "headers": {"X-Price": "5 €"}}), 400)


async def test_a_described_request_cannot_inject_lines_upstream(start_gateway, spec):
    with trio.fail_after(15):
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            spec.check(await http.post("/v1/requests", json={
                "serviceId": "up", "path": "/echo",
                "headers": {"X-A": "1\r\nX-Injected: yes"}}), 400)
            spec.check(await http.post("/v1/requests", json={
                "serviceId": "up", "path": "/echo HTTP/1.1\r\nX-Smuggled: 1\r\nX-B: b"}), 400)


async def test_activity_refuses_a_limit_that_is_not_a_whole_number(start_gateway, spec):
    # `²` passes str.isdigit() and fails int() (it was a 500); `-1` went against the document's
    # own minimum (it was taken as 100).
    with trio.fail_after(15):
        gateway = await start_gateway(services={})
        async with client(gateway) as http:
            for limit in ("²", "-1", "+5", " 7", "1.5", "ten", ""):
                body = spec.check(await http.get("/v1/activity", params={"limit": limit}), 400)
                assert body["error"] == "bad_request" and repr(limit) in body["detail"]
            spec.check(await http.get("/v1/activity", params={"limit": "100000"}), 200)


async def test_events_with_a_unicode_digit_last_event_id_are_answered(start_gateway, spec):
    with trio.fail_after(15):
        gateway = await start_gateway(services={})
        async with client(gateway) as http, http.stream(
                "GET", "/v1/events", headers={"Last-Event-ID": b"\xb2"}) as stream:
            spec.check(stream, 200)


async def test_a_connection_serves_on_after_a_413(start_gateway):
    with trio.fail_after(15):
        gateway = await start_gateway(services={})
        async with httpx.AsyncClient(base_url=gateway.url, timeout=3) as http:
            response = await http.post("/v1/semaphore/start", content=b" " * (1024 * 1024 + 1))
            assert response.status_code == 413
            assert (await http.get("/__health")).status_code == 200


async def test_a_described_request_keeps_the_request_id_it_answers(start_gateway, spec):
    with trio.fail_after(15):
        gateway = await start_gateway(services={"up": upstream_service()})
        async with client(gateway) as http:
            response = await http.post("/v1/requests", json={"serviceId": "up",
                                                             "path": "/echo"})
            echoed = dict(httpx.Response(200, content=spec.check(response, 200)["body"])
                          .json()["headers"])
            assert echoed["x-request-id"] == response.headers["x-request-id"]


async def test_a_method_not_allowed_says_which_are(start_gateway):
    with trio.fail_after(15):
        gateway = await start_gateway(services={})
        async with client(gateway) as http:
            response = await http.delete("/v1/services")
            assert response.status_code == 405
            assert {"GET", "HEAD"} <= set(response.headers.get("allow", "").split(", "))
