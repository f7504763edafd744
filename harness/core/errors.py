"""User-facing errors.

Every mistake a user can make (unknown name, bad config value, missing dataset, corrupt
checkpoint) raises a :class:`DDBenchError`. The CLI prints it on one line, naming the file
and the field, and exits with status 2; nothing is written.
"""

from __future__ import annotations


class DDBenchError(Exception):
    """An error in the user's input, reported as ``file: field: message``."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.field = field

    def located(self, *, file: str | None = None, field: str | None = None) -> "DDBenchError":
        """The same error with the file and/or field filled in where still unknown."""
        return type(self)(self.message, file=self.file or file, field=self.field or field)

    def at(self, field: str | None) -> "DDBenchError":
        """The same error with its field replaced by ``field`` (the file is kept)."""
        return type(self)(self.message, file=self.file, field=field)

    def within(self, prefix: str) -> "DDBenchError":
        """The same error with its field nested under ``prefix`` (``prefix.field``, or ``prefix``)."""
        return self.at(".".join(p for p in (prefix, self.field) if p))

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.field) if p]
        return ": ".join([*parts, " ".join(self.message.split())])


def one_line(err: BaseException) -> str:
    """``Type: message`` on one line (a message's newlines and runs of spaces folded)."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


class ConfigError(DDBenchError):
    """A config value is missing, malformed or out of range."""


class UnknownNameError(ConfigError):
    """A method, dataset, model or suite name that is not registered."""


class DatasetNotFoundError(DDBenchError):
    """A dataset root is missing or does not have the expected layout."""


class CheckpointError(DDBenchError):
    """A checkpoint or record file cannot be read back."""


class StorageError(DDBenchError, OSError):
    """A result file (record, distilled set, checkpoint) could not be written: a full disk, a
    read-only or vanished folder. Nothing partial is left; the same command resumes once it can
    write again. An ``OSError`` too, so code that tolerates unwritable caches still does."""
