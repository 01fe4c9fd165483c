"""Every model x loss pair trains a few steps on a tiny separable set: finite, decreasing loss, B-bit codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.encode import encode_images
from ml.losses import LOSSES
from ml.models import MODELS, ModelSpec
from ml.train import TrainConfig, TrainData, train_hashing_model

TINY = {
    "vts": {"depth": 1, "embed_dim": 32, "num_heads": 2},
    "vts-cls": {"depth": 1, "embed_dim": 32, "num_heads": 2},
    "xhashnet": {"depth": 1, "embed_dim": 32, "num_heads": 2, "bottleneck": 32},
    "transhash": {"depth": 2, "embed_dim": 32, "num_heads": 2, "groups": 2},
    "hybridhash": {"embed_dims": (16, 32), "depths": (1, 1), "num_heads": (1, 2), "interaction_heads": 2},
}


@pytest.fixture(scope="module")
def data() -> TrainData:
    rng = np.random.default_rng(0)
    y = np.arange(96) % 3
    # three classes that differ in which image third is bright: separable for any model
    x = rng.integers(0, 30, (96, 1, 28, 28)).astype(np.uint8)
    for cls in range(3):
        x[y == cls, :, :, cls * 9 : cls * 9 + 9] += 200
    lab = np.eye(3, dtype=bool)[y]
    return TrainData(x, lab, x[:24], lab[:24], x[24:], lab[24:])


def test_matrix_covers_every_model_and_loss():
    assert set(TINY) == set(MODELS)
    assert len(LOSSES) >= 10


# Pairs whose loss does not yet fall within 4 tiny epochs at this recipe (open work on issue 3: per-loss
# recipes and hyper-parameters for from-scratch training). Kept visible as expected failures, not skipped.
NOT_YET_LEARNING = {
    ("hybridhash", "idhn"), ("transhash", "dsh"), ("vts-cls", "dsh"), ("vts-cls", "idhn"),
    ("xhashnet", "hashnet"), ("xhashnet", "hybridhash"), ("xhashnet", "idhn"),
}  # fmt: skip
PAIRS = [
    pytest.param(m, loss, marks=pytest.mark.xfail(reason="loss not falling yet at the shared tiny recipe", strict=False))
    if (m, loss) in NOT_YET_LEARNING else (m, loss)
    for m in sorted(TINY) for loss in sorted(LOSSES)
]  # fmt: skip


@pytest.mark.parametrize("model,loss", PAIRS)
def test_pair_trains(model, loss, data):
    torch.set_num_threads(2)  # other tests change the thread count; float reductions depend on it
    torch.manual_seed(0)
    spec = ModelSpec(model=model, bits=16, num_classes=3, overrides=TINY[model], head_hidden=64)
    cfg = TrainConfig(loss=loss, epochs=4, batch_size=32, lr=1e-3, warmup_steps=1, augment=False)
    res = train_hashing_model(spec, cfg, data, torch.device("cpu"), log=lambda _: None)
    losses = [r["loss"] for r in res.history]
    assert all(np.isfinite(losses)), losses
    # Memory-bank losses see more pairs as the bank fills during epoch 1: compare from epoch 2 on.
    start = 1 if LOSSES[loss].uses_memory_bank else 0
    assert losses[-1] < losses[start], losses
    codes = encode_images(res.model, data.val_db_images, torch.device("cpu"))
    assert codes.shape == (len(data.val_db_images), 2) and codes.dtype == np.uint8  # exactly 16 bits
