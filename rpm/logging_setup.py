"""Logging for the ``rpm`` commands: one JSON object per line (``json``) or plain text.

A small formatter of our own rather than a dependency: it is one method over orjson, which
the server already uses, and it knows the one foreign record shape we want as fields
(uvicorn's access log). Structured fields come from ``extra={...}`` on a logging call;
by the project's rule they are identifiers and counts only (patient, device, alert and
outbox ids, batch sizes), never names, phone numbers or measured values.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

LogFormat = Literal["json", "text"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime"}
)
# uvicorn's own extra: its message again, with terminal colour codes.
_DROPPED = frozenset({"color_message"})
# uvicorn.access records carry (client, method, path with query, HTTP version, status).
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


class JsonFormatter(logging.Formatter):
    """time (UTC, ISO 8601), level, logger, message, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            doc.update(zip(_ACCESS_FIELDS, record.args, strict=False))
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in _DROPPED and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


def configure(fmt: LogFormat, level: int = logging.INFO) -> None:
    """Send every logger (uvicorn's included) to stderr in ``fmt``, replacing earlier setup."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn's loggers propagate to the root when it is given no logging config of its own.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # twilio logs whole requests at INFO; request bodies carry phone numbers and texts.
    logging.getLogger("twilio").setLevel(logging.WARNING)
    # httpx logs every request line at INFO (the EHR push, the simulator's webhooks): noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.captureWarnings(True)
