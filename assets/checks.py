"""Blocking asset checks guarding each hand-over (docs/ARCHITECTURE.md, "Asset graph"): a failure stops downstream steps."""

import math

import dagster as dg
import numpy as np

from assets.codes import packed_codes
from assets.common import current_model_id
from assets.index import binary_index, database_codes
from assets.model import hashing_model
from assets.partitions import catalogues
from assets.resources import StorageResource
from storage.catalogue import read_catalogue
from storage.codes import read_codes
from storage.index import current, load_index, read_tombstones, verify_index
from storage.model_store import read_card


@dg.asset_check(
    asset=hashing_model,
    blocking=True,
    partitions_def=catalogues,
    description="Finite training loss and validation mAP@100 at or above the configured floor.",
)
def model_quality(context: dg.AssetCheckExecutionContext, storage: StorageResource) -> dg.AssetCheckResult:
    card = read_card(storage.get(), current_model_id(context))
    floor = card.get("min_val_map", 0.0)
    val_map = float(card["best_val_map_at_100"])
    finite = math.isfinite(card["final_loss"])
    return dg.AssetCheckResult(
        passed=finite and val_map >= floor,
        metadata={
            "model_id": card["model_id"],
            "val_map_at_100": val_map,
            "floor": floor,
            "loss_finite": finite,
        },
    )


@dg.asset_check(
    asset=packed_codes,
    blocking=True,
    partitions_def=catalogues,
    description="Exactly one code of the model's width per catalogue image (queries included).",
)
def codes_complete(context: dg.AssetCheckExecutionContext, storage: StorageResource) -> dg.AssetCheckResult:
    root = storage.get()
    model_id = current_model_id(context)
    table, _ = read_catalogue(root, context.partition_key, columns=["row_id"])
    row_ids, codes, meta = read_codes(root, context.partition_key, model_id)
    expected_width = meta.nbytes
    problems = []
    if codes.shape[1] != expected_width:
        problems.append(f"code width {codes.shape[1]} bytes, expected {expected_width}")
    if len(np.unique(row_ids)) != len(row_ids):
        problems.append("duplicate row_ids in codes")
    if not np.array_equal(np.sort(row_ids), np.sort(table["row_id"].to_numpy())):
        problems.append(f"codes cover {len(row_ids)} rows, catalogue has {table.num_rows}")
    if meta.model_id != model_id:
        problems.append(f"codes were written by {meta.model_id}, current model is {model_id}")
    return dg.AssetCheckResult(
        passed=not problems, metadata={"rows": len(row_ids), "problems": "; ".join(problems) or "none"}
    )


@dg.asset_check(
    asset=binary_index,
    blocking=True,
    partitions_def=catalogues,
    description="Published index: ntotal = database rows of the codes; probes find themselves at distance 0.",
)
def index_consistent(context: dg.AssetCheckExecutionContext, storage: StorageResource) -> dg.AssetCheckResult:
    root = storage.get()
    name = context.partition_key
    pointer = current(root, name)
    index, manifest = load_index(root, name)
    row_ids, codes, _ = database_codes(root, name, pointer["model_id"])
    stones = read_tombstones(root, name)  # compacted deletes and updates: the index holds them
    if stones:
        row_ids, codes = stones.held(pointer, row_ids, codes)
    problems = verify_index(index, row_ids, codes)
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "model_id": pointer["model_id"],
            "ntotal": int(index.ntotal),
            "database_rows": len(row_ids),
            "problems": "; ".join(problems) or "none",
        },
    )
