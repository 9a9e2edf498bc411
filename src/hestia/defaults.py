"""The built-in configuration `hestia serve` uses when it is given no file: one demo service."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["DEMO_CONFIG"]

DEMO_CONFIG: dict[str, Any] = {
    "listen": "127.0.0.1:8080",
    "service_domain": "localhost",  # the demo is also http://demo.localhost:8080/
    "services": {
        "demo": {
            "upstream": "http://127.0.0.1:8081",
            "launcher": {"process": {"command": [sys.executable, "-m", "hestia.demo"]}},
            "readiness": {"http": "/health", "timeout": "30s"},
            "idle_timeout": "30s",
            "queue": {"max": 100, "timeout": "30s"},
        },
    },
}
