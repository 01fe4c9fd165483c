"""User errors of the ``vitrieve`` command: one line naming the problem and the fix, exit status 2.

``UserError`` is the one type the command reports that way; ``as_user_error`` maps the library errors that a
user causes and can fix (a missing file, catalogue or index, a bad source, a refused query or saved state) to
it. Anything else is a bug: one line too, with the traceback behind ``--debug``.
"""

from __future__ import annotations

import functools

USER_ERROR_EXIT = 2


class UserError(Exception):
    """A problem with the command line or the data it names; the message says what to do about it."""


@functools.cache
def user_error_types() -> tuple[type[BaseException], ...]:
    """The library errors that a user causes: imported on first use (they pull in torch and pyarrow)."""
    from ml.pretrained import PretrainedMismatchError
    from ml.train import UnsafeStateError
    from storage.diagnostics import ReadOnlyQueryError
    from storage.ingest import TooManyRejects
    from storage.sources import SourceError

    return (
        UserError,
        FileNotFoundError,
        SourceError,
        TooManyRejects,
        PretrainedMismatchError,
        UnsafeStateError,
        ReadOnlyQueryError,
    )


def is_user_error_name(cls_name: str) -> bool:
    """Whether an error known only by its class name (a failed Dagster step's) is one a user causes."""
    return cls_name in {t.__name__ for t in user_error_types()}


def as_user_error(err: BaseException) -> UserError | None:
    """``err`` as a ``UserError`` when a user caused it, else None."""
    if isinstance(err, UserError):
        return err
    if isinstance(err, user_error_types()):
        return UserError(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
    return None
