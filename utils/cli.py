"""Helpers for the flat scripts: one-line errors instead of tracebacks for bad input, faults and signals."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from utils.errors import ToolboxError, one_line

# Errors that mean "bad input": printed as one line and exit code 2. Anything else is a bug and keeps
# its traceback.
USER_ERRORS = (ToolboxError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError)


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Call `main(argv)`; print `error: <message>` and exit 2 on bad input or on an OS fault that names a
    path (permission denied, read-only file system, disk full, ...). An interrupt (Ctrl-C, SIGTERM) prints
    its one line and exits 128 + the signal number. Errors raised inside DataLoader workers are shown as
    their original message."""
    try:
        main(argv)
    except USER_ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.filename is None:
            raise
        reason = err.strerror or one_line(err)
        print(f"error: {err.filename}: {reason}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as err:
        print(one_line(err) if str(err).strip() else "interrupted", file=sys.stderr)
        sys.exit(128 + int(getattr(err, "signum", signal.SIGINT)))
