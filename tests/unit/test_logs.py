"""Logging setup: text and JSON lines, request ids, the access line, bad settings named."""

from __future__ import annotations

import io
import json
import logging

import pytest

from baton.core.logs import access_line, setup_logging
from baton.core.request import Completion


@pytest.fixture
def restore():
    logger = logging.getLogger("baton")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.mark.usefixtures("restore")
def test_json_lines_carry_request_id_and_access_fields():
    buf = io.StringIO()
    setup_logging("info", "json", stream=buf)
    logging.getLogger("baton.router").info("admitted %d", 3, extra={"request_id": "req-1"})
    logging.getLogger("baton.router").debug("hidden")
    access_line(Completion("req-2", [1, 2], "ab", "length", 7, {"ttft": 12.34, "total": 50.0}))
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert len(lines) == 2
    assert (
        lines[0]["msg"] == "admitted 3" and lines[0]["request_id"] == "req-1" and lines[0]["level"] == "info"
    )
    a = lines[1]
    assert a["logger"] == "baton.access" and a["request_id"] == "req-2"
    assert (a["prompt_tokens"], a["output_tokens"], a["finish_reason"]) == (7, 2, "length")
    assert (a["ttft_ms"], a["total_ms"]) == (12.3, 50.0) and "error" not in a


@pytest.mark.usefixtures("restore")
def test_text_lines_and_one_handler():
    buf = io.StringIO()
    setup_logging("debug", "text", stream=buf)
    setup_logging("debug", "text", stream=buf)  # again: still one handler, no doubled lines
    access_line(Completion("req-9", [], "", "abort", 1, {}, error="worker lost"))
    (line,) = buf.getvalue().splitlines()
    assert " INFO baton.access [req-9] finished prompt_tokens=1 output_tokens=0 finish_reason=abort" in line
    assert line.endswith("error=worker lost")


def test_bad_settings_name_the_flag():
    with pytest.raises(ValueError, match="log_level"):
        setup_logging("loud")
    with pytest.raises(ValueError, match="log_format"):
        setup_logging("info", "xml")
