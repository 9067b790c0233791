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
