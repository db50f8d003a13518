"""Logging for sagakit processes: plain text, or one JSON object a line (``--log-format
json``) carrying the saga id, correlation id and trace id of the record being handled."""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson

_CONTEXT: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "sagakit_log_context", default=None
)


class log_context:
    """Log records made inside the block carry `fields` (saga_id, correlation_id, trace_id).

    A class rather than a generator: it runs for every consumed record.
    """

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: str | None) -> None:
        self._fields = fields
        self._token: contextvars.Token[dict[str, str] | None] | None = None

    def __enter__(self) -> None:
        self._token = _CONTEXT.set(self._fields)  # type: ignore[arg-type]

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _CONTEXT.reset(self._token)


def trace_id_of(traceparent: str | None) -> str | None:
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 else None


_base_factory = logging.getLogRecordFactory()


def _record_with_context(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Every log record made inside `log_context` carries its fields as attributes."""
    record = _base_factory(*args, **kwargs)
    for key, value in (_CONTEXT.get() or {}).items():
        if value:
            setattr(record, key, value)
    return record


if getattr(logging.getLogRecordFactory(), "__name__", "") != "_record_with_context":
    logging.setLogRecordFactory(_record_with_context)


class JsonFormatter(logging.Formatter):
    FIELDS = ("saga_id", "correlation_id", "trace_id")

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in self.FIELDS:
            value = getattr(record, key, None)
            if value:
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(data).decode()


def configure_logging(verbose: bool = False, fmt: str = "text") -> None:
    """Root logging to stderr, as text or JSON; aiokafka's rebalance chatter muted."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter = JsonFormatter()
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose or fmt == "json" else logging.WARNING)
    if not verbose:
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
