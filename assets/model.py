"""``hashing_model``: train a hashing model on a catalogue's training split."""

import dataclasses
import hashlib
import json
import math
import sys
from datetime import UTC, datetime
from typing import Any, get_type_hints

import dagster as dg
import pyarrow.compute as pc
from pydantic import Field, create_model

from assets.common import (
    file_facts,
    labels_matrix,
    lineage,
    model_inputs,
    remove_stale_temps,
    rows_where,
    tag_run,
)
from assets.partitions import catalogues
from assets.resources import ComputeResource, DiagnosticsResource, StorageResource
from ml.model_spec import ModelSpec
from ml.recipes import PROFILE_FIELDS, RUN_FIELDS, build_run
from ml.train_config import TrainConfig
from storage.catalogue import fingerprint, read_catalogue
from storage.codes import image_hash_of
from storage.diagnostics import insert_training_log
from storage.model_store import card_bits, has_model, read_card, write_model


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


def resolve_run(config: HashingModelConfig, num_classes: int, in_chans: int) -> tuple[ModelSpec, TrainConfig]:
    """The ``ModelSpec`` and ``TrainConfig`` that ``config`` stands for on a catalogue of these classes and
    channels."""
    return build_run(
        config.profile, num_classes, in_chans, **{k: getattr(config, k) for k in PROFILE_FIELDS + RUN_FIELDS}
    )


# bump when training code changes results: a new model_id, not a stale reuse (v4: channels-last, bf16 on CPUs)
CODE_VERSION = "hashing_model-v4"


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
    from ml.encode import encode_images
    from ml.train import TrainData, UnsafeStateError, train_hashing_model, validation_pick

    name = context.partition_key
    root = storage.get()
    table, info = read_catalogue(root, name)
    num_classes = len(info.label_names)
    spec, train_cfg = resolve_run(config, num_classes, int(pc.max(table["channels"]).as_py()))
    fp = fingerprint(table)
    model_id = make_model_id(spec.to_dict(), train_cfg.to_dict(), name, fp)
    tag_run(context, model_id)
    remove_stale_temps(context, root, "models", model_id)
    if has_model(root, model_id) and not config.force:
        card = read_card(root, model_id)
        context.log.info(f"model {model_id} already trained on this catalogue with this config; reusing it")
        return dg.MaterializeResult(metadata=_card_metadata(context, root, card, reused=True))

    device = compute.torch_device()
    train_rows = rows_where(table, "in_train")
    val_rows = rows_where(table, "in_validation")
    pick_q, pick_db = validation_pick(
        val_rows.num_rows, train_rows.num_rows, config.val_queries, config.val_database, config.seed
    )
    val_q, val_db = val_rows.take(pick_q), train_rows.take(pick_db)
    if val_q.num_rows == 0:
        raise ValueError(
            f"catalogue {name!r} has no validation images; model selection needs a held-out slice"
        )
    size, ch = spec.img_size, spec.in_chans
    from ml.transfer import TransferData, TransferRows, is_transfer, train_transfer

    transfer = is_transfer(spec)
    if transfer:  # a frozen backbone: features cached by row_id, images decoded only for rows not cached yet
        rows = [
            TransferRows(
                t["row_id"].to_numpy(),
                labels_matrix(t, num_classes),
                lambda pos, t=t: model_inputs(t.take(pos), size, ch, num_classes)[1],
                image_hash_of(t["sha256"]),
            )
            for t in (train_rows, val_q, val_db)
        ]
        data = TransferData(root, name, *rows)
    else:
        _, x_train, y_train = model_inputs(train_rows, size, ch, num_classes)
        _, x_vq, y_vq = model_inputs(val_q, size, ch, num_classes)
        _, x_vdb, y_vdb = model_inputs(val_db, size, ch, num_classes)
        data = TrainData(x_train, y_train, x_vq, y_vq, x_vdb, y_vdb)
    context.log.info(
        f"training {model_id} on {device}: {train_rows.num_rows} images, {train_cfg.epochs} epochs"
        + (f" + {train_cfg.clean_epochs} clean" if train_cfg.clean_epochs else "")
        + ", "
        f"validation {val_q.num_rows} queries x {val_db.num_rows} database"
        + (" (frozen backbone, cached features)" if transfer else "")
    )
    store = diagnostics.get()
    run_id = store.start_run(
        "training", name, model_id, train_cfg.to_dict() | {"spec": spec.to_dict()}, context.run.run_id
    )
    last = ("models", model_id, "last.pt")  # full training state after each epoch, for resuming after a crash
    resume = root.read_bytes(*last) if root.exists(*last) and not config.force else None
    try:
        result = (train_transfer if transfer else train_hashing_model)(
            spec,
            train_cfg,
            data,
            device,
            log=context.log.info,
            progress=sys.stderr.isatty(),
            on_epoch=lambda row: store.append(run_id, lambda rid, con: insert_training_log(con, rid, [row])),
            checkpoint=lambda state: root.write_bytes(state, *last),
            resume=resume,
        )
    except BaseException as err:
        store.finish_run(run_id, "failed")
        if isinstance(err, UnsafeStateError):
            raise UnsafeStateError(
                f"{root.url(*last)}: {err}; delete it, or train from scratch with force=true "
                "(vitrieve train --force)"
            ) from None
        raise

    import time

    sample = model_inputs(val_db.slice(0, 2048), size, ch, num_classes)[1] if transfer else x_vdb[:2048]
    t = time.perf_counter()
    encode_images(result.model, sample, device)
    infer_ips = len(sample) / (time.perf_counter() - t)

    from ml.checkpoint import weights_to_bytes

    card = dict(
        model_id=model_id,
        spec=spec.to_dict(),
        train=train_cfg.to_dict(),
        catalogue=name,
        catalogue_fingerprint=fp,
        label_names=info.label_names,
        bits=spec.bits,
        min_val_map=config.min_val_map,
        parameters=result.parameters,
        best_epoch=result.best_epoch,
        best_val_map_at_100=result.best_val_map,
        final_loss=result.final_loss,
        train_images_per_s=result.train_images_per_s,
        inference_images_per_s=infer_ips,
        train_seconds=result.seconds,
        resumed_from_epoch=result.resumed_from_epoch,
        device=str(device),
        history=result.history,
        code_version=CODE_VERSION,
        created_at=datetime.now(UTC).isoformat(),
        dagster_run_id=context.run.run_id,
        **(dict(feature_cache=result.cache_key, features_extracted=result.extracted) if transfer else {}),
    )
    write_model(root, model_id, weights_to_bytes(result.model.state_dict()), card)
    store.finish_run(run_id)
    if root.exists(*last):  # a transfer run keeps none
        root.fs.rm(root.path(*last))
    return dg.MaterializeResult(metadata=_card_metadata(context, root, card, reused=False))


