"""Model tensors: normalisation, augmentation and batching of uint8 image arrays (decoded by ``imaging``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F


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
