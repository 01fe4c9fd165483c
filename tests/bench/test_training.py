"""The device training bench runs the production loop and reports what it measured."""

import math

import numpy as np
import torch

from bench.training import load_slice, run_model, upscale
from tests.conftest import needs_fashion_mnist


def test_upscale_keeps_uint8_and_resizes():
    images = np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    out = upscale(images, 56, torch.device("cpu"))
    assert out.shape == (3, 1, 56, 56) and out.dtype == np.uint8
    assert upscale(images, 28, torch.device("cpu")) is images


@needs_fashion_mnist
def test_run_model_reports_steps_throughput_and_losses():
    images, labels = load_slice("/usr/share/datasets/fashion-mnist", 2600)
    row = run_model(
        "vts-cls",
        "small",
        steps=4,
        batch=16,
        bits=16,
        device=torch.device("cpu"),
        images=images,
        labels=labels,
        lr=1e-3,
    )
    assert row["steps"] == 4 and row["img_size"] == 28 and row["device"] == "cpu"
    assert (
        row["train_images_per_s"] > 0
        and math.isfinite(row["loss_first_epoch"])
        and math.isfinite(row["loss_last_epoch"])
    )
    assert 0.0 <= row["val_map_at_100"] <= 1.0
