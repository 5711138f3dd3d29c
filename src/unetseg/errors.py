"""Errors meant for users: the CLI prints the message alone (no traceback) and exits with status 2."""

from __future__ import annotations


class UnetsegError(Exception):
    """Base class of every error caused by user input (files, options, checkpoints)."""


class DataError(UnetsegError):
    """A dataset file is missing, unreadable, corrupt or inconsistent. The message names the file."""


class ConfigError(UnetsegError, ValueError):
    """An option or configuration value is invalid. The message says what is allowed."""


class CheckpointError(UnetsegError):
    """A checkpoint folder or exported model cannot be loaded."""


class TrainingError(UnetsegError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""
