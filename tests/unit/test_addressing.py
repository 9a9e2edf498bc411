"""Which service a request is for (http/addressing.py), and how an answer's own address is
rewritten to the gateway's (http/rewrite.py)."""

from __future__ import annotations

import pytest

from hestia import parse_config
from hestia.errors import ConfigError
from hestia.http.addressing import Address, Addressing
from hestia.http.rewrite import Rewrite


def scope(host: bytes | None, path: bytes) -> dict:
    headers = [(b"host", host)] if host is not None else []
    return {"type": "http", "headers": [(b"accept", b"*/*"), *headers], "raw_path": path,
            "path": path.decode()}


ADDRESSING = Addressing(["notebook", "Comfy", "a.b"], {"notebook": ["nb.example.net"]},
                        "localhost")


@pytest.mark.parametrize(("host", "path", "expected"), [
    # By host name: the path unchanged, case and port ignored.
    (b"notebook.localhost:8080", b"/lab?x=1", Address("notebook", b"/lab?x=1", by_host=True)),
    (b"NoteBook.LocalHost", b"/", Address("notebook", b"/", by_host=True)),
    (b"comfy.localhost", b"/ws", Address("Comfy", b"/ws", by_host=True)),
    (b"a.b.localhost", b"/", Address("a.b", b"/", by_host=True)),
    (b"nb.example.net:443", b"/tree", Address("notebook", b"/tree", by_host=True)),
    (b"notebook.localhost.", b"/", Address("notebook", b"/", by_host=True)),
    # The gateway's own paths on a service host are the service's.
    (b"notebook.localhost", b"/v1/services", Address("notebook", b"/v1/services",
                                                      by_host=True)),
    # An unknown name under the domain: nobody's.
    (b"other.localhost:8080", b"/", Address(None, b"/", unknown_host="other.localhost")),
    # The gateway's own host: paths.
    (b"localhost:8080", b"/services/notebook/lab", Address("notebook", b"/lab",
                                                           prefix=b"/services/notebook")),
    (b"127.0.0.1:8080", b"/services/notebook", Address("notebook", b"/",
                                                       prefix=b"/services/notebook")),
    (b"localhost", b"/services/a%2Eb/x", Address("a.b", b"/x", prefix=b"/services/a%2Eb")),
    (b"[::1]:8080", b"/v1/services", Address(None, b"/v1/services")),
    (None, b"/services/notebook/", Address("notebook", b"/", prefix=b"/services/notebook")),
    # A name that is none of the gateway's: refused by the front (DNS rebinding).
    (b"example.org", b"/services/notebook/", Address(None, b"/services/notebook/",
                                                     foreign_host="example.org")),
    (b"EVIL.example:8080", b"/v1/services", Address(None, b"/v1/services",
                                                    foreign_host="evil.example")),
])
def test_resolve(host: bytes | None, path: bytes, expected: Address) -> None:
    assert ADDRESSING.resolve(scope(host, path)) == expected


def test_browser_namespace_on_a_service_host_is_the_gateways() -> None:
    address = ADDRESSING.resolve(scope(b"notebook.localhost", b"/__hestia/login"))
    assert address.gateway_page and not address.proxied
    on_path = ADDRESSING.resolve(scope(b"localhost", b"/services/notebook/__hestia/x"))
    assert on_path.proxied  # a path route's paths are all the service's


def test_resolved_once_per_request() -> None:
    s = scope(b"notebook.localhost", b"/")
    first = ADDRESSING.resolve(s)
    assert ADDRESSING.resolve(s) is first


def test_without_host_names_the_host_is_never_read() -> None:
    addressing = Addressing(["notebook"])
    assert not addressing.by_host
    assert addressing.resolve(scope(b"notebook.localhost", b"/lab")) == Address(None, b"/lab")
    assert addressing.host_of("notebook") is None
    assert ADDRESSING.host_of("notebook") == "notebook.localhost"


def service(**fields: object) -> dict:
    return {"upstream": "http://127.0.0.1:1", "launcher": {"external": {}}, **fields}


def test_config_hosts_and_domain_are_normalised_and_checked() -> None:
    config = parse_config({"service_domain": "Apps.Example.NET.",
                           "services": {"a": service(hosts=["A.example.net"])}}, env={})
    assert config.service_domain == "apps.example.net"
    assert config.services["a"].hosts == ["a.example.net"]
    assert Addressing.from_config(config).resolve(scope(b"a.apps.example.net", b"/")).service \
        == "a"
    with pytest.raises(ConfigError) as bad:
        parse_config({"service_domain": "http://localhost:8080",
                      "services": {"a": service(hosts=["x/y", "ok.example"])}}, env={})
    text = str(bad.value)
    assert "service_domain: service_domain must be a host name" in text
    assert "services.a.hosts: " in text and "'x/y'" in text
    with pytest.raises(ConfigError, match="'x.example' is already a host of 'a'"):
        parse_config({"services": {"a": service(hosts=["x.example"]),
                                   "b": service(hosts=["X.example"])}}, env={})
    # The backends of one service share its host names.
    parse_config({"services": {"a": {**service(hosts=["x.example"]),
                                     "backends": {"one": {}, "two": {}}}}}, env={})


