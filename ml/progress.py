"""Progress bars of the long loops (training epochs, encoding): tqdm on stderr, shown only on a terminal.

A bar is off when its caller asks for none, when stderr is not a terminal (CI logs, pipes, Dagster's captured
step output) or when ``$VITRIEVE_PROGRESS`` is ``0`` (``vitrieve ... --quiet`` sets it; an environment variable
so that steps run in child processes obey it too).
"""

from __future__ import annotations

import os

from tqdm.auto import tqdm

PROGRESS_ENV = "VITRIEVE_PROGRESS"


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True) -> tqdm:
    """A transient bar (cleared when closed) of ``total`` ``unit`` s; a no-op bar when it is off."""
    off = not enabled or os.environ.get(PROGRESS_ENV, "1") == "0"
    # disable=None: tqdm turns the bar off itself where stderr is not a terminal
    return tqdm(
        total=total, desc=desc, unit=unit, disable=True if off else None, leave=False, dynamic_ncols=True
    )
