"""The HTTP side of every long-running sagakit process: health, readiness and metrics.

The contract deployments rely on (docker-compose.yml, deploy/):

    GET  /healthz  200 while the process runs (liveness)
    GET  /readyz   200 once connected, with partitions assigned and restored; else 503
    GET  /metrics  Prometheus text format
    ...            the routes of the services the process runs (`Service.route`)

served on port 8080 unless `--http-port` (or SAGAKIT_HTTP_PORT) says otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import anyio
from aiohttp import web
from anyio.abc import TaskStatus

from ._errors import SagaError
from ._metrics import Metrics

DEFAULT_HTTP_PORT = 8080
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"


# -- the server ----------------------------------------------------------------------------


log = logging.getLogger("sagakit.http")

Route = tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]


class HttpEndpoints:
    """Liveness, readiness and metrics of one process (plus extra routes), over aiohttp."""

    def __init__(
        self,
        *,
        port: int = DEFAULT_HTTP_PORT,
        host: str = "0.0.0.0",
        ready: Callable[[], bool],
        metrics: Sequence[Metrics] = (),
        routes: Sequence[Route] = (),
    ) -> None:
        self.port = port
        self.host = host
        self._ready = ready
        self._metrics = list(metrics)
        self._routes = list(routes)
        self.bound_port: int | None = None

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readiness(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: partitions not assigned or restored\n")

    async def _scrape(self, request: web.Request) -> web.Response:
        body = b"".join([await m.render() for m in self._metrics])
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; reports started once listening."""
        app = web.Application()
        app.router.add_get(HEALTH_PATH, self._health)
        app.router.add_get(READY_PATH, self._readiness)
        app.router.add_get(METRICS_PATH, self._scrape)
        for method, path, handler in self._routes:
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            try:
                await site.start()
            except OSError as exc:
                why = (exc.strerror or str(exc)).lower()
                raise SagaError(
                    f"cannot serve HTTP on {self.host}:{self.port}: {why}; "
                    "is another process using the port? Choose one with --http-port "
                    "(SAGAKIT_HTTP_PORT; 0: no HTTP server)"
                ) from None
            addresses = runner.addresses
            self.bound_port = int(addresses[0][1]) if addresses else self.port
            log.info(
                "serving %s, %s, %s on port %s",
                HEALTH_PATH,
                READY_PATH,
                METRICS_PATH,
                self.bound_port,
            )
            task_status.started()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()
