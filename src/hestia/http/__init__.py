"""The HTTP side: the Quart-Trio app (API), the proxy handler, the upstream client."""
