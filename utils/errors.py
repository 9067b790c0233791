"""Exceptions for bad input. Each message is one line that names the file and the problem."""


class ToolboxError(ValueError):
    """Base class: bad input the user can fix (a file, an option, a shape)."""


class DataError(ToolboxError):
    """A dataset file or folder is missing, corrupt or inconsistent."""


class CheckpointError(ToolboxError):
    """A checkpoint is missing, truncated, or belongs to another model."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """A weights or checkpoint file does not exist."""


class ConfigError(ToolboxError):
    """An option or tensor shape is out of range."""


def read_text(path) -> str:
    """The contents of a UTF-8 text file (universal newlines; a leading byte-order mark, as Windows editors
    write, is dropped); a file that does not decode raises a one-line DataError naming it and the first bad
    byte. A missing file raises FileNotFoundError as usual."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a text file ({err.reason} at byte {err.start})") from None


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT / SIGTERM. `signum` is the signal; the message is one line saying what was
    kept on disk. A KeyboardInterrupt, so `except Exception` in user code cannot swallow it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def one_line(err: BaseException, limit: int = 300) -> str:
    """The user-facing line of an exception: its first line, or for an exception that torch's DataLoader
    re-raised from a worker ("Caught DataError in DataLoader worker process 0. Original Traceback ...") the
    original message (the last line of that traceback, without the exception's type name)."""
    text = str(err).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1].strip()
        head, sep, rest = last.partition(": ")
        text = rest if sep and head.replace(".", "").replace("_", "").isalnum() else last
    lines = text.splitlines()
    line = lines[0].strip() if lines else type(err).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."
