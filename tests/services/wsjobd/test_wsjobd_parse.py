"""wsjobd without sockets: parsing a job description, and loading from a jobs directory.

The error cases themselves are exercised end to end in test_wsjobd.py; here we
check what a *valid* description turns into, and the jobs directory's import
rules on directories built in tmp_path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from gloomd.wsjobd import (
    DEFAULT_CPU_SAMPLE_INTERVAL,
    DEFAULT_REPORT_INTERVAL,
    MIN_REPORT_INTERVAL,
    InvalidMessageError,
    InvalidProgressError,
    JobsDirectory,
    LoadingError,
    ReportOptions,
    encode_report,
    error_frame,
    ident_key,
    job_failed_frame,
    parse_request,
)
from gloomd.wsjobd.load import Thresholds

pytestmark = pytest.mark.timeout(30)


def parse(**fields: object) -> object:
    return parse_request(json.dumps({"ident": "i", "func": "echo.run", **fields}))


def test_defaults_follow_pykit() -> None:
    request = parse_request('{"ident": 7, "func": "a.b.run", "echo": "x"}')
    assert request.ident == 7 and request.ident_key == ("number", 7)
    assert request.func == "a.b.run" and request.func_parts == ("a", "b", "run")
    assert request.data == {"ident": 7, "func": "a.b.run", "echo": "x"}
    assert request.report == ReportOptions(
        True, DEFAULT_REPORT_INTERVAL, None, False, DEFAULT_CPU_SAMPLE_INTERVAL
    )
    assert (DEFAULT_REPORT_INTERVAL, DEFAULT_CPU_SAMPLE_INTERVAL) == (5.0, 0.02)
    assert request.thresholds is None


def test_every_field_parsed() -> None:
    request = parse(
        progress={"interval": 0.5, "key": "foo"},
        check_load={"mem_low_threshold": 1, "cpu_low_threshold": 2.5},
        report_system_load=True,
        cpu_sample_interval=0,
    )
    assert request.report == ReportOptions(True, 0.5, "foo", True, 0.0)
    assert request.thresholds == Thresholds(
        mem_low_threshold=1, cpu_low_threshold=2.5, max_client_number=1000
    )


def test_progress_off_and_nulls() -> None:
    for off in (None, False):
        assert parse(progress=off).report.enabled is False
    request = parse(progress={"key": None}, check_load=None, report_system_load=None)
    assert request.report.enabled and request.report.key is None
    assert request.thresholds is None and request.report.system_load is False
    # An empty check_load still checks, with pykit's defaults.
    assert parse(check_load={}).thresholds == Thresholds()


def test_tiny_intervals_are_floored() -> None:
    assert parse(progress={"interval": 1e-9}).report.interval == MIN_REPORT_INTERVAL


def test_ident_keys_keep_json_types_apart() -> None:
    keys = [ident_key(v) for v in (True, 1, "1", None, "null", False, 0)]
    assert len(set(keys)) == len(keys)
    assert ident_key(1) == ident_key(1.0)


def test_huge_integers_stay_exact() -> None:
    request = parse_request('{"ident": 123456789012345678901234567890, "func": "f"}')
    assert request.ident == 123456789012345678901234567890
    assert request.func_parts == ("f",)


def test_bytes_messages_and_binary_garbage() -> None:
    assert parse_request(b'{"ident": 1, "func": "f"}').ident == 1
    with pytest.raises(InvalidMessageError, match="not a valid json string"):
        parse_request(b"\xff\xfe")


def test_long_garbage_is_excerpted() -> None:
    with pytest.raises(InvalidMessageError) as caught:
        parse_request("x" * 10_000)
    assert len(caught.value.args[0]) < 300


def test_invalid_progress_is_an_invalid_message() -> None:
    # pykit's hierarchy: clients catching InvalidMessageError also get this one.
    with pytest.raises(InvalidMessageError) as caught:
        parse(progress=0)
    assert type(caught.value) is InvalidProgressError


def test_frames() -> None:
    assert error_frame(LoadingError("x")) == {"err": "LoadingError", "val": ["x"]}
    assert job_failed_frame(ValueError("boom")) == {
        "err": "JobFailedError",
        "val": ["ValueError: boom"],
    }
    # pykit's utfjson: default separators, non-ASCII as is; odd values as their repr.
    assert encode_report({"a": "ü", "b": [1, 2]}) == '{"a": "ü", "b": [1, 2]}'
    assert encode_report({"s": {1}}) == '{"s": "{1}"}'


# ------------------------------------------------------------------ jobs directories


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_directory_without_init_is_a_package(tmp_path: Path) -> None:
    write(tmp_path, "mod.py", "def run(job):\n    return 1\n")
    jobs = JobsDirectory(tmp_path)
    func = jobs.load_function(("mod", "run"))
    assert func.__name__ == "run" and func.__module__ == f"{jobs.package}.mod"
    with pytest.raises(LoadingError, match="function not found: 'run'"):
        jobs.load_function(("run",))


def test_two_directories_do_not_share_modules(tmp_path: Path) -> None:
    for name in ("one", "two"):
        write(tmp_path / name, "mod.py", f"def run(job):\n    return {name!r}\n")
    one, two = JobsDirectory(tmp_path / "one"), JobsDirectory(tmp_path / "two")
    assert one.package != two.package
    assert one.load_function(("mod", "run"))(None) == "one"
    assert two.load_function(("mod", "run"))(None) == "two"


def test_a_failing_package_init_is_retried_not_cached_half_done(tmp_path: Path) -> None:
    write(tmp_path, "__init__.py", "raise ImportError('not yet')\n")
    jobs = JobsDirectory(tmp_path)
    with pytest.raises(LoadingError, match=r"failed to import jobs: ImportError\('not yet'\)"):
        jobs.load_function(("run",))
    assert jobs.package not in sys.modules
    write(tmp_path, "__init__.py", "def run(job):\n    return 'now'\n")
    assert jobs.load_function(("run",))(None) == "now"


def test_syntax_errors_are_loading_errors(tmp_path: Path) -> None:
    write(tmp_path, "bad.py", "def run(job:\n")
    with pytest.raises(LoadingError, match=r"failed to import jobs\.bad: SyntaxError"):
        JobsDirectory(tmp_path).load_function(("bad", "run"))


def test_module_names_in_errors_are_relative_to_the_jobs_directory(tmp_path: Path) -> None:
    jobs = JobsDirectory(tmp_path)
    with pytest.raises(LoadingError) as caught:
        jobs.load_function(("nope", "run"))
    message = caught.value.args[0]
    assert message.startswith("failed to import jobs.nope: ModuleNotFoundError")
    assert jobs.package not in message


def test_jobs_dir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        JobsDirectory(tmp_path / "missing")
