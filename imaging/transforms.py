"""Seeded transformed copies of images, the queries of the instance (copy-detection) protocol.

Images are the model's uint8 arrays (c, h, w) (``imaging.decode``); a copy keeps the size and channels.
Each copy draws its parameters from ``numpy.random.default_rng((seed, index))``, so copy ``index`` of a
given seed is the same bytes whatever else is generated, and a different seed gives a different copy.

Families (``FAMILIES``; ``parse_families("easy+hard")`` mixes them, copy ``i`` taking family ``i mod n``):

* ``easy``: a shift of up to ±10 % of the side, or a crop keeping 90-100 % of each side resized back,
  then brightness ×[0.8, 1.2] and contrast ×[0.8, 1.2] about the image mean;
* ``hard``: the easy chain, then two of these drawn without replacement: rotation ±20°, scale 0.7-1.3
  (zoom about the centre), Gaussian blur (radius 0.5-1.5 px), JPEG re-encoding at quality 20-60,
  Gaussian noise (σ 5-20 grey levels), partial occlusion (a grey rectangle of 10-30 % of the area).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["FAMILIES", "HARD_OPS", "family_of", "make_copies", "parse_families", "transformed_copy"]

Op = Callable[[Image.Image, np.random.Generator], Image.Image]


def _pil(arr: np.ndarray) -> Image.Image:
    return (
        Image.fromarray(arr[0], "L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0), "RGB")
    )


def _arr(img: Image.Image) -> np.ndarray:
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _fill(img: Image.Image) -> int | tuple[int, int, int]:
    """The image's mean grey (per channel for RGB): the colour uncovered borders take."""
    mean = np.asarray(img, dtype=np.float64).reshape(-1, len(img.getbands())).mean(0).round().astype(int)
    return int(mean[0]) if img.mode == "L" else tuple(int(v) for v in mean)


def _shift_or_crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    if rng.random() < 0.5:  # shift by up to 10 % of each side, borders filled with the mean
        dx, dy = (int(round(v)) for v in rng.uniform(-0.1, 0.1, 2) * (w, h))
        return img.transform(img.size, Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy), fill=_fill(img))
    fw, fh = rng.uniform(0.9, 1.0, 2)
    cw, ch = max(1, int(round(w * fw))), max(1, int(round(h * fh)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BILINEAR)


def _brightness_contrast(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    b, c = rng.uniform(0.8, 1.2, 2)
    a = np.asarray(img, dtype=np.float32)
    out = (a - a.mean()) * c + a.mean() * b
    return Image.fromarray(np.clip(out.round(), 0, 255).astype(np.uint8), img.mode)


def _rotate(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.rotate(float(rng.uniform(-20, 20)), Image.Resampling.BILINEAR, fillcolor=_fill(img))


def _scale(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    s = float(rng.uniform(0.7, 1.3))
    w, h = img.size
    cx, cy = w / 2, h / 2  # inverse map: output (x, y) reads input ((x - cx) / s + cx, ...)
    coeffs = (1 / s, 0, cx - cx / s, 0, 1 / s, cy - cy / s)
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fill=_fill(img))


def _blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))


def _jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(20, 61)))
    with Image.open(io.BytesIO(buf.getvalue())) as out:
        return out.convert(img.mode)


def _noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    out = a + rng.normal(0.0, float(rng.uniform(5, 20)), a.shape)
    return Image.fromarray(np.clip(out.round(), 0, 255).astype(np.uint8), img.mode)


def _occlude(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    area = rng.uniform(0.1, 0.3)
    aspect = rng.uniform(0.5, 2.0)
    rw = int(np.clip(round(np.sqrt(area * w * h * aspect)), 1, w))
    rh = int(np.clip(round(area * w * h / rw), 1, h))
    x0, y0 = int(rng.integers(0, w - rw + 1)), int(rng.integers(0, h - rh + 1))
    out = img.copy()
    out.paste(128 if img.mode == "L" else (128, 128, 128), (x0, y0, x0 + rw, y0 + rh))
    return out


EASY_OPS: tuple[Op, ...] = (_shift_or_crop, _brightness_contrast)
HARD_OPS: dict[str, Op] = {
    "rotation": _rotate,
    "scale": _scale,
    "blur": _blur,
    "jpeg": _jpeg,
    "noise": _noise,
    "occlusion": _occlude,
}
HARD_DRAWS = 2  # hard ops applied to each hard copy, drawn without replacement


def _easy(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    for op in EASY_OPS:
        img = op(img, rng)
    return img


def _hard(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    img = _easy(img, rng)
    names = list(HARD_OPS)
    for i in rng.choice(len(names), HARD_DRAWS, replace=False):
        img = HARD_OPS[names[int(i)]](img, rng)
    return img


FAMILIES: dict[str, Op] = {"easy": _easy, "hard": _hard}


def parse_families(text: str) -> tuple[str, ...]:
    """``"easy+hard"`` -> ``("easy", "hard")``; ValueError naming an unknown family."""
    names = tuple(p.strip() for p in text.split("+") if p.strip())
    unknown = [n for n in names if n not in FAMILIES]
    if not names or unknown:
        raise ValueError(
            f"copy transforms {text!r}: unknown family {', '.join(unknown) or '(none given)'} "
            f"(families: {', '.join(FAMILIES)}, combined with '+')"
        )
    return names


def family_of(index: int, families: Sequence[str]) -> str:
    """The family of copy ``index`` in a mix: round robin, so each family gets an equal share."""
    return families[index % len(families)]


def transformed_copy(image: np.ndarray, family: str, seed: int, index: int) -> np.ndarray:
    """Copy ``index`` of ``image`` (uint8 (c, h, w), c in {1, 3}) under ``family``, seeded by ``(seed, index)``."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be uint8 (1 or 3, h, w), got {image.dtype} {image.shape}")
    rng = np.random.default_rng((seed, index))
    out = _arr(FAMILIES[family](_pil(image), rng))
    if out.shape != image.shape:
        raise AssertionError(f"{family} copy changed the shape {image.shape} -> {out.shape}")
    return out


def make_copies(images: np.ndarray, families: Sequence[str], seed: int) -> tuple[np.ndarray, list[str]]:
    """Copies of ``images`` (n, c, h, w): copy ``i`` of image ``i`` under ``family_of(i, families)``."""
    fams = [family_of(i, families) for i in range(len(images))]
    out = np.empty_like(images)
    for i, (img, fam) in enumerate(zip(images, fams, strict=True)):
        out[i] = transformed_copy(img, fam, seed, i)
    return out, fams
