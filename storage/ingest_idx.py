"""Build a catalogue table from an IDX source (Fashion-MNIST layout: train-* and t10k-* files)."""

from __future__ import annotations

import hashlib
import io
import os
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from PIL import Image

from storage.catalogue import CatalogueInfo
from storage.idx import read_idx

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IDX_VALIDATION_SIZE = 5000  # training images held out for model selection (the Fashion-MNIST protocol)
FASHION_MNIST_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _find(source_dir: str, stem: str) -> str:
    for name in (f"{stem}.gz", stem):
        path = os.path.join(source_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        f"IDX file {stem}[.gz] not found in {source_dir!r}"
        + (" (install Debian's dataset-fashion-mnist package)" if source_dir == FASHION_MNIST_DIR else "")
    )


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _subset(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=limit, replace=False))


def idx_catalogue(
    name: str,
    source_dir: str = FASHION_MNIST_DIR,
    validation_size: int = IDX_VALIDATION_SIZE,
    seed: int = 0,
    train_limit: int | None = None,
    query_limit: int | None = None,
    label_names: list[str] | None = None,
) -> tuple[pa.Table, CatalogueInfo]:
    """Fashion-MNIST protocol: queries = the test images, database = all training images, training =
    the training images minus a seeded validation slice (database only; used for model selection).

    ``train_limit``/``query_limit`` take seeded random subsets (for tests and quick looks). row_ids:
    training image i -> i; test image j -> 60,000 + j (stable, whatever the limits)."""
    rng = np.random.default_rng(seed)
    parts = []
    for split, prefix, limit in (("train", "train", train_limit), ("test", "t10k", query_limit)):
        images = read_idx(_find(source_dir, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(source_dir, f"{prefix}-labels-idx1-ubyte"))
        if len(images) != len(labels):
            raise ValueError(f"{source_dir}: {prefix} has {len(images)} images but {len(labels)} labels")
        if images.ndim != 3:
            raise ValueError(f"{source_dir}: {prefix} images must be (n, h, w), got shape {images.shape}")
        parts.append((split, images, labels, _subset(len(images), limit, rng)))
    n_train_total = len(parts[0][1])
    train_pick = parts[0][3]
    if validation_size >= len(train_pick):
        raise ValueError(
            f"validation_size {validation_size} leaves no training images out of {len(train_pick)}"
        )
    val_rows = set(rng.choice(train_pick, size=validation_size, replace=False).tolist())
    now = datetime.now(UTC)
    cols: dict[str, list] = {
        k: []
        for k in (
            "row_id",
            "image_id",
            "image",
            "labels",
            "split",
            "in_train",
            "in_validation",
            "in_query",
            "in_database",
            "sha256",
            "width",
            "height",
        )
    }
    for split, images, labels, pick in parts:
        for i in pick.tolist():
            is_query = split == "test"
            is_val = not is_query and i in val_rows
            blob = png_bytes(images[i])
            cols["row_id"].append(i if not is_query else n_train_total + i)
            cols["image_id"].append(f"{split}-{i:05d}")
            cols["image"].append(blob)
            cols["labels"].append([int(labels[i])])
            cols["split"].append("query" if is_query else ("database" if is_val else "train"))
            cols["in_train"].append(not is_query and not is_val)
            cols["in_validation"].append(is_val)
            cols["in_query"].append(is_query)
            cols["in_database"].append(not is_query)
            cols["sha256"].append(hashlib.sha256(images[i].tobytes()).digest())
            cols["height"].append(images.shape[1])
            cols["width"].append(images.shape[2])
    n = len(cols["row_id"])
    table = pa.table(
        {
            **cols,
            "uri": pa.nulls(n, pa.string()),
            "channels": [1] * n,
            "ingested_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        }
    )
    names = label_names or (FASHION_MNIST_LABELS if source_dir == FASHION_MNIST_DIR else None)
    n_classes = int(max(int(parts[0][2].max()), int(parts[1][2].max())) + 1)
    info = CatalogueInfo(
        name=name,
        label_names=names or [str(i) for i in range(n_classes)],
        protocol=dict(
            kind="idx-train-test",
            queries="test images",
            database="all training images",
            train="training images minus the validation slice",
            validation_size=validation_size,
            seed=seed,
            train_limit=train_limit,
            query_limit=query_limit,
        ),
        source=os.path.abspath(source_dir),
    )
    return table, info
