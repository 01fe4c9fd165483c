"""Leave the ``vitrieve`` process once its work is done, without native teardown at interpreter exit.

Arrow's (and DuckDB's) C++ thread pools can abort the process while CPython finalises (``terminate called without
an active exception``, exit status -6, apache/arrow#34314 and #39862) after every byte of output was written. The
command therefore does what a normal exit does that matters (join non-daemon threads, run ``atexit`` hooks, flush
stdio) and then ``os._exit``s, skipping only the object and library teardown that no output depends on."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn


def exit_process(code: int) -> NoReturn:
    """Exit with ``code`` after joining threads, running atexit hooks and flushing stdout and stderr."""
    # threading._shutdown joins the non-daemon threads: what Py_FinalizeEx runs first
    shutdown: Callable[[], None] | None = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            stream.flush()
    os._exit(code)


def run_and_exit(main: Callable[[], int]) -> NoReturn:
    """``main()``, then :func:`exit_process` with its status (``SystemExit`` keeps its code)."""
    try:
        code = main()
    except SystemExit as stop:
        # argparse's --help and usage errors; a message as code means status 1, as in Python
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)
    exit_process(code)
