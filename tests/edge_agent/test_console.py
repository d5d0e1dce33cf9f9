"""The agent's log lines: one line per event, logfmt or JSON, extras as keys, tracebacks on the same line."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import pytest
from typer.testing import CliRunner

from edge_agent import cli
from edge_agent.console import setup_logging
from edge_agent.errors import AgentError
from edge_agent.logs import JSON, LOGFMT, JsonFormatter, LogfmtFormatter

AGENT = [sys.executable, "-m", "edge_agent.cli"]
LOGGER = "edge_agent.test"
CREATED = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z
CREATED_ISO = "2023-11-14T22:13:20.250Z"
ISO_UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
EXTRAS: dict[str, object] = {"camera": "cam0", "frame_id": 42, "score": 0.93, "late": False, "region": None}
# Strings a log line must carry through unchanged: spaces, quotes, '=', backslashes, line breaks, controls.
AWKWARD = [
    "plain words",
    'say "hi"',
    "a=b c=d",
    "C:\\path\\file",
    'ends in backslash \\"',
    "two\nlines\r\nand\ttab",
    "",
    "ünïcödé ✓",
    "\x1b[31mred\x1b[0m",
    "line\u2028separator",
]

# A logfmt pair: key=value, the value bare or double-quoted with JSON escapes.
PAIR = re.compile(r'([\w.\-]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)')
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def parse_logfmt(line: str) -> dict[str, str]:
    """A strict reader: the whole line must be space-separated pairs, or it fails."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(line):
        match = PAIR.match(line, pos)
        assert match is not None, f"not a logfmt pair at {pos}: {line[pos:]!r}"
        key, raw = match.groups()
        assert key not in fields, f"duplicate key {key}"
        fields[key] = json.loads(raw) if raw.startswith('"') else raw
        pos = match.end()
        if pos < len(line):
            assert line[pos] == " ", f"pairs must be separated by one space: {line!r}"
            pos += 1
    return fields


def strict_json(line: str) -> dict[str, object]:
    def refuse(constant: str) -> object:
        raise AssertionError(f"{constant} is not JSON")

    value = json.loads(line, parse_constant=refuse)
    assert isinstance(value, dict)
    return value


def make_record(
    msg: str,
    *args: object,
    level: int = logging.INFO,
    extra: dict[str, object] | None = None,
    exc_info: ExcInfo | None = None,
) -> logging.LogRecord:
    record = logging.getLogger(LOGGER).makeRecord(LOGGER, level, __file__, 1, msg, args, exc_info, extra=extra)
    record.created = CREATED
    record.msecs = 250.0
    return record


def failure() -> ExcInfo:
    try:
        raise ValueError('bad buffer: "short read"')
    except ValueError:
        exc_type, exc, tb = sys.exc_info()
        assert exc_type is not None and exc is not None
        return exc_type, exc, tb


def one_line(text: str) -> str:
    assert "\n" not in text and "\r" not in text, text
    return text


# --- logfmt -------------------------------------------------------------------------------------------------


def test_logfmt_record_with_extras_is_one_line_with_those_keys() -> None:
    record = make_record("cam0 frame %d REJECT", 42, extra=EXTRAS)
    line = one_line(LogfmtFormatter().format(record))
    assert line.startswith(f'ts={CREATED_ISO} level=info logger={LOGGER} msg="cam0 frame 42 REJECT" ')
    assert parse_logfmt(line) == {
        "ts": CREATED_ISO,
        "level": "info",
        "logger": LOGGER,
        "msg": "cam0 frame 42 REJECT",
        "camera": "cam0",
        "frame_id": "42",
        "score": "0.93",
        "late": "false",
        "region": "null",
    }


@pytest.mark.parametrize("text", AWKWARD)
def test_logfmt_awkward_text_round_trips_in_msg_and_values(text: str) -> None:
    line = one_line(LogfmtFormatter().format(make_record("%s", text, extra={"reason": text})))
    fields = parse_logfmt(line)
    assert fields["msg"] == text
    assert fields["reason"] == text


def test_logfmt_quotes_only_values_that_need_it() -> None:
    line = LogfmtFormatter().format(make_record("ok", extra={"bare": "cam0", "spaced": "a b", "empty": ""}))
    assert " bare=cam0 " in line
    assert ' spaced="a b" ' in line
    assert line.endswith(' empty=""')


def test_logfmt_exception_stays_on_the_same_line() -> None:
    line = one_line(LogfmtFormatter().format(make_record("frame 7 failed", level=logging.ERROR, exc_info=failure())))
    fields = parse_logfmt(line)
    assert fields["level"] == "error"
    assert fields["msg"] == "frame 7 failed"
    assert fields["exc"].startswith("Traceback (most recent call last):\n")
    assert fields["exc"].endswith('ValueError: bad buffer: "short read"')
    assert line.index(" msg=") < line.index(" exc=")


def test_logfmt_stack_info_stays_on_the_same_line() -> None:
    record = make_record("where am I")
    record.stack_info = "Stack (most recent call last):\n  File x, line 1"
    assert parse_logfmt(one_line(LogfmtFormatter().format(record)))["stack"] == record.stack_info


@pytest.mark.parametrize(
    ("level", "name"),
    [
        (logging.DEBUG, "debug"),
        (logging.INFO, "info"),
        (logging.WARNING, "warning"),
        (logging.ERROR, "error"),
        (logging.CRITICAL, "critical"),
    ],
)
def test_levels_are_lower_case_words(level: int, name: str) -> None:
    assert parse_logfmt(LogfmtFormatter().format(make_record("x", level=level)))["level"] == name


