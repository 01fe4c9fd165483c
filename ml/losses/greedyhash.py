"""GreedyHash (docs/METHODS.md, "GreedyHash"): sign in the forward pass, straight-through gradient, label classifier."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from ml.losses.base import HashLoss, label_classification_loss


class SignSTE(torch.autograd.Function):
    """b = where(u >= 0, 1, -1) (no 0 bits); backward passes the gradient through unchanged."""

    @staticmethod
    def forward(ctx, u: Tensor) -> Tensor:  # type: ignore[override]
        return torch.where(u >= 0, torch.ones_like(u), -torch.ones_like(u))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


def sign_ste(u: Tensor) -> Tensor:
    """Binary codes with a straight-through (identity, unclipped) backward."""
    return SignSTE.apply(u)


class GreedyHashLoss(HashLoss):
    """GreedyHash (docs/METHODS.md, "GreedyHash"): L = CE(W·b, argmax y) + alpha·mean| |u| - 1 |³, b = sign(u) straight-through,
    W a bias-free Linear(B -> C) that is a submodule, so ``loss.parameters()`` hands it to the optimiser (VTS
    left it at its random initialisation). W is initialised like nn.Linear, from ``seed``.

    Defaults: alpha = 0.1 (1 on ImageNet), multilabel = False. Single-label limitation: CE on argmax(y) keeps one
    label of a multi-hot row (warned); ``multilabel=True`` uses mean BCE-with-logits over all C labels instead."""

    name = "greedyhash"
    optimizer: ClassVar[dict] = {
        "optimizer": "sgd",
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "step",
        "step_epochs": 30,
        "step_gamma": 0.1,
        "epochs": 200,
    }

    def __init__(
        self,
        num_classes: int,
        bits: int,
        num_train: int = 0,
        seed: int = 0,
        alpha: float = 0.1,
        multilabel: bool = False,
    ):
        super().__init__(num_classes, bits, num_train, seed)
        self.alpha = alpha
        self.multilabel = multilabel
        self.classifier = nn.Linear(bits, num_classes, bias=False)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.classifier.weight, a=math.sqrt(5), generator=gen)

    def compute(self, u: Tensor, y: Tensor, index: Tensor | None) -> Tensor:
        logits = self.classifier(sign_ste(u))
        cls = label_classification_loss(logits, y, self.multilabel, self.name)
        return cls + self.alpha * (u.abs() - 1).abs().pow(3).mean()
