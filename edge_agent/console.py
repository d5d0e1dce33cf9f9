"""Shared entry-point behaviour of the three CLIs: plain log lines, and user errors as one line, exit 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


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
