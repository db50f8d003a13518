"""The HTTP side of every long-running sagakit process: health, readiness and metrics.

The contract deployments rely on (docker-compose.yml, deploy/):

    GET  /healthz  200 while the process runs (liveness)
    GET  /readyz   200 once connected, with partitions assigned and restored; else 503
    GET  /metrics  Prometheus text format
    POST /orders   the orders service only: place orders (the load generator's entry)

served on port 8080 unless `--http-port` (or SAGAKIT_HTTP_PORT) says otherwise.
"""

from __future__ import annotations

DEFAULT_HTTP_PORT = 8080
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
ORDERS_PATH = "/orders"

#: OpenTelemetry `service.name` of each component of the sample system.
COMPONENTS = ("saga-orchestrator", "orders", "payments", "inventory", "shipping")
