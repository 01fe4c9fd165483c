"""User errors of the ``vitrieve`` command: one line naming the problem and the fix, exit status 2.

``UserError`` is the one type the command reports that way; ``as_user_error`` maps the library errors that a
user causes and can fix (a missing file, catalogue or index, a bad source, a refused query or saved state) to
it. Anything else is a bug: one line too, with the traceback behind ``--debug``.
"""

from __future__ import annotations

import sys

USER_ERROR_EXIT = 2


class UserError(Exception):
    """A problem with the command line or the data it names; the message says what to do about it."""


# The library errors a user causes, by module. A module never imported raised none of them, so they are looked up
# among the loaded ones (an error path of `vitrieve sql` does not import torch to name its types). A catalogue
# failing its reject gate (``TooManyRejects``) is a failed run, exit 1, with its reasons: not a command-line slip.
LIBRARY_USER_ERRORS = {
    "storage.sources": ("SourceError",),
    "storage.diagnostics.guard": ("ReadOnlyQueryError",),
    "ml.pretrained": ("PretrainedMismatchError",),
    "ml.train": ("UnsafeStateError",),
}


def user_error_types() -> tuple[type[BaseException], ...]:
    """``UserError``, ``FileNotFoundError`` and those of ``LIBRARY_USER_ERRORS`` already imported."""
    loaded = [
        getattr(sys.modules[module], name)
        for module, names in LIBRARY_USER_ERRORS.items()
        if module in sys.modules
        for name in names
    ]
    return (UserError, FileNotFoundError, *loaded)


def is_user_error_name(cls_name: str) -> bool:
    """Whether an error known only by its class name (a failed Dagster step's) is one a user causes."""
    return cls_name in {"UserError", "FileNotFoundError"} | {
        n for ns in LIBRARY_USER_ERRORS.values() for n in ns
    }


def as_user_error(err: BaseException) -> UserError | None:
    """``err`` as a ``UserError`` when a user caused it, else None."""
    if isinstance(err, UserError):
        return err
    if isinstance(err, user_error_types()):
        return UserError(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
    return None
