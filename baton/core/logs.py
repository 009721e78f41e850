"""Logging setup for the serving paths: stdlib ``logging``, text or JSON lines, request ids.

Every baton logger lives under ``baton`` (``baton.router``, ``baton.http``, ``baton.access``...).
A request-scoped line passes ``extra={"request_id": rid}``; the text format prints it as
``[rid]`` and the JSON format as a ``request_id`` key. The access logger (``baton.access``) writes one
line per finished request with its fields as extras (JSON keys, or ``key=value`` in text).
"""

from __future__ import annotations

import json
import logging
import sys
import time

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
ROOT = "baton"
ACCESS = "baton.access"
# Fields of an access line, in the order the text format prints them.
ACCESS_FIELDS = (
    "request_id",
    "prompt_tokens",
    "output_tokens",
    "finish_reason",
    "ttft_ms",
    "total_ms",
    "error",
)
_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict:
    return {k: v for k, v in record.__dict__.items() if k not in _STD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """``2026-01-01 12:00:00.123 INFO baton.router [req-1] message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        extras = _extras(record)
        rid = extras.pop("request_id", None)
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        head = f"{ts}.{int(record.msecs):03d} {record.levelname} {record.name}"
        if rid:
            head += f" [{rid}]"
        line = f"{head} {record.getMessage()}"
        if extras:
            line += " " + " ".join(f"{k}={extras[k]}" for k in _ordered(extras))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def _ordered(extras: dict) -> list[str]:
    known = [k for k in ACCESS_FIELDS if k in extras]
    return known + sorted(k for k in extras if k not in ACCESS_FIELDS)


def setup_logging(level: str = "info", fmt: str = "text", stream=None) -> logging.Handler:
    """Send baton's loggers to ``stream`` (stderr) at ``level`` in ``fmt``; returns the handler.

    Calling it again replaces the earlier handler (one handler, never duplicated lines).
    """
    if level not in LEVELS:
        raise ValueError(f"log_level: must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log_format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    logger = logging.getLogger(ROOT)
    for h in list(logger.handlers):
        if getattr(h, "_baton", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._baton = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return handler


def access_line(c) -> None:
    """The one access line of a finished request (``c`` a Completion)."""
    t = c.timings or {}
    extra = {
        "request_id": c.request_id,
        "prompt_tokens": c.prompt_tokens,
        "output_tokens": len(c.token_ids),
        "finish_reason": c.finish_reason,
        "ttft_ms": round(t.get("ttft", 0.0), 1),
        "total_ms": round(t.get("total", 0.0), 1),
    }
    if c.error:
        extra["error"] = c.error
    logging.getLogger(ACCESS).info("finished", extra=extra)
