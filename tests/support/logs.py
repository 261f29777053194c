"""Log records as the tests read them: `event=NAME key=value ...`.

The daemon logs events (`gloomwire.logformat.event`): a record's message is
the event's name and its fields ride along, so `record.getMessage()` alone
says only "connect".  `message` writes a record as the logfmt formatter
writes the event part of a line, and `log_text` does it for every record a
test captured, tracebacks included, so assertions read like the log does.
"""

from __future__ import annotations

import logging

import pytest

from gloomwire.logformat import FIELDS, logfmt_value

__all__ = ["fields", "log_text", "message"]


def fields(record: logging.LogRecord) -> dict[str, object]:
    """The event's fields (empty for a record logged the old way)."""
    return dict(getattr(record, FIELDS, None) or {})


def message(record: logging.LogRecord) -> str:
    """`event=NAME k=v ...` for an event; the plain message for anything else."""
    found = getattr(record, FIELDS, None)
    if found is None:
        return record.getMessage()
    parts = [f"event={logfmt_value(record.msg)}"]
    parts.extend(f"{key}={logfmt_value(value)}" for key, value in found.items())
    return " ".join(parts)


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record as `message` writes it, one a line, with tracebacks."""
    lines = []
    for record in caplog.records:
        lines.append(message(record))
        if record.exc_info:
            lines.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(lines)
