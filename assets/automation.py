"""Declarative automation of the asset graph: when Dagster materialises an asset by itself, how fresh the
published index must be, and how backfills over catalogues are split into runs (docs/OPERATIONS.md,
"Automation and comparison checks")."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

AC = dg.AutomationCondition

#: Follow the upstream asset of the same catalogue once it was updated and its blocking checks passed: a model
#: that failed ``model_quality`` or ``map_regression`` never reaches its codes, codes that failed their checks
#: never reach the index. ``eager`` also waits while an upstream is missing or in progress, and never requests
#: an asset that a run in progress will still materialise.
FOLLOW_ACCEPTED_UPSTREAM = (AC.eager() & AC.all_deps_blocking_checks_passed()).with_label(
    "eager, once upstream blocking checks passed"
)

#: The published index is refreshed every night (``nightly_reindex_schedule``, 02:00 UTC): one missed night
#: warns, a second fails.
INDEX_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(hours=48), warn_window=timedelta(hours=26)
)

#: Every asset handles exactly one catalogue per run (``context.partition_key``), so a backfill over N
#: catalogues launches N runs, which the run queue and pools then admit one catalogue at a time.
ONE_CATALOGUE_PER_RUN = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)
