"""Structured log lines for the agent: one line per event, logfmt (key=value) or JSON.

A factory PC runs for months unattended and its logs are read by journald, grep and log shippers, which all
split on newlines: so every record, a traceback included, is exactly one line. Formatting happens only when
a handler emits a record (standard logging), so a record below the level costs the inspection loop nothing.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time

from edge_agent.errors import AgentError

LOGFMT = "logfmt"
JSON = "json"
LOG_FORMATS = (LOGFMT, JSON)
DEFAULT_LOG_FORMAT = LOGFMT

# Attributes every LogRecord has (taken from a real one, so a Python that adds one, as 3.12 did with
# taskName, stays covered), plus the two Formatter.format sets. Anything else came in through `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))) | {
    "message",
    "asctime",
}
_CORE_KEYS = ("ts", "level", "logger", "msg")
_TRAILING_KEYS = ("exc", "stack")  # long, so last: the short keys stay readable at the start of the line
_RESERVED_KEYS = frozenset(_CORE_KEYS + _TRAILING_KEYS)
_RENAMED_EXTRA_PREFIX = "extra_"  # an extra named like a core key keeps its value under this prefix

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"

# A value needs quotes if a logfmt reader would otherwise split it, or if it has to be escaped.
_NEEDS_QUOTES = re.compile(r'[\s="\\\x00-\x1f\x7f\x85\u2028\u2029]')
# A key holds no character a reader would take as the end of the key or of the pair.
_UNSAFE_KEY_CHARS = re.compile(r"[^\w.\-]")
# The escapes are JSON's, so a reader can decode a quoted value with any JSON string parser. Unicode line
# and paragraph separators are escaped too: some viewers break lines there.
_ESCAPES: dict[int, str] = {
    **{code: f"\\u{code:04x}" for code in [*range(0x20), 0x7F, 0x85, 0x2028, 0x2029]},
    ord("\\"): "\\\\",
    ord('"'): '\\"',
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


class UnknownLogFormat(AgentError):
    """--log-format named a format the agent does not write."""


def structured_formatter(name: str) -> logging.Formatter:
    """The formatter for one of LOG_FORMATS; anything else is a user error (one line, exit 2)."""
    if name == LOGFMT:
        return LogfmtFormatter()
    if name == JSON:
        return JsonFormatter()
    raise UnknownLogFormat(f"unknown log format '{name}'; choose one of: {', '.join(LOG_FORMATS)}")


class _FieldsFormatter(logging.Formatter):
    """Turns a record into ordered fields: ts, level, logger, msg, the extras, then exc and stack."""

    def fields(self, record: logging.LogRecord) -> dict[str, object]:
        fields: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS:
                fields[_RENAMED_EXTRA_PREFIX + key if key in _RESERVED_KEYS else key] = value
        # Cached on the record as logging.Formatter does, so a second handler does not format it again.
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exc"] = record.exc_text
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        return fields


class LogfmtFormatter(_FieldsFormatter):
    """`ts=... level=info logger=edge_agent msg="..." key=value ...` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(_logfmt_pair(key, value) for key, value in self.fields(record).items())


class JsonFormatter(_FieldsFormatter):
    """One JSON object per line, with the same keys as logfmt."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {key: _json_value(value) for key, value in self.fields(record).items()}
        # json.dumps escapes newlines inside strings, so the object is always one line; ASCII-only output
        # cannot fail on a stream whose encoding is not UTF-8. default=str: an extra of any type still logs.
        return json.dumps(fields, default=str)


def _timestamp(record: logging.LogRecord) -> str:
    """ISO 8601 in UTC with milliseconds, e.g. 2024-05-01T12:00:00.123Z: sortable, and zone-free on a PC
    whose local clock may be set to anything."""
    return f"{time.strftime(_TIME_FORMAT, time.gmtime(record.created))}.{int(record.msecs):03d}Z"


def _logfmt_pair(key: str, value: object) -> str:
    # msg is always quoted: the plain-words message looks the same whether or not it has a space in it.
    text = _quoted(str(value)) if key == "msg" else _logfmt_value(value)
    return f"{_logfmt_key(key)}={text}"


def _logfmt_key(key: str) -> str:
    return _UNSAFE_KEY_CHARS.sub("_", key) or "_"


def _logfmt_value(value: object) -> str:
    text = _text(value)
    return _quoted(text) if not text or _NEEDS_QUOTES.search(text) else text


def _quoted(text: str) -> str:
    return f'"{text.translate(_ESCAPES)}"'


def _text(value: object) -> str:
    """How logfmt writes a value: JSON's spelling for None and booleans, str() for everything else."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json_value(value: object) -> object:
    """NaN and infinity are not JSON: strict readers reject a line holding them, so they become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
