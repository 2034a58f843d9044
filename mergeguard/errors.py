"""The project's own exception types.

Every error a user can cause is one of these, with a message that names the problem and the fix. The CLI
prints the message on one line and exits with `exit_code`: 2 for any error (bad input, a missing file,
unreadable data, a usage mistake), 1 for a refusal (`RefusalError`: the guard or the audit said no), so
that CI can tell "refused" from "broken". Library users catch `MergeguardError`.
"""

from __future__ import annotations


class MergeguardError(Exception):
    """A problem the user can act on. `str(err)` is the one-line message."""

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}; {hint}" if hint else message)

    def __reduce__(self) -> tuple:
        """Keep the message and hint apart when the error comes back from a worker process."""
        return (_rebuild, (type(self), self.message, self.hint))


def _rebuild(cls: type[MergeguardError], message: str, hint: str | None) -> MergeguardError:
    return cls(message, hint=hint)


class RefusalError(MergeguardError):
    """The guard or the audit said no (a contaminated or suspect input, unrelated inputs): a decision about
    sound input, not an error in it. Exit status 1."""

    exit_code = 1


class UsageError(MergeguardError):
    """The command line itself is wrong (exit status 2, like click's usage errors)."""


class ModelNotFoundError(MergeguardError):
    """A model reference that is neither a local folder nor a reachable hub repository."""


class ModelCodeError(MergeguardError):
    """A model that needs its own Python code to load (an `auto_map`) when the user did not allow it."""


class ModelFileError(MergeguardError):
    """A model file that is not a regular file, is malformed, or lies outside its model folder."""


class ConfigError(MergeguardError):
    """A merge configuration that cannot be merged as written."""


class DatasetError(MergeguardError):
    """A dataset reference that cannot be read."""


class BenchmarkError(MergeguardError):
    """A benchmark that is unknown or whose data cannot be found."""


class DatabaseError(MergeguardError):
    """A database file that is not mergeguard's, is corrupt, or lacks the requested record."""


class ProbeError(MergeguardError):
    """A probe that cannot run (a model that does not load, a mismatched reference): exit 2, like audit."""

    exit_code = 2
