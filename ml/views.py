"""The second view of the instance term (``TrainConfig.instance``): a copy-style transform of a normalised batch.

``copy_view`` is the torch, batched counterpart of the copies protocol's transforms (``imaging.transforms``),
drawn per image from a seeded ``torch.Generator``:

* geometry, one ``affine_grid`` + ``grid_sample`` (bilinear) for the batch: a horizontal flip with
  probability 1/2, rotation ±20°, scale 0.8-1.25, shift up to ±10 % of each side; uncovered borders take the
  image's mean grey, as the copies' do;
* brightness ×[0.8, 1.2] and contrast ×[0.8, 1.2] about the image mean;
* each with probability 0.3: a 3×3 Gaussian blur, Gaussian noise (σ 5-20 grey levels), a grey occlusion of
  10-30 % of the area.

The training view (``ml.data.augment``, a 2-px shift and a flip) is far weaker; the copies' JPEG re-encoding
has no cheap tensor form and is left out. Fast on CPUs: a handful of element-wise passes over the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["copy_view"]

ROTATION_DEG = 20.0
SCALE = (0.8, 1.25)
SHIFT = 0.1  # of each side
BRIGHTNESS = CONTRAST = (0.8, 1.2)
EXTRA_P = 0.3  # probability of each of blur, noise and occlusion
NOISE_GREY = (5.0, 20.0)  # sigma in grey levels (of 255)
OCCLUSION_AREA = (0.1, 0.3)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _geometry(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n, c, h, w = x.shape
    angle = _uniform(n, -ROTATION_DEG, ROTATION_DEG, gen) * (math.pi / 180)
    # log-uniform zoom: an output pixel at p reads the input at p / scale (about the centre)
    scale = torch.exp(_uniform(n, math.log(SCALE[0]), math.log(SCALE[1]), gen))
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    shift = _uniform(2 * n, -2 * SHIFT, 2 * SHIFT, gen).view(n, 2)  # normalised coordinates span 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, shift[:, 0]], 1),
            torch.stack([sin * flip, cos, shift[:, 1]], 1),
        ],
        1,
    ).to(x.device, x.dtype)
    grid = F.affine_grid(theta, [n, c + 1, h, w], align_corners=False)
    # one pass samples the image and a coverage mask; uncovered pixels take the image mean
    ones = torch.ones(n, 1, h, w, device=x.device, dtype=x.dtype)
    out = F.grid_sample(
        torch.cat([x, ones], 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    img, cover = out[:, :c], out[:, c:]
    mean = x.mean(dim=(2, 3), keepdim=True)
    return img + (1 - cover) * mean


def _photometric(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    b = _uniform(n, *BRIGHTNESS, gen).view(n, 1, 1, 1).to(x.device, x.dtype)
    k = _uniform(n, *CONTRAST, gen).view(n, 1, 1, 1).to(x.device, x.dtype)
    a = (x + 1) / 2  # [0, 1]
    m = a.mean(dim=(1, 2, 3), keepdim=True)
    return ((a - m) * k + m * b).clamp(0, 1) * 2 - 1


def _extras(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n, c, h, w = x.shape
    pick = (torch.rand(n, 3, generator=gen) < EXTRA_P).to(x.device)
    kernel = torch.tensor([1.0, 2.0, 1.0], device=x.device, dtype=x.dtype)
    kernel = (kernel[:, None] * kernel[None, :] / 16).expand(c, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)
    x = torch.where(pick[:, 0].view(n, 1, 1, 1), blurred, x)
    sigma = _uniform(n, *NOISE_GREY, gen).view(n, 1, 1, 1) * (2 / 255)
    noise = torch.randn(n, c, h, w, generator=gen) * sigma
    x = torch.where(pick[:, 1].view(n, 1, 1, 1), (x + noise.to(x.device, x.dtype)).clamp(-1, 1), x)
    area = _uniform(n, *OCCLUSION_AREA, gen) * h * w
    aspect = torch.exp(_uniform(n, math.log(0.5), math.log(2.0), gen))
    rw = (area * aspect).sqrt().round().clamp(1, w)
    rh = (area / rw).round().clamp(1, h)
    x0 = (torch.rand(n, generator=gen) * (w - rw + 1)).floor()
    y0 = (torch.rand(n, generator=gen) * (h - rh + 1)).floor()
    cols, rows = torch.arange(w).view(1, 1, w), torch.arange(h).view(1, h, 1)
    inside = (
        (cols >= x0.view(n, 1, 1))
        & (cols < (x0 + rw).view(n, 1, 1))
        & (rows >= y0.view(n, 1, 1))
        & (rows < (y0 + rh).view(n, 1, 1))
    )
    occlude = (inside & pick[:, 2].cpu().view(n, 1, 1)).unsqueeze(1).to(x.device)
    return torch.where(occlude, torch.zeros((), device=x.device, dtype=x.dtype), x)  # grey 128 is ~0


def copy_view(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A copy-style view (see the module doc) of a normalised float batch (n, c, h, w) in [-1, 1]; same shape,
    values in [-1, 1]. Every draw comes from ``generator`` (a CPU generator), so a seed gives the same views."""
    if batch.ndim != 4 or not batch.is_floating_point():
        raise ValueError(
            f"copy_view needs a float batch (n, c, h, w), got {batch.dtype} {tuple(batch.shape)}"
        )
    if len(batch) == 0:
        return batch.clone()
    x = _geometry(batch, generator)
    x = _photometric(x, generator)
    return _extras(x, generator)
