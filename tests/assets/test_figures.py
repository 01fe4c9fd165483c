"""Materialisation figures decode at their stated size; attention rollout matches timm's own attention."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from assets.plots import DPI, attention_png, bit_balance_png, pr_curve_png, retrieval_grid_png


def _size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as img:
        img.load()  # decodes fully
        assert img.format == "PNG"
        return img.size


def _close(size: tuple[int, int], inches: tuple[float, float]) -> bool:
    return all(abs(px - inch * DPI) <= 1 for px, inch in zip(size, inches, strict=True))


def test_plots_decode_at_their_size():
    rng = np.random.default_rng(0)
    assert _close(_size(pr_curve_png([1.0, 0.8, 0.6], [0.1, 0.5, 1.0], "t")), (4, 3))
    assert _close(_size(bit_balance_png(rng.random(64), "64 bits")), (6, 2.6))
    nq, k = 3, 8
    images = rng.integers(0, 255, (nq, 1, 28, 28), dtype=np.uint8)
    results = rng.integers(0, 255, (nq, k, 1, 28, 28), dtype=np.uint8)
    relevant = rng.random((nq, k)) > 0.5
    grid = retrieval_grid_png(
        images, ["Shirt"] * nq, results, [["Bag"] * k] * nq, rng.integers(0, 9, (nq, k)), relevant
    )
    assert _close(_size(grid), (1.0 * (k + 1), 1.15 * nq))
    att = attention_png(images, rng.random((nq, 7, 7)), ["a", "b", "c"])
    assert _close(_size(att), (1.3 * nq, 2.8))


def test_wrong_results_are_marked_red():
    images = np.full((1, 1, 28, 28), 255, np.uint8)
    results = np.full((1, 8, 1, 28, 28), 255, np.uint8)
    all_right = retrieval_grid_png(
        images, ["x"], results, [["x"] * 8], np.zeros((1, 8)), np.ones((1, 8), bool)
    )
    all_wrong = retrieval_grid_png(
        images, ["x"], results, [["y"] * 8], np.zeros((1, 8)), np.zeros((1, 8), bool)
    )

    def red_pixels(png: bytes) -> int:
        rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        return int(((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum())

    assert red_pixels(all_right) == 0 < red_pixels(all_wrong)


def test_attention_rollout_matches_timm_attention():
    torch = pytest.importorskip("torch")
    from ml.attention import _attention, attention_rollout, vit_of
    from ml.models import ModelSpec, build_model

    torch.manual_seed(0)
    model = build_model(
        ModelSpec(model="vts-cls", bits=16, overrides={"depth": 2, "embed_dim": 24, "num_heads": 2})
    )
    images = np.random.default_rng(0).integers(0, 255, (3, 1, 28, 28), dtype=np.uint8)
    maps = attention_rollout(model, images)
    assert maps.shape == (3, 7, 7) and np.isfinite(maps).all()
    assert maps.min() == pytest.approx(0) and maps.max() == pytest.approx(1)

    # timm's unfused path materialises the probabilities (input of attn_drop): ours must agree with them
    vit = vit_of(model)
    seen, ours = [], []
    for block in vit.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda _m, args, _out: seen.append(args[0].mean(dim=1)))
        block.attn.register_forward_pre_hook(lambda m, args: ours.append(_attention(m, args[0])))
    model.eval()
    with torch.no_grad():
        from ml.data import normalise

        model(normalise(torch.from_numpy(images)))
    for a, b in zip(seen, ours, strict=True):
        torch.testing.assert_close(a, b)
    assert attention_rollout(torch.nn.Linear(4, 4), images) is None
