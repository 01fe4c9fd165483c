"""Dagster's preview and beta warnings, filtered in this one place.

The asset checks take a ``partitions_def`` (a preview feature in Dagster 1.13), which warns each time the
definitions are imported: by the ``vitrieve`` command, by ``dagster dev`` and by every code server. The filter
matches only Dagster's own ``PreviewWarning`` and ``BetaWarning`` categories; every other warning still shows.
"""

from __future__ import annotations

import warnings

import dagster as dg

FILTERED = (dg.PreviewWarning, dg.BetaWarning)


def filter_preview_warnings() -> None:
    """Ignore Dagster's preview/beta warnings (idempotent: ``filterwarnings`` replaces an equal filter)."""
    for category in FILTERED:
        warnings.filterwarnings("ignore", category=category)
