"""Errors meant for users: the CLI prints the message alone (no traceback) and exits with status 2."""

from __future__ import annotations


class UnetsegError(Exception):
    """Base class of every error caused by user input (files, options, checkpoints)."""


class DataError(UnetsegError):
    """A dataset file is missing, unreadable, corrupt or inconsistent. The message names the file."""


class TooLargeError(DataError):
    """An image would decode to more than the memory budget (``data.max_image_gib``; decompression bombs),
    found from its header before decoding. The message names the file and the limit."""


class ConfigError(UnetsegError, ValueError):
    """An option or configuration value is invalid. The message says what is allowed."""


class CheckpointError(UnetsegError):
    """A checkpoint folder or exported model cannot be loaded."""


class OutputError(UnetsegError):
    """An output cannot be written, or would replace a file the command reads or a user's own file. The
    message names the path and the option to change."""


class TrainingError(UnetsegError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (library errors can span pages), or its type."""
    text = " ".join(str(err).split()) if "\n" not in str(err).strip() else str(err).strip().splitlines()[0]
    return text[:limit] if text else type(err).__name__
