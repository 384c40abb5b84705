"""Structured logging: one JSON object per line carrying the running job's id and trace id.

The job context lives in a context variable (``bgq.context``), so every log record emitted
from job code or from the worker while handling that job is tagged without passing anything.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from bgq.context import current_job_or_none

_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JobContextFilter(logging.Filter):
    """Adds ``job_id``, ``trace_id``, ``task`` and ``attempt`` of the running job to records."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current_job_or_none()
        if ctx is not None and not hasattr(record, "job_id"):
            record.job_id = ctx.job_id
            record.trace_id = ctx.trace_id
            record.task = ctx.task
            record.attempt = ctx.attempt
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines with the job id appended when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        job = getattr(record, "job_id", None)
        return f"{text} [job={job}]" if job else text


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Configure the root logger for a worker process (replaces existing handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


__all__ = ["JobContextFilter", "JsonFormatter", "TextFormatter", "configure"]
