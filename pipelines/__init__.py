"""Dagster definitions, jobs, schedules, sensors and the ``vitrieve`` CLI."""

from pipelines.preview_warnings import filter_preview_warnings

filter_preview_warnings()  # before any asset module is imported: its decorators warn at import time
