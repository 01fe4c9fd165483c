"""``packed_codes``: every catalogue image (queries included) -> packed binary code, in Parquet."""


import sys
import time

import dagster as dg
import numpy as np
from pydantic import Field

from assets.common import current_model_id, load_model, model_inputs
from assets.partitions import catalogues
from pipelines.resources import ComputeResource, StorageResource
from storage.catalogue import fingerprint, read_catalogue
from storage.codes import codes_parts, read_codes, write_codes


class CodesConfig(dg.Config):
    model_id: str = Field(default="", description="Model to encode with; empty = the catalogue's latest hashing_model")
    batch_size: int = 256
    chunk_rows: int = 8192


@dg.asset(
    partitions_def=catalogues,
    deps=["hashing_model"],
    group_name="vitrieve",
    kinds={"parquet"},
    code_version="packed_codes-v1",
    description="Packed codes of every catalogue image (row_id, code) for the current model.",
)
def packed_codes(
    context: dg.AssetExecutionContext, config: CodesConfig, storage: StorageResource, compute: ComputeResource
) -> dg.MaterializeResult:
    from ml.encode import encode_images

    name = context.partition_key
    root = storage.get()
    model_id = current_model_id(context, config.model_id)
    table, _ = read_catalogue(root, name)
    fp = fingerprint(table)
    device = compute.torch_device()
    model, card = load_model(root, model_id, device)
    bits = card["bits"]
    existing = _existing_codes(root, name, model_id)
    if existing is not None and existing.get("catalogue_fingerprint") == fp:
        context.log.info(f"codes of {name!r} under {model_id} are up to date; no inference needed")
        rows = table.num_rows
        seconds, ips = 0.0, 0.0
    else:
        spec = model.spec
        start = time.perf_counter()
        parts = []
        for offset in range(0, table.num_rows, config.chunk_rows):  # bounded memory: decode a chunk at a time
            chunk = table.slice(offset, config.chunk_rows)
            _, images, _ = model_inputs(chunk, spec.img_size, spec.in_chans, len(card["label_names"]))
            parts.append(encode_images(model, images, device, config.batch_size, progress=sys.stderr.isatty()))
            context.log.debug(f"encoded {offset + chunk.num_rows}/{table.num_rows}")
        codes = np.concatenate(parts)
        seconds = time.perf_counter() - start
        ips = table.num_rows / seconds
        write_codes(root, name, model_id, table["row_id"].to_numpy(), codes, bits, extra={"catalogue_fingerprint": fp})
        rows = len(codes)
        context.log.info(f"encoded {rows} images in {seconds:.1f}s ({ips:.0f} img/s)")
    return dg.MaterializeResult(
        metadata={
            "model_id": model_id,
            "dagster/uri": root.url(*codes_parts(name, model_id)),
            "dagster/row_count": rows,
            "bits": bits,
            "bytes_per_image": bits // 8,
            "encode_seconds": seconds,
            "encode_images_per_s": ips,
        }
    )


def _existing_codes(root, name: str, model_id: str) -> dict | None:
    try:
        return read_codes(root, name, model_id)[2]
    except FileNotFoundError:
        return None