# --- rewriting ------------------------------------------------------------------------------

PATH_ROUTE = Rewrite(b"127.0.0.1:8888", b"", b"/services/notebook", cookies=True)
HOST_ROUTE = Rewrite(b"127.0.0.1:8888", b"", b"")
WITH_PREFIX = Rewrite(b"gpu:80", b"/api", b"/services/api")


@pytest.mark.parametrize(("rewrite", "value", "expected"), [
    # Absolute on the upstream's origin: the same route on the gateway, root-relative.
    (PATH_ROUTE, b"http://127.0.0.1:8888/lab?a=1", b"/services/notebook/lab?a=1"),
    (PATH_ROUTE, b"HTTP://127.0.0.1:8888", b"/services/notebook/"),
    (PATH_ROUTE, b"https://127.0.0.1:8888/x#f", b"/services/notebook/x#f"),
    (PATH_ROUTE, b"//127.0.0.1:8888/x", b"/services/notebook/x"),
    (HOST_ROUTE, b"http://127.0.0.1:8888/lab", b"/lab"),
    (WITH_PREFIX, b"http://gpu/api/v2", b"/services/api/v2"),
    (WITH_PREFIX, b"http://gpu:80/api", b"/services/api/"),
    (WITH_PREFIX, b"http://gpu/apiary", b"/services/api/apiary"),
    # Root-relative on a path route: the prefix, unless the app knows its base path.
    (PATH_ROUTE, b"/lab", b"/services/notebook/lab"),
    (PATH_ROUTE, b"/", b"/services/notebook/"),
    (PATH_ROUTE, b"/services/notebook/lab", b"/services/notebook/lab"),
    (PATH_ROUTE, b"/services/notebookx", b"/services/notebook/services/notebookx"),
    (HOST_ROUTE, b"/lab", b"/lab"),
    (WITH_PREFIX, b"/api/x", b"/services/api/x"),
    # Left alone: another host, relative references, other ports.
    (PATH_ROUTE, b"https://accounts.example.com/login", b"https://accounts.example.com/login"),
    (PATH_ROUTE, b"http://127.0.0.1:9999/x", b"http://127.0.0.1:9999/x"),
    (PATH_ROUTE, b"http://127.0.0.1:8888.evil.example/x", b"http://127.0.0.1:8888.evil.example/x"),
    (PATH_ROUTE, b"lab/tree", b"lab/tree"),
    (PATH_ROUTE, b"../up", b"../up"),
    (PATH_ROUTE, b"?q=1", b"?q=1"),
    (WITH_PREFIX, b"http://gpu:8080/x", b"http://gpu:8080/x"),
])
def test_location(rewrite: Rewrite, value: bytes, expected: bytes) -> None:
    assert rewrite.header(b"location", value) == expected
    assert rewrite.header(b"content-location", value) == expected


def test_cookie_path_on_path_routes_only() -> None:
    assert PATH_ROUTE.header(b"set-cookie", b"s=1; Path=/; HttpOnly") == \
        b"s=1; Path=/services/notebook/; HttpOnly"
    assert PATH_ROUTE.header(b"set-cookie", b"s=1;path=/lab") == b"s=1; Path=/services/notebook/lab"
    assert PATH_ROUTE.header(b"set-cookie", b"s=1; HttpOnly") == b"s=1; HttpOnly"
    assert PATH_ROUTE.wanted(b"set-cookie") and not HOST_ROUTE.wanted(b"set-cookie")
    assert Rewrite(b"h:1", b"", b"", cookies=True).header(b"set-cookie", b"s=1; Path=/x") == \
        b"s=1; Path=/x"


@pytest.mark.parametrize(("host", "allowed"), [
    ("localhost", True), ("api.localhost", True), ("127.0.0.1", True), ("10.1.2.3", True),
    ("[::1]", True), ("[fe80::1]", True), ("notebook.localhost", True),
    ("nb.example.net", True),  # a service's own name
    ("gpu-box.lan", True), ("a.b.apps.example", True), ("apps.example", False),
    ("evil.example", False), ("localhost.evil.example", False), ("127.0.0.1.nip.io", False),
    ("gpu-box.lan.evil", False),
])
def test_the_names_the_gateway_answers_to(host: str, allowed: bool) -> None:
    addressing = Addressing(["notebook"], {"notebook": ["nb.example.net"]}, None,
                            ["gpu-box.lan", "*.apps.example"])
    assert addressing.allowed(host) is allowed
    address = addressing.resolve(scope(host.encode() + b":8080", b"/services/notebook/"))
    assert (address.foreign_host is None) is allowed


def test_allowed_hosts_in_the_config() -> None:
    config = parse_config({"allowed_hosts": ["GPU-Box.LAN.", "*.apps.example"]}, env={})
    assert config.allowed_hosts == ["gpu-box.lan", "*.apps.example"]
    assert Addressing.from_config(config).allowed("x.apps.example")
    with pytest.raises(ConfigError, match=r"allowed_hosts: not a host name: 'http://x'"):
        parse_config({"allowed_hosts": ["http://x"]}, env={})
