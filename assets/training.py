"""One training run of ``hashing_model``, free of Dagster: the one home of the training logic and of the
metadata that describe a model.

The asset plans the run (``TrainingRequest``: model, recipe, model_id). Then either the asset itself
(``training: in_process``) or the Dagster Pipes entry point ``assets.remote_training`` in another process
(``training: subprocess``; a GPU pod or a Databricks job: docs/OPERATIONS.md) calls ``train_and_store`` and
describes the stored model with ``card_metadata``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from assets.inputs import file_facts, model_inputs, rows_where
from ml.model_spec import ModelSpec
from ml.train_config import TrainConfig
from storage.catalogue import CatalogueInfo, fingerprint, labels_matrix, read_catalogue
from storage.codes import image_hash_of
from storage.fs import StorageRoot
from storage.model_store import card_bits, write_model

# The catalogue columns a plan reads (the classes come from the catalogue's metadata): the fingerprint's and the
# channels. The process that trains reads every column.
PLAN_COLUMNS = ["row_id", "sha256", "labels", "in_train", "in_query", "in_database", "channels"]
# Custom Pipes message key of one epoch's ``training_log`` row (the asset writes it to the diagnostics DB).
EPOCH_ROW = "training_log"
# Metadata entries that are not plain text / int / float / bool values: their Dagster metadata type.
METADATA_TYPES = {"lineage": "json", "training_log": "md"}


@dataclass(frozen=True)
class TrainingRequest:
    """A planned training run, as the asset decided it; carried as JSON (Pipes extras) to the process that
    trains."""

    catalogue: str
    catalogue_fingerprint: str
    model_id: str
    spec: dict
    train: dict
    val_queries: int
    val_database: int
    min_val_map: float
    force: bool
    code_version: str
    dagster_run_id: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingRequest:
        return cls(**values)


def read_planned_catalogue(root: StorageRoot, request: TrainingRequest) -> tuple[pa.Table, CatalogueInfo]:
    """The whole catalogue of ``request``; ``ValueError`` if it changed since the run was planned."""
    table, info = read_catalogue(root, request.catalogue)
    found = fingerprint(table)
    if found != request.catalogue_fingerprint:
        raise ValueError(
            f"catalogue {request.catalogue!r} changed since model {request.model_id} was planned (fingerprint "
            f"{found}, planned {request.catalogue_fingerprint}); materialise hashing_model again"
        )
    return table, info


def train_and_store(
    root: StorageRoot,
    request: TrainingRequest,
    table: pa.Table,
    info: CatalogueInfo,
    device,
    log: Callable[[str], None],
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = False,
) -> dict:
    """Train the requested model on the catalogue ``table``, store its weights and card (``model.json``) under
    ``models/<model_id>/`` and return the card. After each epoch the full training state goes to
    ``models/<model_id>/last.pt``, from which a rerun resumes (unless ``request.force``); it is removed once the
    model is stored."""
    from ml.checkpoint import weights_to_bytes
    from ml.encode import encode_images
    from ml.train import TrainData, UnsafeStateError, train_hashing_model, validation_pick
    from ml.transfer import TransferData, TransferRows, is_transfer, train_transfer

    spec, train_cfg = ModelSpec(**request.spec), TrainConfig(**request.train)
    num_classes = len(info.label_names)
    train_rows = rows_where(table, "in_train")
    val_rows = rows_where(table, "in_validation")
    pick_q, pick_db = validation_pick(
        val_rows.num_rows, train_rows.num_rows, request.val_queries, request.val_database, train_cfg.seed
    )
    val_q, val_db = val_rows.take(pick_q), train_rows.take(pick_db)
    if val_q.num_rows == 0:
        raise ValueError(
            f"catalogue {request.catalogue!r} has no validation images; model selection needs a held-out slice"
        )
    size, ch = spec.img_size, spec.in_chans
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
        data = TransferData(root, request.catalogue, *rows)
    else:
        _, x_train, y_train = model_inputs(train_rows, size, ch, num_classes)
        _, x_vq, y_vq = model_inputs(val_q, size, ch, num_classes)
        _, x_vdb, y_vdb = model_inputs(val_db, size, ch, num_classes)
        data = TrainData(x_train, y_train, x_vq, y_vq, x_vdb, y_vdb)
    log(
        f"training {request.model_id} on {device}: {train_rows.num_rows} images, {train_cfg.epochs} epochs"
        + (f" + {train_cfg.clean_epochs} clean" if train_cfg.clean_epochs else "")
        + f", validation {val_q.num_rows} queries x {val_db.num_rows} database"
        + (" (frozen backbone, cached features)" if transfer else "")
    )
    last = ("models", request.model_id, "last.pt")  # full training state after each epoch, for resuming
    resume = root.read_bytes(*last) if root.exists(*last) and not request.force else None
    try:
        result = (train_transfer if transfer else train_hashing_model)(
            spec,
            train_cfg,
            data,
            device,
            log=log,
            progress=progress,
            on_epoch=on_epoch,
            checkpoint=lambda state: root.write_bytes(state, *last),
            resume=resume,
        )
    except UnsafeStateError as err:
        raise UnsafeStateError(
            f"{root.url(*last)}: {err}; delete it, or train from scratch with force=true (vitrieve train --force)"
        ) from None

    sample = model_inputs(val_db.slice(0, 2048), size, ch, num_classes)[1] if transfer else x_vdb[:2048]
    t = time.perf_counter()
    encode_images(result.model, sample, device)
    infer_ips = len(sample) / (time.perf_counter() - t)
    card = dict(
        model_id=request.model_id,
        spec=spec.to_dict(),
        train=train_cfg.to_dict(),
        catalogue=request.catalogue,
        catalogue_fingerprint=request.catalogue_fingerprint,
        label_names=info.label_names,
        bits=spec.bits,
        min_val_map=request.min_val_map,
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
        code_version=request.code_version,
        created_at=datetime.now(UTC).isoformat(),
        dagster_run_id=request.dagster_run_id,
        **(dict(feature_cache=result.cache_key, features_extracted=result.extracted) if transfer else {}),
    )
    write_model(root, request.model_id, weights_to_bytes(result.model.state_dict()), card)
    if root.exists(*last):  # a transfer run keeps none
        root.fs.rm(root.path(*last))
    return card


def card_metadata(
    root: StorageRoot, card: dict, reused: bool, code_version: str | None, dagster_run_id: str
) -> dict[str, Any]:
    """The materialisation metadata of a stored model, as plain values (``METADATA_TYPES`` names the entries
    that are JSON or markdown); ``code_version`` and ``dagster_run_id`` are those of the run recording it."""
    rows = "\n".join(
        f"| {r['epoch']} | {r['loss']:.4f} | {_or_dash(r['val_map'])} | {r['images_per_s']:.0f} | {r['seconds']:.0f} |"
        for r in card.get("history", [])
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
        "lineage": {
            "code_version": code_version,
            "dagster_run_id": dagster_run_id,
            "model_id": card["model_id"],
            "catalogue": card["catalogue"],
            "catalogue_fingerprint": card["catalogue_fingerprint"],
            "trained_in_run": card.get("dagster_run_id"),
            "trained_with_code_version": card.get("code_version"),
        },
        "training_log": "| epoch | loss | val mAP@100 | img/s | s |\n|---|---|---|---|---|\n" + rows,
    }


def _or_dash(value: float) -> str:
    """A validation mAP as shown, ``-`` for an epoch that was not validated (``val_every``)."""
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def pipes_metadata(metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``card_metadata`` in the Dagster Pipes format of ``report_asset_materialization``."""
    return {k: {"raw_value": v, "type": METADATA_TYPES.get(k, "__infer__")} for k, v in metadata.items()}
