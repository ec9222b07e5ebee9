"""Which failures a stage task retries: only those that can be transient (I/O, network, a worker's hiccup).

Bad input, bad settings and configuration errors fail at once: retrying them only delays the message
(a missing Gemini key used to take 70 s of retries to be reported).
"""

from __future__ import annotations

from models.teachers.base import TeacherConfigError

PERMANENT = (ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError, TeacherConfigError)


def transient_only(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry unless the failure is permanent."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return not isinstance(exc, PERMANENT)
