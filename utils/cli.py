"""Helpers for the flat scripts: one-line errors instead of tracebacks for bad input."""

from __future__ import annotations

import sys
from collections.abc import Callable

from utils.errors import ToolboxError

# Errors that mean "bad input": printed as one line and exit code 2. Anything else is a bug and keeps
# its traceback.
USER_ERRORS = (ToolboxError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError)


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Call `main(argv)`; print `error: <message>` and exit 2 on bad input."""
    try:
        main(argv)
    except USER_ERRORS as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
