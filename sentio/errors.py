"""The error hierarchy. Everything a user can cause is a :class:`SentioError`.

The CLI prints ``str(error)`` on one line of stderr and exits non-zero; messages must
therefore name the file, row or field involved and say what was expected.
"""

from __future__ import annotations


class SentioError(Exception):
    """Base class of every error a user can cause."""

    exit_code = 1


class ConfigError(SentioError):
    """The configuration is invalid (unknown field, bad value, incompatible flags)."""

    exit_code = 2


class DataError(SentioError):
    """Input data cannot be read or does not make sense (file, column, timestamp)."""

    exit_code = 3


class ContractError(DataError):
    """Data violate a data contract (pandera schema, Great Expectations suite)."""

    exit_code = 4


class QuarantineLimitError(ContractError):
    """More rows were rejected than the configured fraction allows."""

    exit_code = 5


class ResourceError(SentioError):
    """The machine ran out of a resource: disk space (the path is named) or memory (the
    setting to lower is named). Never retried: the same run would fail the same way."""

    exit_code = 8


class WorkdirBusyError(SentioError):
    """Another run holds the working directory's lock (``paths.on_busy = "refuse"``, or
    ``paths.busy_timeout`` ran out while waiting)."""

    exit_code = 9


class StorageError(SentioError):
    """The shared storage (``paths.storage``) cannot be reached, or a file in it does not
    match the hash its writer recorded: one line naming the URL and what failed. Never
    retried by the task (a machine that cannot reach the storage fails the same way)."""

    exit_code = 10
