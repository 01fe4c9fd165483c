"""An auxiliary label classifier on the relaxed codes, added to any hashing loss (``TrainConfig.classifier``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.losses.base import seeded_classifier


class AuxiliaryClassifier(nn.Module):
    """``weight`` · CE(Linear(tanh(u)), y) with label smoothing (single-label) or BCE over all labels (multi-label
    rows). A training-only head, as X-HashNet's and GreedyHash's classifiers: it shapes the codes so that classes
    are linearly separable in Hamming space and is dropped after training (codes stay ``u >= 0``)."""

    def __init__(
        self, bits: int, num_classes: int, weight: float, label_smoothing: float = 0.0, seed: int = 0
    ):
        super().__init__()
        if weight < 0 or not 0 <= label_smoothing < 1:
            raise ValueError(
                f"classifier weight must be >= 0 and label_smoothing in [0, 1), got {weight}, {label_smoothing}"
            )
        self.weight, self.label_smoothing = weight, label_smoothing
        self.linear = seeded_classifier(bits, num_classes, seed)

    def forward(self, u: Tensor, y: Tensor) -> Tensor:
        logits = self.linear(torch.tanh(u.float()))
        if bool((y.sum(dim=1) > 1).any()):
            return self.weight * F.binary_cross_entropy_with_logits(logits, y.float())
        return self.weight * F.cross_entropy(logits, y.argmax(dim=1), label_smoothing=self.label_smoothing)
