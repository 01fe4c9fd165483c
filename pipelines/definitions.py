"""The one code location: assets, checks, jobs, schedule, sensors (automation included), resources and executor
(loaded by workspace.yaml)."""

from __future__ import annotations

import dagster as dg

from assets import catalogue, checks, codes, codes_shards, drift_checks, evaluation, index, model, retrieval
from assets.resources import default_resources
from pipelines.executors import executor_from_env
from pipelines.jobs import (
    ingest_and_reindex,
    nightly_reindex,
    nightly_reindex_schedule,
    retrain_model,
    train_and_publish,
)
from pipelines.sensors import automation_sensor, catalogue_source_sensor, retrain_on_catalogue_change


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    """The definitions bound to ``resources`` (default: the embedded set-up). Jobs resolved from them run any
    asset subset; resources passed to ``execute_in_process`` instead conflict with these once a subset is
    selected."""
    # VITRIEVE_SHARD_ROWS set: packed_codes encodes shard by shard, one step each (assets.codes_shards)
    codes_module = codes_shards if codes_shards.shard_rows_from_env() else codes
    return dg.Definitions(
        assets=dg.load_assets_from_modules([catalogue, model, codes_module, evaluation, index, retrieval]),
        asset_checks=dg.load_asset_checks_from_modules([checks, drift_checks]),
        jobs=[train_and_publish, nightly_reindex, ingest_and_reindex, retrain_model],
        schedules=[nightly_reindex_schedule],
        sensors=[catalogue_source_sensor, retrain_on_catalogue_change, automation_sensor],
        resources={**default_resources(), **(resources or {})},
        executor=executor_from_env(),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
