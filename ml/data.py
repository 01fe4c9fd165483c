"""Image decoding and batching: the one place where stored images become model tensors."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

# Pillow refuses images above this many pixels (decompression-bomb guard, errors instead of warnings).
Image.MAX_IMAGE_PIXELS = 64_000_000


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


def decode_images(blobs: Sequence[bytes], size: int, channels: int) -> np.ndarray:
    """Decode encoded images (PNG, JPEG, ...) into a uint8 array (n, channels, size, size)."""
    out = np.empty((len(blobs), channels, size, size), dtype=np.uint8)
    for i, blob in enumerate(blobs):
        with Image.open(io.BytesIO(blob)) as img:
            out[i] = to_model_array(img, size, channels)
    return out


def normalise(batch: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1]."""
    return batch.float().div_(127.5).sub_(1.0)


def augment(
    batch: torch.Tensor, generator: torch.Generator, shift: int = 2, flip: bool = True
) -> torch.Tensor:
    """Light training augmentation on a float batch: random translation by up to ``shift`` px with
    reflected borders, and horizontal flip. Seeded through ``generator``."""
    n, _, h, w = batch.shape
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    if flip:
        theta[:, 0, 0] = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    if shift:
        offsets = torch.randint(-shift, shift + 1, (n, 2), generator=generator).float()
        theta[:, 0, 2] = offsets[:, 0] * 2 / w
        theta[:, 1, 2] = offsets[:, 1] * 2 / h
    grid = F.affine_grid(theta.to(batch.device), list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="nearest", padding_mode="reflection", align_corners=False)


def random_eraser(probability: float, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """timm's ``RandomErasing`` (per-pixel normal noise, 2-33% of the area) on a normalised batch, in place;
    ``None`` when ``probability`` is 0. Its draws come from Python's ``random`` (seeded by the training loop)."""
    if not probability:
        return None
    if not 0 < probability <= 1:
        raise ValueError(f"erase probability must lie in [0, 1], got {probability}")
    from ml.timm_compat import import_timm

    return import_timm().data.random_erasing.RandomErasing(probability, mode="pixel", device=str(device))


def iterate_batches(
    n: int, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Index batches over ``range(n)``: shuffled with ``generator`` if given, else in order."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
