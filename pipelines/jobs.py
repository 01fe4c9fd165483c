"""Jobs, the nightly schedule and the launch-time run tags naming a run's catalogue and model."""

from __future__ import annotations

import dagster as dg

from assets.common import CATALOGUE_TAG, MODEL_TAG, latest_model_id
from assets.partitions import catalogues

TRAIN_AND_PUBLISH = dg.AssetSelection.assets(
    "catalogue", "hashing_model", "packed_codes", "model_evaluation", "binary_index", "retrieval_diagnostics"
)
# The nightly job re-encodes with the current model (no training) and includes the check-guarded assets it
# publishes from, so their blocking checks gate CURRENT within the run.
NIGHTLY = dg.AssetSelection.assets("packed_codes", "binary_index", "retrieval_diagnostics")
INGEST_AND_REINDEX = NIGHTLY | dg.AssetSelection.assets("catalogue")
# Training alone: declarative automation carries a model that passes its blocking checks on to its codes,
# evaluation, index and diagnostics (docs/OPERATIONS.md, "Automation and comparison checks").
RETRAIN = dg.AssetSelection.assets("hashing_model")

train_and_publish = dg.define_asset_job(
    "train_and_publish",
    selection=TRAIN_AND_PUBLISH,
    partitions_def=catalogues,
    description="Ingest, train, encode, evaluate, index and diagnose one catalogue.",
)
nightly_reindex = dg.define_asset_job(
    "nightly_reindex",
    selection=NIGHTLY,
    partitions_def=catalogues,
    description="Re-encode changed catalogue rows with the current model, rebuild and republish the index.",
)
ingest_and_reindex = dg.define_asset_job(
    "ingest_and_reindex",
    selection=INGEST_AND_REINDEX,
    partitions_def=catalogues,
    description="Re-ingest a changed source, encode its new rows with the current model and republish the index.",
)

retrain_model = dg.define_asset_job(
    "retrain_model",
    selection=RETRAIN,
    partitions_def=catalogues,
    description="Train a new model for one catalogue; automation publishes it once its blocking checks pass.",
)


def run_tags(instance: dg.DagsterInstance, catalogue: str, **extra: str) -> dict[str, str]:
    """Tags naming the run's catalogue and (when one is trained) its current model."""
    model_id = latest_model_id(instance, catalogue)
    return {CATALOGUE_TAG: catalogue, **({MODEL_TAG: model_id} if model_id else {}), **extra}


@dg.schedule(
    job=nightly_reindex,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def nightly_reindex_schedule(context: dg.ScheduleEvaluationContext):
    """Every night at 02:00 UTC, one re-index run per registered catalogue."""
    keys = context.instance.get_dynamic_partitions(catalogues.name)
    if not keys:
        return dg.SkipReason("no catalogues registered yet")
    stamp = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return [
        dg.RunRequest(run_key=f"{key}-{stamp}", partition_key=key, tags=run_tags(context.instance, key))
        for key in keys
    ]
