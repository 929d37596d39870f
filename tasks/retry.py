"""When a failed stage task is worth retrying: the one predicate every stage's task uses.

Only a failure that can pass on a second try is retried: an I/O error (an ``OSError`` that
does not name a missing or forbidden path or a damaged chunk), a timeout or dropped
connection, and a lease that another writer holds for now. Bad input and deterministic
failures (``ValueError`` and its kin, a crash inside a model, a missing library, a corrupt
chunk) fail at once: a retry would fail the same way and only hide the reason for longer.
"""

from __future__ import annotations

from layerdrift.storage.lock import StoreLockedError
from layerdrift.storage.schema import ChunkReadError

# Failures that a second try can get past.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    StoreLockedError,
)
# OSErrors that name a problem a second try meets again.
PERMANENT_OS_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ChunkReadError,
)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` may not happen again on a retry."""
    if isinstance(error, TRANSIENT_ERRORS):
        return True
    return isinstance(error, OSError) and not isinstance(error, PERMANENT_OS_ERRORS)


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry transient errors (:func:`is_transient`) only."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and is_transient(error)
