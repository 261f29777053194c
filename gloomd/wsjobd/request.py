"""The first message of a connection, validated: sans-IO, no machine, no trio.

`parse_request` takes the message as it came and returns a `JobRequest` (or
raises the error the client sees), checking in the order the reference
fixes: JSON object, ``ident``, ``func``, then the other fields' types
(``progress``, ``check_load``, ``report_system_load``,
``cpu_sample_interval``, no ``jobs_dir``).  The load check and loading the
function need the machine and come later, in `service`.
"""

from __future__ import annotations

import keyword
import math
import re
from dataclasses import dataclass
from typing import Any, TypeAlias

from gloomwire import codec

from .errors import InvalidMessageError, InvalidProgressError
from .load import Thresholds

__all__ = [
    "DEFAULT_CPU_SAMPLE_INTERVAL",
    "DEFAULT_REPORT_INTERVAL",
    "MAX_CPU_SAMPLE_INTERVAL",
    "MIN_REPORT_INTERVAL",
    "IdentKey",
    "JobRequest",
    "ReportOptions",
    "ident_key",
    "parse_request",
]

# pykit's defaults.
DEFAULT_REPORT_INTERVAL = 5.0
DEFAULT_CPU_SAMPLE_INTERVAL = 0.02
MAX_CPU_SAMPLE_INTERVAL = 10.0
# A positive interval is valid, but one of a microsecond would have the server
# encode and send reports in a tight loop for one client; below this floor the
# reports simply come as fast as the floor allows.
MIN_REPORT_INTERVAL = 0.01

IdentKey: TypeAlias = tuple[str, Any]

# ASCII only: Python would NFKC-normalise a non-ASCII identifier in source but
# not in a module file name, and nobody needs that ambiguity in a job name.
_FUNC_PART = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_THRESHOLD_NAMES = ("mem_low_threshold", "cpu_low_threshold", "max_client_number")
_EXCERPT = 200


@dataclass(frozen=True, slots=True)
class ReportOptions:
    """How one listener wants its reports; an attaching client brings its own."""

    enabled: bool = True
    interval: float = DEFAULT_REPORT_INTERVAL
    key: str | None = None
    system_load: bool = False
    cpu_sample_interval: float = DEFAULT_CPU_SAMPLE_INTERVAL


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A job description that passed every type check.

    ``data`` is the whole parsed message: it becomes ``job.data`` when this
    request starts the job, so extra keys reach the job function as in pykit.
    """

    ident: Any
    ident_key: IdentKey
    func: str
    func_parts: tuple[str, ...]
    data: dict[str, Any]
    report: ReportOptions
    thresholds: Thresholds | None


def _is_number(value: Any) -> bool:
    # JSON booleans decode to bool, a subclass of int: they are not numbers here.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)


def _excerpt(message: str | bytes) -> str:
    text = message if isinstance(message, str) else message.decode("utf-8", "replace")
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."


def ident_key(ident: Any) -> IdentKey:
    """The registry key of an ident: JSON type plus value, so ``true`` and ``1`` differ.

    Python's ``True == 1`` would otherwise merge them; ``1`` and ``1.0`` are the same
    JSON number and stay the same key, as they were in pykit.
    """
    if isinstance(ident, bool):
        return ("boolean", ident)
    if isinstance(ident, int | float):
        return ("number", ident)
    if isinstance(ident, str):
        return ("string", ident)
    return ("null", None)


def _parse_progress(data: dict[str, Any]) -> tuple[bool, float, str | None]:
    progress = data.get("progress", {})
    # `progress is False`, not `== False`: pykit's 0 == False turned reports off.
    if progress is None or progress is False:
        return False, DEFAULT_REPORT_INTERVAL, None
    if not isinstance(progress, dict):
        raise InvalidProgressError("the progress in message is not a dictionary")
    interval = progress.get("interval", DEFAULT_REPORT_INTERVAL)
    if not _is_number(interval) or interval <= 0:
        raise InvalidProgressError("progress interval is not a number greater than 0")
    key = progress.get("key")
    if key is not None and not isinstance(key, str):
        raise InvalidProgressError("progress key is not a string")
    return True, max(float(interval), MIN_REPORT_INTERVAL), key


def _parse_check_load(data: dict[str, Any]) -> Thresholds | None:
    check = data.get("check_load")
    if check is None:
        return None
    if not isinstance(check, dict):
        raise InvalidMessageError("check_load is not a dictionary")
    given: dict[str, float] = {}
    for name in _THRESHOLD_NAMES:
        if name in check:
            if not _is_number(check[name]):
                raise InvalidMessageError(f"{name} is not a number")
            given[name] = check[name]
    return Thresholds(**given)


def parse_request(message: str | bytes) -> JobRequest:
    """Validate the first message of a connection, in the reference's order.

    JSON object, ``ident``, ``func``, then the other fields' types (``progress``,
    ``check_load``, ``report_system_load``, ``cpu_sample_interval``, no
    ``jobs_dir``).  The load check and loading the function come later, in the
    service, because they need the machine.
    """
    raw = message.encode("utf-8", "surrogatepass") if isinstance(message, str) else message
    try:
        data = codec.loads(raw)
    except (codec.DecodeError, RecursionError):
        raise InvalidMessageError(
            f"message is not a valid json string: {_excerpt(message)}"
        ) from None
    if not isinstance(data, dict):
        raise InvalidMessageError("message is not dictionary")

    if "ident" not in data:
        raise InvalidMessageError("'ident' is not in message")
    ident = data["ident"]
    if ident is not None and not isinstance(ident, str | int | float):
        raise InvalidMessageError("ident is not a string, number, boolean or null")

    if "func" not in data:
        raise InvalidMessageError("'func' is not in message")
    func = data["func"]
    if not isinstance(func, str):
        raise InvalidMessageError("func is not a string")
    parts = tuple(func.split("."))
    for part in parts:
        if _FUNC_PART.match(part) is None or keyword.iskeyword(part):
            raise InvalidMessageError(
                "func is not a dotted name of identifiers that do not start with '_': "
                + _excerpt(func)
            )

    enabled, interval, key = _parse_progress(data)
    thresholds = _parse_check_load(data)

    report_system_load = data.get("report_system_load")
    if report_system_load is not None and not isinstance(report_system_load, bool):
        raise InvalidMessageError("report_system_load is not a boolean")

    cpu_sample_interval = data.get("cpu_sample_interval", DEFAULT_CPU_SAMPLE_INTERVAL)
    if not _is_number(cpu_sample_interval):
        raise InvalidMessageError("cpu_sample_interval is not a number")
    if not 0 <= cpu_sample_interval <= MAX_CPU_SAMPLE_INTERVAL:
        raise InvalidMessageError(
            f"cpu_sample_interval is not between 0 and {MAX_CPU_SAMPLE_INTERVAL:g}"
        )

    if "jobs_dir" in data:
        raise InvalidMessageError("jobs_dir is set by the server")

    return JobRequest(
        ident=ident,
        ident_key=ident_key(ident),
        func=func,
        func_parts=parts,
        data=data,
        report=ReportOptions(
            enabled=enabled,
            interval=interval,
            key=key,
            system_load=bool(report_system_load),
            cpu_sample_interval=float(cpu_sample_interval),
        ),
        thresholds=thresholds,
    )