def _card_metadata(context: dg.AssetExecutionContext, root, card: dict, reused: bool) -> dict:
    history = card.get("history", [])
    rows = "\n".join(
        f"| {r['epoch']} | {r['loss']:.4f} | {r['val_map']:.4f} | {r['images_per_s']:.0f} | {r['seconds']:.0f} |"
        for r in history
    )
    return {
        "model_id": card["model_id"],
        "dagster/uri": root.url("models", card["model_id"], "model.safetensors"),
        "bits": card_bits(card),
        "parameters": card["parameters"],
        "best_epoch": card["best_epoch"],
        "val_map_at_100": float(card["best_val_map_at_100"]),
        "final_loss": float(card["final_loss"]) if math.isfinite(card["final_loss"]) else -1.0,
        "train_images_per_s": float(card["train_images_per_s"]),
        "inference_images_per_s": float(card["inference_images_per_s"]),
        "reused": reused,
        **file_facts(root, "models", card["model_id"], "model.safetensors"),
        "lineage": lineage(
            context,
            model_id=card["model_id"],
            catalogue=card["catalogue"],
            catalogue_fingerprint=card["catalogue_fingerprint"],
            trained_in_run=card.get("dagster_run_id"),
            trained_with_code_version=card.get("code_version"),
        ),
        "training_log": dg.MetadataValue.md(
            "| epoch | loss | val mAP@100 | img/s | s |\n|---|---|---|---|---|\n" + rows
        ),
    }
