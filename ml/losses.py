"""Hashing losses. Each maps (real-valued outputs u, multi-hot labels y) to a scalar loss."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import hadamard
from torch import nn


def hash_centres(num_classes: int, bits: int, seed: int = 0, tries: int = 200) -> np.ndarray:
    """CSQ hash centres in {-1, +1}: rows of [H; -H] (Hadamard) when ``bits`` is a power of two and
    2·bits >= classes, otherwise (e.g. 48 bits) seeded random balanced codes, redrawn until every pair
    is at least bits/4 apart (CSQ Algorithm 1's acceptance rule)."""
    rng = np.random.default_rng(seed)
    is_pow2 = bits & (bits - 1) == 0
    rows = np.concatenate([hadamard(bits), -hadamard(bits)]) if is_pow2 else np.zeros((0, bits))
    centres = rows[:num_classes].astype(np.float32)
    need = num_classes - len(centres)
    for _ in range(tries if need else 0):
        extra = np.ones((need, bits), np.float32)
        for row in extra:
            row[rng.choice(bits, bits // 2, replace=False)] = -1
        cand = np.concatenate([centres, extra])
        dist = (bits - cand @ cand.T) / 2
        np.fill_diagonal(dist, bits)
        if dist.min() >= bits / 4:
            return cand
    if need:
        raise ValueError(f"could not draw {num_classes} hash centres {bits / 4:g} bits apart at {bits} bits")
    return centres


class CSQLoss(nn.Module):
    """Central Similarity Quantization (METHODS.md A.5): BCE to the label's hash centre + λ·(|h|-1)².

    Multi-label targets: sum of the label centres, ties broken by a fixed random bit, then sign."""

    def __init__(self, num_classes: int, bits: int, lam: float = 1e-4, seed: int = 0):
        super().__init__()
        self.lam = lam
        self.register_buffer("centres", torch.from_numpy(hash_centres(num_classes, bits, seed)))
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("tie_bits", torch.randint(0, 2, (bits,), generator=gen).float() * 2 - 1)

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        v = y.float() @ self.centres
        return torch.where(v == 0, self.tie_bits.expand_as(v), torch.sign(v))

    def forward(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(u.float())
        target = (self.targets(y) + 1) / 2
        centre = F.binary_cross_entropy((h + 1).clamp(1e-6, 2 - 1e-6) / 2, target)
        quant = (h.abs() - 1).pow(2).mean()
        return centre + self.lam * quant


LOSSES = {"csq": CSQLoss}


def build_loss(name: str, num_classes: int, bits: int, seed: int = 0, **params) -> nn.Module:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name](num_classes=num_classes, bits=bits, seed=seed, **params)
