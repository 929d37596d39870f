"""When a failed stage task is worth retrying: shared by the stages' Prefect tasks."""

from __future__ import annotations

# Bad configuration or input: a retry would fail the same way.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    KeyError,
    TypeError,
    FileNotFoundError,
)


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry I/O and device errors, not bad input."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and not isinstance(error, PERMANENT_ERRORS)
