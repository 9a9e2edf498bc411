"""Response headers that name the upstream, made to name the gateway (as nginx's default
`proxy_redirect` does).

`Location` and `Content-Location`:
- an absolute URL on the upstream's origin (`http://127.0.0.1:8888/lab`, as an app builds it from
  the `Host` it was sent) becomes the same route on the gateway, as a root-relative URL
  (`/services/notebook/lab`, or `/lab` on a host route): the browser keeps the scheme, host and
  port it used to reach the gateway;
- on a path route, a root-relative path gets the `/services/<id>` prefix (`/lab` →
  `/services/notebook/lab`), unless it already has it (an app told its base path);
- the upstream URL's own path (`upstream: http://host:port/api`) is taken off before the route's
  prefix goes on, so what the app says of `/api/x` reaches it as `/api/x` again;
- anything else (another host, a relative reference, a fragment) is left alone.

`Set-Cookie`'s `Path` is rewritten the same way on path routes when the service sets
`rewrite_cookie_path` (off by default: most apps set `Path=/`, which covers the prefix anyway).

Only responses that carry one of these headers pay for any of this.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Rewrite"]

Headers = list[tuple[bytes, bytes]]
_LOCATIONS = frozenset({b"location", b"content-location"})
_WITH_COOKIES = _LOCATIONS | {b"set-cookie"}


class Rewrite(NamedTuple):
    """How one response's headers are rewritten: `upstream` is the `Host` it was sent (the
    upstream's `host:port`), `upstream_prefix` its URL's path, `prefix` the route's
    (`/services/<id>`; empty on a host route)."""

    upstream: bytes
    upstream_prefix: bytes
    prefix: bytes
    cookies: bool = False

    @property
    def names(self) -> frozenset[bytes]:
        """The response headers this rewrite changes."""
        return _WITH_COOKIES if self.cookies else _LOCATIONS

    def wanted(self, name: bytes) -> bool:
        return name in self.names

    def header(self, name: bytes, value: bytes) -> bytes:
        if name == b"set-cookie":
            return self.cookie(value)
        return self.location(value)

    def location(self, value: bytes) -> bytes:
        url = value.strip()
        lowered = url.lower()
        for scheme in (b"http://", b"https://", b"//"):
            if lowered.startswith(scheme):
                authority_end = _authority_end(url, len(scheme))
                if not _same_host(lowered[len(scheme):authority_end], self.upstream, scheme):
                    return value
                return self.path(url[authority_end:] or b"/")
        if url.startswith(b"/") and not url.startswith(b"//"):
            return self.path(url)
        return value

    def path(self, path: bytes) -> bytes:
        """A root-relative path of the upstream's, as the client reaches it."""
        if self.prefix and (path == self.prefix or path.startswith(self.prefix + b"/")
                            or path.startswith(self.prefix + b"?")):
            return path  # the app knows its base path already
        up = self.upstream_prefix
        if up and path.startswith(up) and path[len(up):len(up) + 1] in (b"", b"/", b"?"):
            path = path[len(up):]
            if not path.startswith(b"/"):
                path = b"/" + path
        return self.prefix + path if self.prefix else path

    def cookie(self, value: bytes) -> bytes:
        if not self.prefix:
            return value
        parts = value.split(b";")
        for i, part in enumerate(parts[1:], 1):
            name, eq, path = part.partition(b"=")
            if eq and name.strip().lower() == b"path" and path.strip().startswith(b"/"):
                parts[i] = b" Path=" + self.path(path.strip())
        return b";".join(parts)


def _authority_end(url: bytes, start: int) -> int:
    for i in range(start, len(url)):
        if url[i] in b"/?#":
            return i
    return len(url)


def _same_host(authority: bytes, upstream: bytes, scheme: bytes) -> bool:
    """Whether a URL's authority (lowercased) is the upstream's `host:port`, port defaults
    included (`http://host/` is `host:80`)."""
    authority = authority.rpartition(b"@")[2]
    if authority == upstream:
        return True
    host, _, port = upstream.rpartition(b":")
    default = {b"http://": b"80", b"https://": b"443"}.get(scheme)
    return authority == host and port == default
