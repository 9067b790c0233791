"""Exceptions for bad input. Each message is one line that names the file and the problem."""


class ToolboxError(ValueError):
    """Base class: bad input the user can fix (a file, an option, a shape)."""


class DataError(ToolboxError):
    """A dataset file or folder is missing, corrupt or inconsistent."""


class CheckpointError(ToolboxError):
    """A checkpoint is missing, truncated, or belongs to another model."""


class ConfigError(ToolboxError):
    """An option or tensor shape is out of range."""
