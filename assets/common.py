"""Glue shared by the assets: catalogue rows -> model inputs, the current model of a catalogue."""

from __future__ import annotations

import base64
import posixpath

import dagster as dg

# re-exported: the Dagster-free glue lives in assets.inputs (the Pipes training process imports it too)
from assets.inputs import file_facts as file_facts
from assets.inputs import model_inputs as model_inputs
from assets.inputs import rows_where as rows_where
from storage.fs import StorageRoot
from storage.model_store import read_card, read_weights

CATALOGUE_TAG = "vitrieve/catalogue"  # run tags naming a run's catalogue and model
MODEL_TAG = "vitrieve/model"


MODEL_CHECK = dg.AssetCheckKey(dg.AssetKey("hashing_model"), "model_quality")
#: blocking checks of ``hashing_model``: a model that failed one of them with ERROR severity is rejected
MODEL_CHECKS = (MODEL_CHECK, dg.AssetCheckKey(MODEL_CHECK.asset_key, "map_regression"))


def _rejected(record) -> bool:
    event = record.event.dagster_event if record.event else None
    evaluation = event.event_specific_data if event is not None else None
    severity = getattr(evaluation, "severity", dg.AssetCheckSeverity.ERROR)
    return record.status.value == "FAILED" and severity == dg.AssetCheckSeverity.ERROR


def latest_model_id(instance: dg.DagsterInstance, catalogue: str) -> str | None:
    """model_id of the catalogue's latest ``hashing_model`` materialisation that no blocking model check
    (``MODEL_CHECKS``) rejected with ERROR severity: a rejected model is never picked up by later runs (e.g. the
    nightly job)."""
    rejected = {
        r.run_id
        for key in MODEL_CHECKS
        for r in instance.event_log_storage.get_asset_check_execution_history(key, limit=1000)
        if _rejected(r) and r.partition in (catalogue, None)
    }
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=MODEL_CHECK.asset_key, asset_partitions=[catalogue]), limit=100
    ).records
    for record in records:
        value = record.asset_materialization.metadata.get("model_id")
        if value is not None and record.event_log_entry.run_id not in rejected:
            return value.value
    return None


def current_model_id(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, override: str = ""
) -> str:
    """The model of this catalogue: ``override`` if given, else the latest ``hashing_model``
    materialisation of the partition."""
    model_id = override or latest_model_id(context.instance, context.partition_key)
    if not model_id:
        raise ValueError(
            f"catalogue {context.partition_key!r} has no trained model yet: materialise hashing_model first"
        )
    return model_id


def tag_run(context: dg.AssetExecutionContext, model_id: str) -> None:
    """Name the run's catalogue and model in its tags (filterable in the UI's run list)."""
    context.instance.add_run_tags(
        context.run.run_id, {CATALOGUE_TAG: context.partition_key, MODEL_TAG: model_id}
    )


def load_model(root: StorageRoot, model_id: str, device):
    from ml.checkpoint import model_from_checkpoint

    card = read_card(root, model_id)
    return model_from_checkpoint(card, read_weights(root, model_id), device), card


def png_markdown(png: bytes, alt: str) -> str:
    """A small PNG inlined in markdown metadata (Dagster has no image metadata type)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def lineage(context: dg.AssetExecutionContext, **facts: str) -> dg.MetadataValue:
    """Where a materialisation comes from: the asset's code version, the Dagster run and ``facts``
    (model_id, catalogue fingerprint, ...)."""
    version = context.assets_def.code_versions_by_key.get(context.asset_key)
    return dg.MetadataValue.json({"code_version": version, "dagster_run_id": context.run.run_id, **facts})


def remove_stale_temps(context: dg.AssetExecutionContext, root: StorageRoot, *parts: str) -> None:
    """Remove the temporary files an interrupted run of this asset left under ``parts`` (logged as a warning)."""
    removed = root.remove_stale_temps(*parts)
    if removed:
        names = ", ".join(posixpath.basename(p) for p in removed[:5]) + (", ..." if len(removed) > 5 else "")
        context.log.warning(
            f"removed {len(removed)} temporary file(s) an interrupted run left under {root.url(*parts)}: {names}"
        )
