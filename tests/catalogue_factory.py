"""Tiny, seeded image catalogues written with Pillow: class folders and multi-label manifests."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

# Each class gets its own colour, so a one-epoch tiny model has something to learn.
PALETTE = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 210, 40), (160, 60, 200), (40, 200, 210)]


def class_image(label: int, i: int, size: int = 12, mode: str = "RGB") -> Image.Image:
    """A seeded image of class ``label`` (distinct pixels for every (label, i)), converted to ``mode``."""
    rng = np.random.default_rng([label, i])
    base = np.array(PALETTE[label % len(PALETTE)], dtype=np.int16)
    pixels = np.clip(base + rng.integers(-30, 31, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def png(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def write_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "fox"),
    per_class: int = 8,
    size: int = 12,
    start: int = 0,
) -> Path:
    """``root/<class>/<i>.png`` for ``per_class`` images per class (indices from ``start``)."""
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            class_image(label, i, size).save(root / name / f"{i:03d}.png")
    return root


def write_multilabel(
    root: Path,
    n: int = 30,
    labels: tuple[str, ...] = ("sky", "tree", "water", "road"),
    size: int = 12,
    fmt: str = "csv",
) -> Path:
    """``root/images/<i>.png`` and a manifest (``uri``, ``tags`` = '|'-joined label names) where image i
    carries label ``i % L`` and, for every other image, ``(i + 1) % L`` too."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        own = [i % len(labels)] + ([(i + 1) % len(labels)] if i % 2 else [])
        class_image(own[0], 1000 + i, size).save(root / "images" / f"{i:03d}.png")
        rows.append({"uri": f"images/{i:03d}.png", "tags": "|".join(labels[j] for j in own)})
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = root / "manifest.parquet"
        pq.write_table(
            pa.Table.from_pylist([{"uri": r["uri"], "tags": r["tags"].split("|")} for r in rows]), path
        )
        return path
    path = root / "manifest.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["uri", "tags"])
        writer.writeheader()
        writer.writerows(rows)
    return path
