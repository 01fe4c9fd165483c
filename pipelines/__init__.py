"""Dagster definitions, jobs, schedules, sensors and the ``vitrieve`` CLI."""
