"""What a materialising verb shows while it runs: one line per step on the terminal, Dagster's full log in a file.

Dagster's console logger is replaced by two loggers of the run: ``steps`` prints ``<step> <status> <seconds>``
when each step ends, ``file`` writes every Dagster log line (events at DEBUG, the assets' own messages) to
``<dagster home>/logs/<run id>.log``. The event log itself goes to the instance as always (the UI reads it
there). Python warnings raised while the steps run go to that file too; ``--debug`` brings Dagster's console
log and the warnings back to the terminal.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

import dagster as dg

LOG_FORMAT = "%(asctime)s - %(levelname)s - %(message)s"  # the message already names the run, step and event
STEP_WIDTH = 36  # the longest step key, a check's (model_evaluation_eval_map_regression), fits


def run_log_path(home: str, run_id: str) -> str:
    """Where the Dagster log of run ``run_id`` goes: ``<home>/logs/<run_id>.log``."""
    return os.path.join(home, "logs", f"{run_id}.log")


def _event(record: logging.LogRecord):
    """The Dagster event a log record carries, or None (a plain ``context.log`` message)."""
    return (getattr(record, "dagster_meta", None) or {}).get("dagster_event")


class StepLines(logging.Handler):
    """One line per finished step: ``<step key> ok|failed|skipped|check failed <wall seconds>``."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(logging.DEBUG)
        self.stream = stream
        self.started: dict[str, float] = {}
        self.failed_checks: dict[str, list[str]] = {}
        self.lines = 0

    def emit(self, record: logging.LogRecord) -> None:
        event = _event(record)
        if event is None or not event.step_key:
            return
        key, kind = event.step_key, event.event_type_value
        if kind == "STEP_START":
            self.started[key] = time.monotonic()
        elif kind == "ASSET_CHECK_EVALUATION" and not event.event_specific_data.passed:
            self.failed_checks.setdefault(key, []).append(event.event_specific_data.check_name)
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):  # a failed blocking check fails its step
            failed = kind == "STEP_FAILURE"
            self._line(key, "check failed" if key in self.failed_checks else "failed" if failed else "ok")
        elif kind == "STEP_SKIPPED":
            self._line(key, "skipped")

    def _line(self, key: str, status: str) -> None:
        start = self.started.pop(key, None)
        seconds = f"{time.monotonic() - start:7.1f}s" if start is not None else ""
        self.stream.write(f"  {key:<{STEP_WIDTH}} {status:<12} {seconds}".rstrip() + "\n")
        self.stream.flush()
        self.lines += 1


class RunOutput:
    """The loggers of one in-process run (``logger_defs``); a context manager that closes the log file and
    routes the run's Python warnings into it."""

    def __init__(self, log_path: str, stream: TextIO | None = None, debug: bool = False) -> None:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        self.log_path, self.debug = log_path, debug
        self.steps = StepLines(stream or sys.stdout)
        self.file = logging.FileHandler(log_path, encoding="utf-8")
        self.file.setLevel(logging.DEBUG)
        self.file.setFormatter(logging.Formatter(LOG_FORMAT))

    @staticmethod
    def _logger(name: str, handler: logging.Handler) -> logging.Logger:
        logger = logging.Logger(name, logging.DEBUG)  # not registered: no other code logs through it
        logger.addHandler(handler)
        return logger

    def logger_defs(self) -> dict[str, dg.LoggerDefinition]:
        steps = self._logger("vitrieve.steps", self.steps)
        file = self._logger("dagster", self.file)
        defs = {
            "steps": dg.LoggerDefinition(lambda _: steps, description="one line per finished step"),
            "file": dg.LoggerDefinition(lambda _: file, description="the run's full log, in a file"),
        }
        if self.debug:
            defs["console"] = dg.colored_console_logger.configured({"log_level": "DEBUG"})
        return defs

    def __enter__(self) -> RunOutput:
        if not self.debug:
            logging.captureWarnings(True)
            logging.getLogger("py.warnings").addHandler(self.file)
        return self

    def __exit__(self, *exc) -> None:
        if not self.debug:
            logging.getLogger("py.warnings").removeHandler(self.file)
            logging.captureWarnings(False)
        self.file.close()
