"""Model construction and the CSQ loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.losses import CSQLoss, hash_centres
from ml.models import ModelSpec, build_model


@pytest.mark.parametrize("model", ["vts", "vts-cls"])
@pytest.mark.parametrize("bits", [16, 48])
def test_model_emits_bits(model, bits):
    torch.manual_seed(0)
    net = build_model(ModelSpec(model=model, bits=bits, overrides={"depth": 1}))
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, bits)


def test_bad_bits_and_model_are_rejected():
    with pytest.raises(ValueError, match="multiple of 8"):
        build_model(ModelSpec(bits=12))
    with pytest.raises(ValueError, match="unknown model"):
        build_model(ModelSpec(model="resnet"))
    with pytest.raises(ValueError, match="unknown preset"):
        build_model(ModelSpec(preset="huge"))


@pytest.mark.parametrize("bits,classes", [(16, 10), (32, 10), (48, 10), (64, 100)])
def test_centres_far_apart(bits, classes):
    c = hash_centres(classes, bits, seed=0)
    assert c.shape == (classes, bits) and set(np.unique(c)) == {-1.0, 1.0}
    dist = (bits - c @ c.T) / 2
    np.fill_diagonal(dist, bits)
    assert dist.min() >= bits / 4


def test_csq_loss_decreases_towards_centre():
    loss = CSQLoss(num_classes=3, bits=16)
    y = torch.eye(3)[[0, 1, 2]]
    target = loss.targets(y)
    near = loss(3 * target, y)
    far = loss(-3 * target, y)
    assert near < far and torch.isfinite(near)


def test_csq_multilabel_target_is_a_sign_of_summed_centres():
    loss = CSQLoss(num_classes=3, bits=16, seed=1)
    y = torch.tensor([[1.0, 1.0, 0.0]])
    v = loss.centres[0] + loss.centres[1]
    t = loss.targets(y)[0]
    assert torch.equal(t[v > 0], torch.ones_like(t[v > 0]))
    assert torch.equal(t[v < 0], -torch.ones_like(t[v < 0]))
    assert torch.equal(t[v == 0], loss.tie_bits[v == 0])


def test_training_few_steps_lowers_loss_on_separable_data():
    from ml.train import TrainConfig, TrainData, train_hashing_model

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