def test_extra_named_like_a_core_key_does_not_replace_it() -> None:
    record = make_record("x", extra={"level": "mine", "ts": 1, "exc": "not an exception"})
    fields = parse_logfmt(LogfmtFormatter().format(record))
    assert (fields["level"], fields["ts"]) == ("info", CREATED_ISO)
    assert "exc" not in fields
    assert (fields["extra_level"], fields["extra_ts"], fields["extra_exc"]) == ("mine", "1", "not an exception")


def test_odd_extra_key_is_made_safe() -> None:
    fields = parse_logfmt(LogfmtFormatter().format(make_record("x", extra={"a key=": 1})))
    assert fields["a_key_"] == "1"


def test_timestamp_is_utc_iso8601_with_milliseconds() -> None:
    record = logging.getLogger(LOGGER).makeRecord(LOGGER, logging.INFO, __file__, 1, "now", (), None)
    assert ISO_UTC_MS.fullmatch(parse_logfmt(LogfmtFormatter().format(record))["ts"])


# --- JSON ---------------------------------------------------------------------------------------------------


def test_json_line_parses_and_carries_the_extras() -> None:
    line = one_line(JsonFormatter().format(make_record("cam0 frame %d REJECT", 42, extra=EXTRAS)))
    assert strict_json(line) == {
        "ts": CREATED_ISO,
        "level": "info",
        "logger": LOGGER,
        "msg": "cam0 frame 42 REJECT",
        **EXTRAS,
    }


@pytest.mark.parametrize("text", AWKWARD)
def test_json_awkward_text_round_trips(text: str) -> None:
    fields = strict_json(one_line(JsonFormatter().format(make_record("%s", text, extra={"reason": text}))))
    assert fields["msg"] == text
    assert fields["reason"] == text


def test_json_exception_stays_on_the_same_line() -> None:
    line = one_line(JsonFormatter().format(make_record("frame 7 failed", level=logging.ERROR, exc_info=failure())))
    exc = strict_json(line)["exc"]
    assert isinstance(exc, str)
    assert exc.startswith("Traceback (most recent call last):\n")
    assert exc.endswith('ValueError: bad buffer: "short read"')


def test_json_any_extra_type_still_logs_as_strict_json() -> None:
    record = make_record("x", extra={"path": Path("/data/replay"), "score": float("nan"), "worst": float("inf")})
    fields = strict_json(JsonFormatter().format(record))
    assert fields["path"] == "/data/replay"
    assert (fields["score"], fields["worst"]) == ("nan", "inf")


# --- setup_logging and the CLI ------------------------------------------------------------------------------


@contextmanager
def own_root() -> Iterator[logging.Logger]:
    """setup_logging replaces the root logger's handlers, pytest's among them: put them back afterwards.
    A context in the test body, not a fixture: pytest installs its handlers anew for each test phase."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        yield root
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_setup_logging_writes_the_chosen_format_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with own_root():
        setup_logging(log_format=JSON)
        logging.getLogger(LOGGER).info("ready: camera '%s'", "cam0", extra={"camera": "cam0"})
        logging.getLogger(LOGGER).debug("not shown without --verbose")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    fields = strict_json(lines[0])
    assert (fields["msg"], fields["camera"]) == ("ready: camera 'cam0'", "cam0")


def test_setup_logging_verbose_shows_debug(capsys: pytest.CaptureFixture[str]) -> None:
    with own_root():
        setup_logging(verbose=True, log_format=LOGFMT)
        logging.getLogger(LOGGER).debug("cam0 frame 1 OK")
    fields = parse_logfmt(capsys.readouterr().err.strip())
    assert (fields["level"], fields["msg"]) == ("debug", "cam0 frame 1 OK")


def test_setup_logging_without_a_format_keeps_plain_lines_for_the_workstation_clis(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with own_root():
        setup_logging()
        logging.getLogger(LOGGER).info("fitting")
    assert capsys.readouterr().err.rstrip().endswith(f"INFO {LOGGER}: fitting")


@pytest.mark.parametrize(
    ("option", "parse"),
    [([], parse_logfmt), (["--log-format", LOGFMT], parse_logfmt), (["--log-format", JSON], strict_json)],
)
def test_cli_log_format_option_reaches_the_formatter(
    monkeypatch: pytest.MonkeyPatch, option: list[str], parse: Callable[[str], Mapping[str, object]]
) -> None:
    """In process, stopped at config loading (no camera, no model): what the agent logs is in the format
    asked for, logfmt by default."""

    def stop_at_config(path: Path) -> object:
        logging.getLogger("edge_agent").warning("config not read", extra={"path": str(path)})
        raise AgentError("stopped by the test")

    monkeypatch.setattr(cli, "load_config", stop_at_config)
    with own_root():
        result = CliRunner().invoke(cli.app, ["run", "--camera", "cam0", "--config", "agent.yaml", *option])
    assert isinstance(result.exception, AgentError), result.output
    (line,) = result.stderr.splitlines()
    fields = parse(line)
    assert (fields["level"], fields["msg"], fields["path"]) == ("warning", "config not read", "agent.yaml")


def test_cli_help_names_the_log_formats() -> None:
    result = CliRunner().invoke(cli.app, ["run", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "--log-format" in result.output
    assert "logfmt|json" in result.output


def test_unknown_log_format_is_one_error_line_and_exit_2() -> None:
    result = subprocess.run(
        [*AGENT, "run", "--camera", "cam0", "--log-format", "bogus"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: unknown log format 'bogus'; choose one of: logfmt, json"]
