"""Runs a CLI's `main` inside the test process: what a user sees (exit code, stdout, stderr) without paying
a new interpreter's torch and OpenVINO imports for every error case. Tests that need a real process (imports,
signals) start one themselves."""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import sys
from collections.abc import Callable


def run_main(main: Callable[[], None], prog: str, *args: str) -> subprocess.CompletedProcess[str]:
    out, err = io.StringIO(), io.StringIO()
    handlers, level = logging.root.handlers[:], logging.root.level  # the CLI's setup_logging replaces them
    argv = sys.argv
    sys.argv = [prog, *args]
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)
    if code is None:
        code = 0
    elif isinstance(code, str):  # sys.exit("message") prints it and exits 1
        err.write(code + "\n")
        code = 1
    return subprocess.CompletedProcess([prog, *args], code, out.getvalue(), err.getvalue())
