"""Declarative automation of the asset graph: when Dagster materialises an asset by itself and how fresh the
published index must be (docs/OPERATIONS.md, "Automation and comparison checks").

No asset sets a backfill policy, on purpose: every asset works on one catalogue (``context.partition_key``), and
without a policy a backfill launches one run per catalogue tagged ``dagster/partition``, the tag the run queue's
per-catalogue limit keys on; ``BackfillPolicy.multi_run(1)`` would also split per catalogue but tag runs with a
partition range instead, escaping that limit, and ``single_run`` would hand one run several catalogues."""

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
