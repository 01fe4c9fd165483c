"""Catalogue rows -> model inputs, and the facts of a stored file: asset glue free of Dagster, so that the Pipes
training process (``assets.remote_training``) can use it too."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from storage.catalogue import labels_matrix
from storage.fs import StorageRoot
from storage.images import encoded_images


def rows_where(table: pa.Table, flag: str) -> pa.Table:
    return table.filter(table[flag])


def model_inputs(
    table: pa.Table, img_size: int, channels: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row_ids, uint8 images (n, c, s, s), bool labels (n, C)) of the rows of ``table``."""
    from imaging.decode import decode_images

    images = decode_images(encoded_images(table), img_size, channels)
    return table["row_id"].to_numpy(), images, labels_matrix(table, num_classes)


def file_facts(root: StorageRoot, *parts: str) -> dict[str, int | str]:
    """``bytes`` and ``sha256`` of one stored artifact (streamed, so large files are fine)."""
    h = hashlib.sha256()
    with root.fs.open(root.path(*parts), "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return {"bytes": int(root.fs.size(root.path(*parts))), "sha256": h.hexdigest()}
