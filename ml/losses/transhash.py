"""TransHash's Bayesian loss (docs/METHODS.md, "TransHash"): the DCH form with |S|/|S1|, |S|/|S0| weights."""

from __future__ import annotations

from typing import ClassVar

from ml.losses.pairwise import DCHLoss


class TransHashLoss(DCHLoss):
    """TransHash (docs/METHODS.md, "TransHash"): p(s_ij = 1) = gamma/(gamma + D_S), D_S = (B/2)(1 - cos(h_i, h_j)), pairs within
    the batch (the siamese streams share weights), similarity built from each batch's labels; weights |S|/|S1|
    and |S|/|S0|; Cauchy quantisation lam·log(1 + D_S(|h_i|, 1)/gamma). h is the raw model output.

    Defaults [unverified: not public]: DCH's gamma = 20, lam = 0.1 (tune gamma with B). Deviations from the paper's
    formula: (1) the sums over pairs and images are normalised (by |S| and n), as in DCH, so the loss scale and
    the pair/quantisation balance do not depend on the batch size; (2) the cosine is capped at 0.99 as in DCH,
    otherwise log(1 + gamma/D_S) is infinite for a dissimilar pair with identical codes. Numerically the loss is
    therefore DCH's; it is registered separately for its TransHash recipe (SGD, lr 3e-2, cosine, warm-up 500,
    grad-norm clip 1, no weight decay: jeonsworld/ViT-pytorch defaults, unverified against the paper)."""

    name = "transhash"
    optimizer: ClassVar[dict] = {
        "optimizer": "sgd",
        "lr": 3e-2,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "schedule": "cosine",
        "warmup_steps": 500,
        "grad_clip": 1.0,
        "batch_size": 64,
    }
