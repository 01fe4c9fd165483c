"""``packed_codes``: every catalogue image (queries included) -> packed binary code, in Parquet.

Incremental: with the model unchanged, only catalogue rows missing from the stored codes (new rows, or rows
whose image changed) are encoded, into a new part file; codes of deleted or changed rows are dropped by copying
the surviving codes (no inference). The catalogue is streamed in batches through a pyarrow dataset, so memory
stays bounded by ``chunk_rows`` decoded images whatever the catalogue size.
"""

import sys
import time

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from assets.automation import FOLLOW_ACCEPTED_UPSTREAM
from assets.common import current_model_id, lineage, load_model, remove_stale_temps, tag_run
from assets.partitions import catalogues
from assets.resources import ComputeResource, StorageResource
from assets.table_metadata import codes_schema, table_metadata
from storage.catalogue import catalogue_dataset, fingerprint, read_catalogue
from storage.codes import (
    PartWriter,
    codes_dir,
    commit_parts,
    image_hash_of,
    parts_manifest,
    read_codes_meta,
    read_row_index,
    rewrite_without,
)
from storage.embeddings import META_KEY, embedding_columns, embedding_dtype
from storage.fs import StorageRoot
from storage.images import encoded_images
from storage.model_store import card_bits, read_card
from storage.part_checks import CorruptCodesError


class CodesConfig(dg.Config):
    model_id: str = Field(
        default="", description="Model to encode with; empty = the catalogue's latest hashing_model"
    )
    batch_size: int = 256
    chunk_rows: int = Field(
        default=8192, description="catalogue rows decoded and encoded at a time (bounds memory)"
    )
    incremental: bool = Field(
        default=True,
        description="encode only rows missing from the stored codes (new or "
        "changed images); False re-encodes every row",
    )
    embeddings: str = Field(
        default="",
        description="also store each row's pre-sign output beside its code, int8 or fp16, for re-ranking "
        "'stored' (vitrieve search --rerank stored); '' = codes only",
    )


