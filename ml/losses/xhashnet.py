"""X-HashNet's multi-objective loss (docs/METHODS.md, "X-HashNet's multi-objective loss": a re-creation)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ml.losses.base import HashLoss, label_classification_loss, pair_similarity, seeded_classifier
from ml.losses.pairwise import cauchy_pair_loss, likelihood_pair_loss

PAIRWISE = ("dch", "hashnet")


class XHashNetLoss(HashLoss):
    """X-HashNet (docs/METHODS.md): h = tanh(u),
    L = CE(W·h + c, y) + lam_p·L_pair(h) + lam_q·mean((|h| - 1)²) + lam_b·mean_k(mean_i h_ik)².

    L_pair is DCH's balanced Cauchy loss (``pairwise="dch"``, gamma) or HashNet's balanced likelihood
    (``"hashnet"``, alpha) over batch × batch pairs; the classifier Linear(B -> C) is a submodule (trained with
    the model). The paper publishes no loss weights: defaults are our choice [unverified]: lam_p = 1, lam_q = 0.1,
    lam_b = 0.1, pairwise = "dch", gamma = 20, alpha = 0.1, multilabel = False (CE on argmax y; True: BCE over C)."""

    name = "xhashnet"
    optimizer: ClassVar[dict] = {
        "optimizer": "adamw",
        "lr": 1e-4,
        "weight_decay": 0.05,
        "schedule": "cosine",
        "source": "not published; a DeiT-S fine-tuning recipe [unverified]",
    }

    def __init__(
        self,
        num_classes: int,
        bits: int,
        num_train: int = 0,
        seed: int = 0,
        lam_p: float = 1.0,
        lam_q: float = 0.1,
        lam_b: float = 0.1,
        pairwise: str = "dch",
        gamma: float = 20.0,
        alpha: float = 0.1,
        multilabel: bool = False,
    ):
        super().__init__(num_classes, bits, num_train, seed)
        if pairwise not in PAIRWISE:
            raise ValueError(f"xhashnet: unknown pairwise term {pairwise!r}; choose one of {list(PAIRWISE)}")
        self.lam_p, self.lam_q, self.lam_b = lam_p, lam_q, lam_b
        self.pairwise, self.gamma, self.alpha = pairwise, gamma, alpha
        self.multilabel = multilabel
        self.classifier = seeded_classifier(bits, num_classes, seed)

    def compute(self, u: Tensor, y: Tensor, index: Tensor | None) -> Tensor:
        h = torch.tanh(u)
        cls = label_classification_loss(self.classifier(h), y, self.multilabel, self.name)
        s = pair_similarity(y, y)
        if self.pairwise == "dch":
            pair = cauchy_pair_loss(h, h, s, self.gamma, self.bits)
        else:
            pair = likelihood_pair_loss(h, h, s, self.alpha)
        quant = (h.abs() - 1).pow(2).mean()
        balance = h.mean(dim=0).pow(2).mean()
        return cls + self.lam_p * pair + self.lam_q * quant + self.lam_b * balance
