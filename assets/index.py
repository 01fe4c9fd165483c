"""``binary_index``: FAISS binary index over the database codes, published only if it verifies."""


import time

import dagster as dg
import numpy as np
from pydantic import Field

from assets.common import current_model_id
from assets.partitions import catalogues
from pipelines.resources import StorageResource
from storage.catalogue import read_catalogue
from storage.codes import read_codes
from storage.index import build_index, index_dir, publish, verify_index, write_index


class IndexConfig(dg.Config):
    model_id: str = Field(default="", description="Model whose codes to index; empty = the latest hashing_model")
    kind: str = "flat"
    probes: int = 256


def database_codes(root, name: str, model_id: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(row_ids, codes, bits) of the catalogue's database rows under ``model_id``."""
    table, _ = read_catalogue(root, name, columns=["row_id", "in_database"])
    row_ids, codes, meta = read_codes(root, name, model_id)
    db = np.isin(row_ids, table.filter(table["in_database"])["row_id"].to_numpy())
    return row_ids[db], codes[db], int(meta["bits"])


@dg.asset(
    partitions_def=catalogues,
    deps=["packed_codes"],
    group_name="vitrieve",
    kinds={"faiss"},
    code_version="binary_index-v1",
    description="FAISS binary index (ids = row_id) with manifest; CURRENT moves only after verification.",
)
def binary_index(context: dg.AssetExecutionContext, config: IndexConfig, storage: StorageResource) -> dg.MaterializeResult:
    name = context.partition_key
    root = storage.get()
    model_id = current_model_id(context, config.model_id)
    row_ids, codes, bits = database_codes(root, name, model_id)
    start = time.perf_counter()
    index = build_index(row_ids, codes, bits, config.kind)
    seconds = time.perf_counter() - start
    problems = verify_index(index, row_ids, codes, probes=config.probes)
    if problems:
        raise ValueError(f"new index for {name!r} failed verification, CURRENT left unchanged: {'; '.join(problems)}")
    manifest = write_index(root, index, name, model_id, config.kind, bits, len(row_ids), seconds)
    publish(root, manifest)
    context.log.info(f"published {config.kind} index of {manifest.ntotal} codes for {name!r} ({model_id})")
    return dg.MaterializeResult(
        metadata={
            "model_id": model_id,
            "kind": config.kind,
            "dagster/uri": root.url(*index_dir(name, model_id), manifest.file),
            "ntotal": manifest.ntotal,
            "bytes": manifest.ntotal * bits // 8,
            "sha256": manifest.sha256,
            "build_seconds": seconds,
        }
    )
