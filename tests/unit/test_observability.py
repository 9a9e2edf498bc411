"""Logging and request ids."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from hestia.observability import configure_logging, request_id_from


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def test_hestia_and_library_records_are_json_lines(restore_logging):
    stream = io.StringIO()
    configure_logging("info", stream=stream, fmt="json")
    structlog.get_logger("hestia.test").info("backend_ready", service="up", start_duration_ms=3)
    logging.getLogger("hypercorn.error").info("Running on http://127.0.0.1:1")  # left out
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("hypercorn.error").exception("Error in ASGI Framework")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["backend_ready", "Error in ASGI Framework"]
    assert lines[0]["service"] == "up" and lines[0]["level"] == "info"
    assert lines[1]["level"] == "error" and lines[1]["logger"] == "hypercorn.error"
    assert "ValueError: boom" in lines[1]["exception"]
    assert all(line["timestamp"].endswith("Z") for line in lines)


def test_request_ids_are_the_clients_when_sane_else_new():
    assert request_id_from([(b"x-request-id", b"trace-1")]) == "trace-1"
    for bad in (b"", b"has space", b"x" * 129, "é".encode()):
        generated = request_id_from([(b"x-request-id", bad)])
        assert len(generated) == 32 and generated != bad.decode(errors="replace")
    assert request_id_from([]) != request_id_from([])