def plan_codes(
    cat_ids: np.ndarray, cat_hash: np.ndarray, old_ids: np.ndarray | None, old_hash: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(row_ids to encode, stored row_ids to drop) to bring stored codes in line with the catalogue.
    Without per-row image hashes in the stored codes, everything is re-encoded."""
    if old_ids is None or old_hash is None:
        return cat_ids, (old_ids if old_ids is not None else np.zeros(0, np.int64))
    pos = np.searchsorted(cat_ids, old_ids)
    pos_c = np.minimum(pos, len(cat_ids) - 1) if len(cat_ids) else pos
    present = (cat_ids[pos_c] == old_ids) if len(cat_ids) else np.zeros(len(old_ids), bool)
    same = present & (cat_hash[pos_c] == old_hash) if len(cat_ids) else present
    drop = old_ids[~same]
    encode = np.setdiff1d(cat_ids, old_ids[same], assume_unique=True)
    return encode, drop


def open_codes_run(
    context: dg.OpExecutionContext | dg.AssetExecutionContext, config: CodesConfig, storage: StorageResource
) -> tuple[str, StorageRoot, str, pa.Table]:
    """The opening of every step that encodes a catalogue's codes (the one-step asset and the sharded plan):
    the embeddings option checked, the model resolved and tagged, stale temporary files removed, and the
    catalogue's planning columns read. Returns (catalogue, root, model_id, table)."""
    from ml.rerank import EMBEDDING_DTYPES

    if config.embeddings not in ("", *EMBEDDING_DTYPES):
        raise ValueError(
            f"embeddings {config.embeddings!r}: expected '' or one of {', '.join(EMBEDDING_DTYPES)}"
        )
    name = context.partition_key
    root = storage.get()
    model_id = current_model_id(context, config.model_id)
    tag_run(context, model_id)
    remove_stale_temps(context, root, *codes_dir(name, model_id))
    table, _ = read_catalogue(
        root, name, columns=["row_id", "sha256", "labels", "in_train", "in_query", "in_database"]
    )
    return name, root, model_id, table


@dg.asset(
    partitions_def=catalogues,
    deps=["hashing_model"],
    group_name="vitrieve",
    kinds={"parquet"},
    code_version="packed_codes-v2",
    automation_condition=FOLLOW_ACCEPTED_UPSTREAM,
    description="Packed codes of every catalogue image (row_id, code) for the current model; encodes only new rows.",
)
def packed_codes(
    context: dg.AssetExecutionContext, config: CodesConfig, storage: StorageResource, compute: ComputeResource
) -> dg.MaterializeResult:
    name, root, model_id, table = open_codes_run(context, config, storage)
    fp = fingerprint(table)
    cat_ids = table["row_id"].to_numpy()
    cat_hash = image_hash_of(table["sha256"])
    bits = card_bits(read_card(root, model_id))
    manifest = parts_manifest(root, name, model_id)
    try:
        stored = read_codes_meta(root, name, model_id) if manifest is not None else None
    except CorruptCodesError as err:  # never build on damaged codes: encode every row again
        context.log.warning(f"{err}; encoding every row again")
        manifest = stored = None
    old_ids = old_hash = None
    if stored is not None and config.incremental and stored.bits == bits:
        old_ids, old_hash = read_row_index(root, name, model_id)
    stored_fp = stored.catalogue_fingerprint if stored is not None else None
    if stored is not None and (embedding_dtype(stored) or "") != config.embeddings:
        old_ids = old_hash = None  # embeddings switched on, off or to another dtype: encode every row
    if stored_fp == fp and old_ids is not None and np.array_equal(old_ids, cat_ids):
        encode, drop, mode = np.zeros(0, np.int64), np.zeros(0, np.int64), "up-to-date"
    else:
        encode, drop = plan_codes(cat_ids, cat_hash, old_ids, old_hash)
        mode = "incremental" if old_ids is not None and old_hash is not None else "full"
    start = time.perf_counter()
    extra = {"catalogue_fingerprint": fp} | ({META_KEY: config.embeddings} if config.embeddings else {})
    parts = list(manifest["parts"]) if manifest is not None and mode != "full" else []
    if mode != "up-to-date":
        if len(drop) and mode == "incremental":  # copy the surviving codes without the dropped rows
            compacted, kept = rewrite_without(root, name, model_id, np.sort(drop), bits)
            parts = [compacted]
            context.log.info(
                f"dropped {len(drop)} stale rows from the codes of {name!r} ({kept} kept, no inference)"
            )
        if len(encode):
            parts.append(_encode_rows(context, root, name, model_id, bits, encode, config, compute, extra))
        commit_parts(root, name, model_id, parts, bits, len(cat_ids), extra)
    seconds = time.perf_counter() - start
    ips = len(encode) / seconds if len(encode) and seconds > 0 else 0.0
    context.log.info(
        f"codes of {name!r} under {model_id}: {mode}, encoded {len(encode)} of {len(cat_ids)} rows"
        + (f" in {seconds:.1f}s ({ips:.0f} img/s)" if len(encode) else "")
    )
    return dg.MaterializeResult(
        metadata={
            "model_id": model_id,
            "dagster/uri": root.url(*codes_dir(name, model_id)),
            **table_metadata(codes_schema(bits), len(cat_ids)),
            "mode": mode,
            "encoded_rows": len(encode),
            "reused_rows": len(cat_ids) - len(encode),
            "dropped_rows": len(drop),
            "parts": len(parts) if mode != "up-to-date" else len(manifest["parts"]),
            "bits": bits,
            "bytes_per_image": bits // 8 + _embedding_bytes(config.embeddings, bits),
            "embeddings": config.embeddings or "none",
            "encode_seconds": seconds,
            "encode_images_per_s": ips,
            "bytes": int(root.fs.du(root.path(*codes_dir(name, model_id)))),
            "lineage": lineage(context, model_id=model_id, catalogue_fingerprint=fp),
        }
    )


def _encode_rows(
    context,
    root,
    name: str,
    model_id: str,
    bits: int,
    row_ids: np.ndarray,
    config: CodesConfig,
    compute: ComputeResource,
    extra: dict,
) -> str:
    """Encode the catalogue rows ``row_ids`` (streamed in batches) into one new part; returns its name."""
    dataset = catalogue_dataset(root, name)
    row_filter = None if len(row_ids) == dataset.count_rows() else pc.field("row_id").isin(row_ids)
    batches = dataset.to_batches(
        columns=["row_id", "image", "uri", "sha256"], filter=row_filter, batch_size=config.chunk_rows
    )
    return encode_batches(context, root, name, model_id, bits, batches, len(row_ids), config, compute, extra)


def encode_batches(
    context,
    root,
    name: str,
    model_id: str,
    bits: int,
    batches,
    expected: int,
    config: CodesConfig,
    compute: ComputeResource,
    extra: dict,
    part: str | None = None,
) -> str:
    """Encode catalogue record batches (row_id, image, uri, sha256) into one new part (named ``part`` where
    given); returns its name. The one encoding loop of every path, sharded or not."""
    from imaging.decode import decode_images
    from ml.encode import encode_images, encode_outputs
    from ml.rerank import quantise

    device = compute.torch_device()
    model, _ = load_model(root, model_id, device)
    spec = model.spec
    writer = PartWriter(root, name, model_id, bits, extra, with_image_hash=True, name=part)
    done = 0
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            images = decode_images(encoded_images(batch), spec.img_size, spec.in_chans)
            progress = sys.stderr.isatty()
            after = None
            if config.embeddings:  # codes and embeddings from one pass
                codes, u = encode_outputs(model, images, device, config.batch_size, progress)
                after = embedding_columns(*quantise(u, config.embeddings))
            else:
                codes = encode_images(model, images, device, config.batch_size, progress=progress)
            batch_ids = batch.column("row_id").to_numpy()
            writer.write(batch_ids, codes, image_hash_of(batch.column("sha256")), after)
            done += batch.num_rows
            context.log.debug(f"encoded {done}/{expected}")
        if done != expected:
            raise RuntimeError(
                f"packed_codes of {name!r}: expected to encode {expected} rows, the catalogue gave {done}"
            )
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def _embedding_bytes(dtype: str, bits: int) -> int:
    """Stored bytes per image of the embeddings: int8 one per bit plus a float32 scale, fp16 two per bit."""
    return {"": 0, "int8": bits + 4, "fp16": 2 * bits}[dtype]
