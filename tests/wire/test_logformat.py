"""The shared log format: every event line parses back to what was logged."""

from __future__ import annotations

import json
import logging
import shlex

import pytest

from gloomwire.logformat import FIELDS, JsonFormatter, LogfmtFormatter, event, logfmt_value


def record(name: str, **fields: object) -> logging.LogRecord:
    rec = logging.LogRecord("gloomd.test", logging.INFO, __file__, 1, name, None, None)
    setattr(rec, FIELDS, fields)
    return rec


def parse(line: str) -> dict[str, str]:
    # shlex reads logfmt's double-quoted values with backslash escapes.
    return dict(part.split("=", 1) for part in shlex.split(line))


@pytest.mark.parametrize(
    "value",
    ["plain", "with space", 'a "quote"', "x=y", "", "back\\slash", 42, None, True],
)
def test_logfmt_values_parse_back(value: object) -> None:
    line = LogfmtFormatter().format(record("e", v=value))
    got = parse(line)["v"]
    expected = value if type(value) is str else json.dumps(value)
    assert got == expected


def test_a_value_never_breaks_the_line() -> None:
    line = LogfmtFormatter().format(record("e", v="line\nbreak"))
    assert "\n" not in line and parse(line)["v"] == "line\\nbreak"


def test_a_line_carries_time_level_logger_event_and_fields_in_order() -> None:
    line = LogfmtFormatter().format(record("submit", id="abc", type=["a", 1], priority=3))
    keys = [part.split("=", 1)[0] for part in shlex.split(line)]
    assert keys == ["time", "level", "logger", "event", "id", "type", "priority"]
    assert parse(line)["type"] == '["a",1]'
    assert logfmt_value(["a", 1]) == '"[\\"a\\",1]"'


def test_json_lines_hold_the_same_fields() -> None:
    body = json.loads(JsonFormatter().format(record("submit", id=7, reason="a b")))
    assert body["event"] == "submit" and body["id"] == 7 and body["reason"] == "a b"
    assert body["level"] == "info" and body["logger"] == "gloomd.test"


def test_event_is_free_below_the_level(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("gloomd.test.level")
    with caplog.at_level(logging.INFO, logger="gloomd.test.level"):
        event(logger, "quiet", logging.DEBUG, x=1)
        event(logger, "loud", x=2)
    assert [(r.msg, getattr(r, FIELDS)) for r in caplog.records] == [("loud", {"x": 2})]
