"""One log format for the daemon and the worker: logfmt lines or JSON objects.

Every line is an *event*: a name and fields.  Call sites say what happened
(`event(log, "submit", id=job_id, type=job_type)`) and never format values
themselves, so quoting is right everywhere (a reason with spaces, an id that
is an integer, a type that is a list) and the same events come out as logfmt
(`--log-format logfmt`, the default) or as one JSON object a line
(`--log-format json`).  It lives in the wire package because the daemon and
the client's worker runner both log through it and share nothing else below.

Records logged the old way (`log.info("text %s", x)`) still print: their
message becomes the `msg` field.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from . import codec

__all__ = [
    "FIELDS",
    "FORMATS",
    "JsonFormatter",
    "LogfmtFormatter",
    "event",
    "formatter",
    "logfmt_value",
    "setup",
]

#: The values of `--log-format` (gloomd and gloom worker), the default first.
FORMATS = ("logfmt", "json")

#: The attribute of a LogRecord that carries an event's fields.
FIELDS = "gloom_fields"

# A value is written bare when it cannot be misread: no space, quote, `=`
# or control character, and not empty.
_BARE = re.compile(r"[A-Za-z0-9_.:/@+\-,\[\]{}()*#%^~!?<>|;&$']+\Z")
# Inside quotes: the backslash, the quote and every control character are
# escaped as go-logfmt writes them (`\n`, `\t`, `\u001b`), so that a value
# never breaks the line and strict logfmt parsers read it back exactly; a
# lone surrogate (which no encoder can write) becomes U+FFFD, as there.
_ESCAPE = re.compile(r'[\\"\x00-\x1f\x7f\ud800-\udfff]')
_NAMED_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char >= "\ud800":
        return "\\ufffd"
    return _NAMED_ESCAPES.get(char) or f"\\u{ord(char):04x}"


def event(
    logger: logging.Logger,
    name: str,
    /,
    level: int = logging.INFO,
    *,
    exc_info: Any = None,
    **fields: Any,
) -> None:
    """Log event `name` with `fields` (checked against the level first: cheap when off)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={FIELDS: fields}, exc_info=exc_info)


def logfmt_value(value: Any) -> str:
    """One value as logfmt: bare when unambiguous, else double-quoted with escapes.

    Strings are written as they are; numbers and booleans as JSON writes them;
    any other JSON value (a job type can be a list) as its compact JSON.
    """
    if type(value) is str:
        text = value
    elif value is None or type(value) in (bool, int, float):
        text = codec.dumps(value).decode()
    else:
        try:
            text = codec.dumps(value).decode()
        except (TypeError, ValueError):
            text = str(value)
    if _BARE.match(text):
        return text
    return '"' + _ESCAPE.sub(_escape, text) + '"'


def _timestamp(record: logging.LogRecord) -> str:
    seconds = int(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (f".{int(record.msecs):03d}Z")


def _pairs(record: logging.LogRecord) -> list[tuple[str, Any]]:
    fields = getattr(record, FIELDS, None)
    pairs: list[tuple[str, Any]] = [
        ("time", _timestamp(record)),
        ("level", record.levelname.lower()),
        ("logger", record.name),
    ]
    if fields is None:
        pairs.append(("msg", record.getMessage()))
    else:
        pairs.append(("event", record.msg))
        pairs.extend(fields.items())
    if record.exc_info:
        pairs.append(("traceback", logging.Formatter().formatException(record.exc_info)))
    return pairs


class LogfmtFormatter(logging.Formatter):
    """`time=... level=info logger=gloomd.server event=listening host=127.0.0.1 ...`"""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={logfmt_value(value)}" for key, value in _pairs(record))


class JsonFormatter(logging.Formatter):
    """`{"time":"...","level":"info","logger":"gloomd.server","event":"listening",...}`"""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {}
        for key, value in _pairs(record):
            try:
                codec.dumps(value)
            except (TypeError, ValueError):
                value = str(value)
            body[key] = value
        return codec.dumps(body).decode()


def setup(level: int | str, kind: str = "logfmt", stream: Any = None) -> None:
    """Send every log record to `stream` (stderr) in format `kind`, from `level` up.

    The daemon and the worker both start here, so one `--log-format` means
    the same lines in both.  Replaces whatever handlers the root logger had.
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(kind))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)


def formatter(kind: str) -> logging.Formatter:
    """The formatter for `--log-format` `kind` ("logfmt" or "json")."""
    if kind == "json":
        return JsonFormatter()
    if kind == "logfmt":
        return LogfmtFormatter()
    raise ValueError(f"unknown log format {kind!r}: logfmt or json")
