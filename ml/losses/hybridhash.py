"""HybridHash's "Weighted Maximum Likelihood" loss (docs/METHODS.md, "HybridHash's WML"): memory-bank HashNet likelihood."""

from __future__ import annotations

from typing import ClassVar

from ml.losses.pairwise import HashNetLoss


class HybridHashLoss(HashNetLoss):
    """WML (docs/METHODS.md; the released code's ``HashNetLoss`` in its ``utils`` package): h = tanh(u), s_ij = 1[<y_i, Y_j> > 0],
    z = alpha·<h_i, H_j> over batch × memory bank, L = sum(w·(softplus(z) - s·z))/S, w = S/S1 and S/S0 counted
    over the pairs used. No continuation (beta = 1) and no quantisation term.

    Defaults: alpha = 0.5. Deviations: HybridHash's network ends in tanh, ours outputs raw u, so the loss applies
    tanh; the bank is fp32 (not fp16), sized to the real ``num_train`` (not a per-dataset constant) and pairs with
    never-filled rows are excluded (they acted as dissimilar pairs with z = 0 in the reference)."""

    name = "hybridhash"
    uses_memory_bank = True
    optimizer: ClassVar[dict] = {
        "optimizer": "rmsprop",
        "lr": 2.5e-5,
        "weight_decay": 1e-5,
        "amp": True,
        "batch_size": 64,
        "epochs": 12,
    }

    def __init__(self, num_classes: int, bits: int, num_train: int, seed: int = 0, alpha: float = 0.5):
        super().__init__(num_classes, bits, num_train, seed, alpha=alpha, step=None, memory_bank=True)
