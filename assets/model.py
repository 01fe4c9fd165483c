"""``hashing_model``: train a hashing model on a catalogue's training split."""

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, create_model

from assets.common import remove_stale_temps, tag_run
from assets.partitions import catalogues
from assets.resources import ComputeResource, DiagnosticsResource, StorageResource
from assets.training import (
    EPOCH_ROW,
    METADATA_TYPES,
    PLAN_COLUMNS,
    TrainingRequest,
    card_metadata,
    train_and_store,
)
from ml.model_spec import ModelSpec
from ml.recipes import PROFILE_FIELDS, RUN_FIELDS, build_run
from ml.train_config import TrainConfig
from storage.catalogue import CatalogueInfo, fingerprint, read_catalogue
from storage.diagnostics import insert_training_log
from storage.fs import StorageRoot
from storage.model_store import has_model, read_card

REMOTE_TRAINING = "assets.remote_training"  # the Pipes entry point (python -m) of training: subprocess
TrainingMode = Literal["in_process", "subprocess"]  # where hashing_model trains (config field ``training``)
TRAINING_MODES = get_args(TrainingMode)


class RunOptions(dg.Config):
    """The fields of a ``hashing_model`` run that neither the model (``ModelSpec``) nor its recipe
    (``TrainConfig``) holds."""

    profile: str = Field(default="quick", description="the model and recipe behind every unset field")
    val_queries: int = Field(
        default=2000, description="validation queries for model selection, drawn from the held-out slice"
    )
    val_database: int = Field(
        default=5000, description="validation database for model selection, drawn from the training split"
    )
    min_val_map: float = Field(
        default=0.5, description="validation mAP@100 floor of the blocking model_quality check"
    )
    force: bool = Field(
        default=False, description="train again even if this model_id exists (and ignore a saved last.pt)"
    )
    training: TrainingMode = Field(
        default="in_process",
        description="where the training runs: in_process (this step) or subprocess (a Dagster Pipes process, "
        f"python -m {REMOTE_TRAINING}; same model, metadata and logs)",
    )


def _config_field(f: dataclasses.Field, hint: Any, from_profile: bool) -> tuple[Any, Any]:
    """(type, pydantic field) of the dataclass field ``f``: optional and unset (``None``) where a profile fills
    it, else with the dataclass default."""
    about = f.metadata["description"]
    if from_profile:
        return hint | None, Field(default=None, description=f"{about} (unset: the profile's)")
    if f.default is dataclasses.MISSING:
        return hint, Field(default_factory=f.default_factory, description=about)
    return hint, Field(default=f.default, description=about)


def _run_config_fields() -> dict[str, tuple[Any, Any]]:
    """Every field a run may set (``PROFILE_FIELDS`` then ``RUN_FIELDS``), as declared in the dataclasses."""
    declared = {}
    for cls in (ModelSpec, TrainConfig):
        hints = get_type_hints(cls)
        declared |= {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}
    return {
        name: _config_field(*declared[name], from_profile=name in PROFILE_FIELDS)
        for name in PROFILE_FIELDS + RUN_FIELDS
    }


class HashingModelConfig(create_model("RunFields", __base__=RunOptions, **_run_config_fields())):
    """Model, loss, code length and recipe of one training run; ``model_id`` is derived from all of it.
    Fields left unset come from the profile (``ml.recipes.PROFILES``); each field is declared once, in
    ``RunOptions``, ``ModelSpec`` or ``TrainConfig``."""


def resolve_run(
    config: HashingModelConfig, num_classes: int, in_chans: int, num_train: int | None = None
) -> tuple[ModelSpec, TrainConfig]:
    """The ``ModelSpec`` and ``TrainConfig`` that ``config`` stands for on a catalogue of these classes and
    channels (and, where given, training images: the profile's epochs scale to it)."""
    given = {k: getattr(config, k) for k in PROFILE_FIELDS + RUN_FIELDS}
    return build_run(config.profile, num_classes, in_chans, num_train=num_train, **given)


# bump when training code changes results: a new model_id, not a stale reuse (v5: warm-up capped at a tenth of
# the schedule, early stopping)
CODE_VERSION = "hashing_model-v5"


