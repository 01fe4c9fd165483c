"""Materialise the asset graph in-process for a tiny catalogue with the smallest model that works."""

from __future__ import annotations

import dagster as dg

from bench.faults import TINY_OPS  # the smallest model that works: seconds on a CPU


def tiny_catalogue_config(source: str, **extra) -> dict:
    """Catalogue config for a few dozen images: 4 train and 2 query images per label, 2 validation images."""
    return {
        "source": source,
        "train_per_label": 4,
        "query_per_label": 2,
        "validation_size": 2,
        "seed": 0,
        **extra,
    }


def resources(root: str, db: str, **storage) -> dict:
    from assets.resources import ComputeResource, DiagnosticsResource, StorageResource

    return {
        "storage": StorageResource(root=root, **storage),
        "diagnostics": DiagnosticsResource(path=db),
        "compute": ComputeResource(device="cpu", threads=1),
    }


def run_graph(
    instance: dg.DagsterInstance,
    name: str,
    catalogue: dict,
    root: str,
    db: str,
    selection: list[str] | None = None,
    ops: dict | None = None,
    **storage,
) -> dg.ExecuteInProcessResult:
    """``train_and_publish`` (or ``selection`` of it) for catalogue partition ``name``."""
    from pipelines.definitions import build_definitions

    if not instance.has_dynamic_partition("catalogues", name):
        instance.add_dynamic_partitions("catalogues", [name])
    run_config = {"catalogue": {"config": catalogue}, **TINY_OPS, **(ops or {})}
    if selection:
        run_config = {k: v for k, v in run_config.items() if k in selection}
    return (
        build_definitions(resources(root, db, **storage))
        .resolve_job_def("train_and_publish")
        .execute_in_process(
            run_config={"ops": run_config},
            instance=instance,
            partition_key=name,
            asset_selection=[dg.AssetKey(a) for a in selection] if selection else None,
            raise_on_error=False,
        )
    )


def failure_messages(result: dg.ExecuteInProcessResult) -> list[str]:
    """Each failed step's error message, with its causes (the user's error under Dagster's wrapper)."""
    out = []
    for event in result.all_events:
        if event.is_step_failure:
            error, text = event.step_failure_data.error, []
            while error is not None:
                text.append(error.message.strip())
                error = error.cause
            out.append(" <- ".join(text))
    return out
