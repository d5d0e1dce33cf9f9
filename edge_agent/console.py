"""Shared entry-point behaviour of the three CLIs: log lines on stderr, and user errors as one line, exit 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from edge_agent.logs import structured_formatter

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130

# What the trainer and the converter print: they run at a desk, where a person reads the lines.
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: bool = False, log_format: str | None = None) -> None:
    """Log to stderr at INFO, or DEBUG with verbose. log_format None gives plain lines; the agent passes one
    of edge_agent.logs.LOG_FORMATS, and an unknown name raises UnknownLogFormat before anything is set up."""
    formatter = logging.Formatter(PLAIN_FORMAT) if log_format is None else structured_formatter(log_format)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    # force: the entry point owns the root logger, so a handler an import might have added cannot turn the
    # chosen format off (a plain basicConfig would then do nothing, silently).
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)


def run_cli(app: Callable[[], object], user_errors: tuple[type[BaseException], ...]) -> None:
    """Run a typer app; a known user error prints `error: ...` and exits 2 instead of a traceback."""
    try:
        app()
    except user_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)
