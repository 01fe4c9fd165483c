"""Sensors: ``catalogue_source_sensor`` (new or changed catalogue folders under a watched URI start runs),
``retrain_on_catalogue_change`` (a catalogue that changed by more than a share of its rows gets a new model) and
``automation_sensor`` (evaluates the assets' automation conditions)."""

from __future__ import annotations

import json
import os

import dagster as dg

from assets.common import MODEL_TAG
from assets.partitions import catalogues
from assets.resources import SourceWatchResource
from pipelines.jobs import ingest_and_reindex, retrain_model, run_tags, train_and_publish
from storage.watch import source_fingerprints


@dg.sensor(
    jobs=[train_and_publish, ingest_and_reindex],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def catalogue_source_sensor(context: dg.SensorEvaluationContext, source_watch: SourceWatchResource):
    """Each child folder of the watched URI is a catalogue. A new one is registered as a partition and gets a
    ``train_and_publish`` run; a changed listing (cursor = listing fingerprint per catalogue) gets
    ``ingest_and_reindex`` when the catalogue has a trained model, else ``train_and_publish``."""
    if not source_watch.uri:
        return dg.SkipReason("no source URI to watch (set VITRIEVE_WATCH or the source_watch resource)")
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    found = source_fingerprints(source_watch.uri)
    changed = {name: (uri, fp) for name, (uri, fp) in found.items() if seen.get(name) != fp}
    if not changed:
        return dg.SkipReason(f"no new or changed catalogue under {source_watch.uri}")
    new = [name for name in changed if not context.instance.has_dynamic_partition(catalogues.name, name)]
    requests = []
    for name, (uri, fp) in sorted(changed.items()):
        tags = run_tags(context.instance, name, **{"vitrieve/source": uri})
        job = ingest_and_reindex if name not in new and MODEL_TAG in tags else train_and_publish
        requests.append(
            dg.RunRequest(
                run_key=f"{name}-{fp}",
                job_name=job.name,
                partition_key=name,
                tags=tags,
                run_config={"ops": {"catalogue": {"config": {"source": uri}}}},
            )
        )
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[catalogues.build_add_request(new)] if new else [],
        cursor=json.dumps({**seen, **{name: fp for name, (_, fp) in changed.items()}}, sort_keys=True),
    )


#: Retrain when a catalogue materialisation changed more than this share of the previous catalogue's rows
#: (added, removed or with a new image; the ``changed_row_share`` metadata). ``VITRIEVE_RETRAIN_SHARE`` overrides it.
RETRAIN_SHARE = 0.2
RETRAIN_SHARE_ENV = "VITRIEVE_RETRAIN_SHARE"
CATALOGUE = dg.AssetKey("catalogue")
MODEL = dg.AssetKey("hashing_model")


def retrain_share() -> float:
    value = os.environ.get(RETRAIN_SHARE_ENV, "")
    try:
        share = float(value) if value else RETRAIN_SHARE
    except ValueError:
        raise ValueError(f"{RETRAIN_SHARE_ENV}={value!r}: give a share of rows between 0 and 1") from None
    if not 0 <= share <= 1:
        raise ValueError(f"{RETRAIN_SHARE_ENV}={value!r}: give a share of rows between 0 and 1")
    return share


def _run_trains(instance: dg.DagsterInstance, run_id: str) -> bool:
    """Whether the run that materialised the catalogue also plans ``hashing_model`` (e.g. ``train_and_publish``):
    then no second model."""
    if not run_id:  # reported outside a run
        return False
    planned = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, limit=1000
    ).records
    return any(r.event_log_entry.dagster_event.asset_key == MODEL for r in planned)


@dg.sensor(job=retrain_model, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def retrain_on_catalogue_change(context: dg.SensorEvaluationContext):
    """Each new ``catalogue`` materialisation whose ``changed_row_share`` exceeds ``retrain_share()`` gets a
    ``retrain_model`` run for its catalogue (unless that run trained already); the automation conditions then
    carry the model to codes, evaluation and index once its blocking checks pass. Cursor: the last
    materialisation seen."""
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=CATALOGUE, after_storage_id=after), limit=1000, ascending=True
    ).records
    if not records:
        return dg.SkipReason("no new catalogue materialisation")
    threshold, requests = retrain_share(), []
    for record in records:
        share = record.asset_materialization.metadata.get("changed_row_share")
        name = record.partition_key
        if share is None or share.value <= threshold or _run_trains(context.instance, record.run_id):
            continue
        requests.append(
            dg.RunRequest(
                run_key=f"retrain-{name}-{record.storage_id}",
                job_name=retrain_model.name,
                partition_key=name,
                tags=run_tags(context.instance, name, **{"vitrieve/changed_row_share": f"{share.value:.4f}"}),
            )
        )
    return dg.SensorResult(run_requests=requests, cursor=str(records[-1].storage_id))


#: Evaluates every asset's automation condition (assets/automation.py) every 30 s; runs under ``dagster dev``.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Materialises codes, evaluation, index and diagnostics of a catalogue after an accepted "
    "upstream update (their automation conditions).",
)
