"""What the orchestrator and services share about being watched: their tracing, their
metrics and the user's interceptors, called as one `Interceptors`."""

from __future__ import annotations

from ._interceptors import Interceptor, Interceptors, LogContext
from ._metrics import Metrics
from .tracing import Tracing


class Observed:
    """A role's `tracing` (assignable), `metrics` and `interceptors` (tracing, the log
    context, metrics, then the user's)."""

    _tracing: Tracing
    metrics: Metrics
    _own_interceptors: tuple[Interceptor, ...]
    interceptors: Interceptors

    @property
    def tracing(self) -> Tracing:
        return self._tracing

    @tracing.setter
    def tracing(self, tracing: Tracing) -> None:
        self._tracing = tracing
        self._wire()

    def _wire(self) -> None:
        self.interceptors = Interceptors(
            [self._tracing, LogContext(self._tracing), self.metrics, *self._own_interceptors]
        )