def make_model_id(spec: dict, train_cfg: dict, catalogue: str, catalogue_fp: str) -> str:
    """``<model>-<loss>-<bits>b-<preset>-<hash>``; the hash covers the full config, the data and the code version."""
    payload = json.dumps(
        {
            "spec": spec,
            "train": train_cfg,
            "catalogue": catalogue,
            "data": catalogue_fp,
            "code": CODE_VERSION,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:8]
    return f"{spec['model']}-{train_cfg['loss']}-{spec['bits']}b-{spec['preset']}-{digest}"


@dg.asset(
    partitions_def=catalogues,
    deps=["catalogue"],
    group_name="vitrieve",
    kinds={"pytorch", "safetensors"},
    pool="gpu",
    code_version=CODE_VERSION,
    description="Trained hashing model: safetensors weights + model card (model.json).",
)
def hashing_model(
    context: dg.AssetExecutionContext,
    config: HashingModelConfig,
    storage: StorageResource,
    diagnostics: DiagnosticsResource,
    compute: ComputeResource,
) -> dg.MaterializeResult:
    name = context.partition_key
    root = storage.get()
    in_process = config.training == "in_process"
    # a Pipes process reads the images itself: here only the columns of the plan
    table, info = read_catalogue(root, name, columns=None if in_process else PLAN_COLUMNS)
    request = plan_training(context, config, table, info)
    tag_run(context, request.model_id)
    remove_stale_temps(context, root, "models", request.model_id)
    if has_model(root, request.model_id) and not config.force:
        card = read_card(root, request.model_id)
        context.log.info(
            f"model {request.model_id} already trained on this catalogue with this config; reusing it"
        )
        return dg.MaterializeResult(metadata=_card_metadata(context, root, card, reused=True))

    store = diagnostics.get()
    run_id = store.start_run(
        "training", name, request.model_id, request.train | {"spec": request.spec}, context.run.run_id
    )

    def log_epochs(rows: list[dict]) -> None:
        store.append(run_id, lambda rid, con: insert_training_log(con, rid, rows))

    try:
        if in_process:
            card = train_and_store(
                root,
                request,
                table,
                info,
                compute.torch_device(),
                log=context.log.info,
                progress=sys.stderr.isatty(),
                on_epoch=lambda row: log_epochs([row]),
            )
            result = dg.MaterializeResult(metadata=_card_metadata(context, root, card, reused=False))
        else:
            try:
                pipes = launch_pipes_training(context, request, storage, compute)
            except Exception as err:
                reason = _pipes_exception(context)
                if reason is None:
                    raise
                raise RuntimeError(
                    f"training {request.model_id} in a Pipes process failed: {reason}"
                ) from err
            log_epochs([m[EPOCH_ROW] for m in pipes.get_custom_messages() if EPOCH_ROW in m])
            result = pipes.get_materialize_result()
    except BaseException:
        store.finish_run(run_id, "failed")
        raise
    store.finish_run(run_id)
    return result


def plan_training(
    context: dg.AssetExecutionContext, config: HashingModelConfig, table: pa.Table, info: CatalogueInfo
) -> TrainingRequest:
    """The run ``config`` stands for on this catalogue (``table`` needs the ``PLAN_COLUMNS`` only)."""
    num_classes = len(info.label_names)
    num_train = int(pc.sum(table["in_train"]).as_py() or 0)
    spec, train_cfg = resolve_run(config, num_classes, int(pc.max(table["channels"]).as_py()), num_train)
    fp = fingerprint(table)
    return TrainingRequest(
        catalogue=context.partition_key,
        catalogue_fingerprint=fp,
        model_id=make_model_id(spec.to_dict(), train_cfg.to_dict(), context.partition_key, fp),
        spec=spec.to_dict(),
        train=train_cfg.to_dict(),
        val_queries=config.val_queries,
        val_database=config.val_database,
        min_val_map=config.min_val_map,
        force=config.force,
        code_version=CODE_VERSION,
        dagster_run_id=context.run.run_id,
    )


def launch_pipes_training(
    context: dg.AssetExecutionContext,
    request: TrainingRequest,
    storage: StorageResource,
    compute: ComputeResource,
) -> dg.PipesClientCompletedInvocation:
    """Run ``python -m assets.remote_training`` on this machine through Dagster Pipes (its log lines, epoch rows
    and materialisation come back to this step); storage credentials travel in its environment only. The one
    place that picks the Pipes client: a GPU pod or a Databricks job takes the same extras and entry point
    (docs/OPERATIONS.md, "Training off the orchestrator")."""
    project = str(Path(__file__).resolve().parents[1])  # importable even without an installed package
    path = os.pathsep.join(p for p in (project, os.environ.get("PYTHONPATH")) if p)
    context.log.info(
        f"training {request.model_id} in a Dagster Pipes subprocess: python -m {REMOTE_TRAINING}"
    )
    return dg.PipesSubprocessClient().run(
        context=context,
        command=[sys.executable, "-m", REMOTE_TRAINING],
        extras={
            "request": request.to_dict(),
            "root": storage.root,
            "device": compute.device,
            "threads": compute.threads,
        },
        env={**storage.process_env(), "PYTHONPATH": path},
    )


def _pipes_exception(context: dg.AssetExecutionContext) -> str | None:
    """The last line of the exception the Pipes process reported on closing, if any (Dagster records it as an
    engine event of the run)."""
    for entry in reversed(
        context.instance.all_logs(context.run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
    ):
        data = entry.dagster_event.engine_event_data if entry.dagster_event else None
        if data is not None and data.error is not None and entry.user_message.startswith("[pipes]"):
            return data.error.message.strip().splitlines()[-1]
    return None


def _card_metadata(context: dg.AssetExecutionContext, root: StorageRoot, card: dict, reused: bool) -> dict:
    """``card_metadata`` as Dagster metadata values (the Pipes process sends the same entries)."""
    version = context.assets_def.code_versions_by_key.get(context.asset_key)
    plain = card_metadata(root, card, reused, code_version=version, dagster_run_id=context.run.run_id)
    return {
        k: getattr(dg.MetadataValue, METADATA_TYPES[k])(v) if k in METADATA_TYPES else v
        for k, v in plain.items()
    }
