"""Models and losses trained together on tiny separable sets: every model x loss pair fine-tunes (finite,
decreasing loss, B-bit codes), and what training from random weights needs."""

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


PAIRS = [(m, loss) for m in sorted(TINY) for loss in sorted(LOSSES)]


def tiny_spec(model: str, pretrained: str = "") -> ModelSpec:
    return ModelSpec(
        model=model,
        bits=16,
        num_classes=3,
        overrides=TINY[model],
        head_hidden=64,
        head_dropout=0.0,
        pretrained=pretrained,
    )


@pytest.fixture(scope="module")
def backbones(data, tmp_path_factory) -> dict[str, str]:
    """Per model, backbone weights pre-trained on the tiny set (CSQ, 8 epochs), saved as a timm-style state dict.

    Every pair fine-tunes from them, as the papers fine-tune an ImageNet backbone: from random weights the
    cls-token and hash-layer outputs hardly depend on the image, and the pairwise losses, whose gradients are
    differences of codes, cannot leave that collapsed start (DSH sits at its margin value ~10.7 for good). From
    scratch, train with the auxiliary classifier (``TrainConfig.classifier``), as the profiles do."""
    torch.set_num_threads(2)  # other tests change the thread count; float reductions depend on it
    out = tmp_path_factory.mktemp("backbones")
    paths = {}
    for model in sorted(TINY):
        torch.manual_seed(0)
        cfg = TrainConfig(loss="csq", epochs=8, batch_size=16, lr=1e-3, warmup_steps=1, augment=False)
        res = train_hashing_model(tiny_spec(model), cfg, data, torch.device("cpu"), log=lambda _: None)
        paths[model] = str(out / f"{model}.pth")
        torch.save(res.model.backbone.state_dict(), paths[model])
    return paths


@pytest.mark.parametrize("model,loss", PAIRS)
def test_pair_trains(model, loss, data, backbones):
    torch.set_num_threads(2)  # other tests change the thread count; float reductions depend on it
    torch.manual_seed(0)
    cfg = TrainConfig(loss=loss, epochs=6, batch_size=32, lr=3e-4, warmup_steps=1, augment=False)
    res = train_hashing_model(
        tiny_spec(model, backbones[model]), cfg, data, torch.device("cpu"), log=lambda _: None
    )
    losses = [r["loss"] for r in res.history]
    assert all(np.isfinite(losses)), losses
    # Memory-bank losses see more pairs as the bank fills during epoch 1: compare from epoch 2 on.
    start = 1 if LOSSES[loss].uses_memory_bank else 0
    assert losses[-1] < losses[start], losses
    codes = encode_images(res.model, data.val_db_images, torch.device("cpu"))
    assert codes.shape == (len(data.val_db_images), 2) and codes.dtype == np.uint8  # exactly 16 bits


def test_from_scratch_a_pairwise_loss_needs_the_auxiliary_classifier(data):
    """VTS-cls + DSH from random weights stays on one code; the classifier term gets it learning."""
    torch.set_num_threads(2)
    val = []
    for classifier in (0.0, 1.0):
        torch.manual_seed(0)
        cfg = TrainConfig(
            loss="dsh", epochs=6, batch_size=32, lr=1e-3, warmup_steps=1, augment=False, classifier=classifier
        )
        res = train_hashing_model(tiny_spec("vts-cls"), cfg, data, torch.device("cpu"), log=lambda _: None)
        val.append(res.best_val_map)
    assert val[0] < 0.8 and val[1] == pytest.approx(1.0), val


def test_training_few_steps_lowers_loss_on_separable_data():
    rng = np.random.default_rng(0)
    y = np.arange(96) % 3
    x = (rng.integers(0, 40, (96, 1, 28, 28)) + (y * 100)[:, None, None, None]).astype(np.uint8)
    lab = np.eye(3, dtype=bool)[y]
    data = TrainData(x, lab, x[:12], lab[:12], x[12:], lab[12:])
    spec = ModelSpec(bits=16, num_classes=3, overrides={"depth": 1, "embed_dim": 32, "num_heads": 2})
    cfg = TrainConfig(epochs=3, batch_size=32, lr=3e-3, warmup_steps=1, augment=False)
    res = train_hashing_model(spec, cfg, data, torch.device("cpu"), log=lambda _: None)
    losses = [r["loss"] for r in res.history]
    assert losses[-1] < losses[0]
    assert res.best_val_map > 0.6
