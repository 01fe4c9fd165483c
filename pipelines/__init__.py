"""Dagster definitions, jobs, schedules, resources and the ``vitrieve`` CLI."""
