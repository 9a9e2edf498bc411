"""Backend lifecycle: the supervisor (state machine, leases, hold queue) and readiness probes."""
