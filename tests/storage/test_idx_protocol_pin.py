"""The Fashion-MNIST catalogue's rows and roles, pinned: the IDX protocol (test images = queries, a seeded
5,000-image validation slice) must not move when the protocols of other sources change."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

import storage.ingest_idx as ingest_idx
from storage.ingest_idx import FASHION_MNIST_DIR, IDX_VALIDATION_SIZE, idx_catalogue
from tests.conftest import needs_fashion_mnist

COLUMNS = (
    "row_id",
    "image_id",
    "labels",
    "split",
    "in_train",
    "in_validation",
    "in_query",
    "in_database",
    "sha256",
)
# sha256 of COLUMNS of idx_catalogue("fashion-mnist") with its defaults, as `make run` ingests it; the same
# digest comes from the code before fraction protocols (commit 2f8417c).
PINNED = "4ca145a584916944c516afac4395cfd98c2a6397d0372f46a73dce5bbea69222"


def split_digest(table: pa.Table) -> str:
    h = hashlib.sha256()
    for name in COLUMNS:
        col = table[name].combine_chunks()
        if pa.types.is_list(col.type):
            h.update(np.diff(col.offsets.to_numpy()).astype("<i8").tobytes())
            col = col.flatten()
        if pa.types.is_string(col.type):
            h.update("\n".join(col.to_pylist()).encode())
        elif pa.types.is_fixed_size_binary(col.type) or pa.types.is_binary(col.type):
            h.update(b"".join(col.to_pylist()))
        else:
            h.update(col.to_numpy(zero_copy_only=False).astype("<i8").tobytes())
        h.update(name.encode())
    return h.hexdigest()


@needs_fashion_mnist
def test_fashion_mnist_rows_and_roles_are_pinned(monkeypatch):
    monkeypatch.setattr(ingest_idx, "png_bytes", lambda pixels: b"")  # the roles do not depend on the PNGs
    table, info = idx_catalogue("fashion-mnist", FASHION_MNIST_DIR)
    assert IDX_VALIDATION_SIZE == 5000 and info.protocol["validation_size"] == 5000
    assert (
        table.num_rows == 70_000
        and int(np.sum(table["in_validation"].to_numpy(zero_copy_only=False))) == 5000
    )
    assert split_digest(table) == PINNED
