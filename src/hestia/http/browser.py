"""What the gateway shows a browser: who is one, the `/__hestia/` namespace, and HTML answers.

A request is a browser *navigation* when it says so (`Sec-Fetch-Mode: navigate`, which every
current browser sends on a top-level load) or, from a client that sends no `Sec-Fetch-Mode`, when
its `Accept` puts `text/html` before any JSON. `fetch`/XHR, API clients and curl are never
navigations, so they keep their JSON answers and the hold queue.

`/__hestia/` on every host (the gateway's own and each service's host name) is the gateway's:
its login page, static files and each service's waiting-page endpoints. Nothing under it is ever
proxied. Pages are Jinja2 templates (Quart ships Jinja2) under `web/templates`, scripts and
styles under `web/static`; no build step, no CDN.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2

__all__ = ["BROWSER_PREFIX", "CSP", "STATIC_DIR", "html_headers", "is_navigation", "render"]

BROWSER_PREFIX = b"/__hestia/"
WEB_DIR = Path(__file__).parent / "web"
STATIC_DIR = WEB_DIR / "static"
# Every page loads only Hestia's own script, styles and endpoints; nothing inline (a page's data
# rides on attributes), no frames, forms only to Hestia itself.
CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       b"img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def is_navigation(method: str, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether this request is a browser loading a page (see the module's docstring)."""
    if method != "GET":
        return False
    accept = b""
    for name, value in headers:
        if name == b"sec-fetch-mode":
            return value.strip().lower() == b"navigate"
        if name == b"accept":
            accept = value.lower()
    html = accept.find(b"text/html")
    if html < 0:
        return False
    json_at = accept.find(b"json")
    return json_at < 0 or html < json_at


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(WEB_DIR / "templates"),
                              autoescape=True, trim_blocks=True, lstrip_blocks=True)


def render(template: str, **context: object) -> bytes:
    """A page from `web/templates`, every value HTML-escaped."""
    return _environment().get_template(template).render(**context).encode()


def html_headers(body: bytes, request_id: str) -> list[tuple[bytes, bytes]]:
    """Headers of a page of the gateway's own: never cached (a waiting page must not stand in
    for the app later), never framed, never sniffed, and loading nothing but Hestia's own
    (`CSP`)."""
    return [(b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"content-security-policy", CSP),
            (b"referrer-policy", b"same-origin"),
            (b"x-request-id", request_id.encode())]
