"""Stored images -> uint8 model arrays: the one conversion that ingest checks and the model reads."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps

# Modes without colour: a catalogue of such images only needs a 1-channel model (see model_channels).
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def model_channels(mode: str) -> int:
    """Channels an image of PIL ``mode`` needs in the model: 1 for grey modes, else 3 (alpha is dropped)."""
    return 1 if mode in GREY_MODES else 3


def to_model_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """Convert one PIL image to uint8 (channels, size, size): EXIF orientation applied, any mode
    (grey, RGB, RGBA, palette, 16-bit) converted to L or RGB (transparent pixels composited on white,
    16-bit scaled by the image's maximum), resized with bilinear filtering. Ingest runs every accepted image
    through this function too, so an image that ingests is an image the model can read."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((arr / max(arr.max(), 1.0) * 255.0).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


# Images per task of the decoding thread pool: Pillow releases the GIL while it decodes and resizes, so large
# images decode on every core. Small ones (28 px icons and digits, a few hundred bytes) decode faster on the
# calling thread than the pool hands them out: threads only from this mean encoded size on.
DECODE_CHUNK = 128
THREADED_MEAN_BYTES = 4096


def decode_images(blobs: Sequence[bytes], size: int, channels: int, threads: int | None = None) -> np.ndarray:
    """Decode encoded images (PNG, JPEG, ...) into a uint8 array (n, channels, size, size), on ``threads``
    threads when there is more than one chunk of them (default: one per CPU core the process may use for
    images of ``THREADED_MEAN_BYTES`` or more on average, else one)."""
    out = np.empty((len(blobs), channels, size, size), dtype=np.uint8)

    def decode(start: int) -> None:
        for i in range(start, min(start + DECODE_CHUNK, len(blobs))):
            with Image.open(io.BytesIO(blobs[i])) as img:
                out[i] = to_model_array(img, size, channels)

    starts = range(0, len(blobs), DECODE_CHUNK)
    if threads is None:
        large = sum(map(len, blobs)) >= THREADED_MEAN_BYTES * len(blobs)
        threads = len(os.sched_getaffinity(0)) if large else 1
    workers = min(len(starts), threads)
    if workers <= 1:
        for start in starts:
            decode(start)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(decode, starts))
    return out
