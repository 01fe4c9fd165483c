"""Losses that pull each image to a fixed per-class target code: CSQ and DPN (docs/METHODS.md)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import hadamard
from torch import Tensor

from ml.losses.base import HashLoss
from ml.metrics import hamming_distance_matrix


def _balanced_code(rng: np.random.Generator, bits: int, negatives: int) -> np.ndarray:
    code = np.ones(bits, np.float32)
    code[rng.choice(bits, negatives, replace=False)] = -1
    return code


def hadamard_rows(bits: int, balanced: bool = True) -> np.ndarray:
    """The 2·bits rows of [H; -H] (Hadamard, ``bits`` a power of two) in the order classes take them.

    ``balanced`` (default) pairs each row with its negation, (h1, -h1, h2, -h2, ...), and puts the all-ones row 0
    and its negation last: any even number of classes then has every bit +1 for exactly half of them (per-bit
    ones-rate 0.5, entropy 1), and no class is the all-ones code. ``balanced=False`` is the reference order
    (the first rows of the Hadamard matrix H, row 0 all ones), which gives 10 classes at 64 bits a ones-rate of 0.55."""
    h = hadamard(bits).astype(np.float32)
    if not balanced:
        return np.concatenate([h, -h])
    order = [*range(1, bits), 0]
    return np.stack([sign * h[i] for i in order for sign in (1, -1)])


def hash_centres(
    num_classes: int, bits: int, seed: int = 0, tries: int = 10_000, balanced: bool = True
) -> np.ndarray:
    """CSQ hash centres in {-1, +1}, shape (num_classes, bits), every pair at least bits/4 apart.

    Rows of [H; -H] (pairwise distance bits/2 or bits; order from ``hadamard_rows``) when ``bits`` is a power of
    two; the classes left over (2·bits < num_classes, or any length that is not a power of two such as 48, where
    scipy's ``hadamard`` raises) get seeded random balanced codes (exactly bits/2 entries -1, CSQ Algorithm 1).
    Fallback deviation: the reference redraws *all* random centres at once (20 tries), which essentially never
    succeeds for e.g. 100 classes at 16 bits; we accept centres greedily one at a time (up to ``tries`` draws
    each), which keeps the same acceptance rule (min distance >= bits/4) and is reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    is_pow2 = bits > 0 and bits & (bits - 1) == 0
    rows = hadamard_rows(bits, balanced) if is_pow2 else np.zeros((0, bits), np.float32)
    centres = list(rows[:num_classes])
    while len(centres) < num_classes:
        for _ in range(tries):
            cand = _balanced_code(rng, bits, bits // 2)
            if not centres or ((bits - np.stack(centres) @ cand) / 2).min() >= bits / 4:
                centres.append(cand)
                break
        else:
            raise ValueError(
                f"could not draw {num_classes} hash centres {bits / 4:g} bits apart at {bits} bits"
            )
    return np.stack(centres).astype(np.float32)


def nearest_centre(codes: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the centre (±1 rows) nearest in Hamming distance to each packed code (``ml.encode`` bit order):
    a centre loss's code read as a class prediction (experiments/retrieval_decomposition.py)."""
    return hamming_distance_matrix(codes, np.packbits(centres > 0, axis=1)).argmin(axis=1)


def dpn_targets(num_classes: int, bits: int, p: float = 0.5, seed: int = 0) -> np.ndarray:
    """DPN class targets (docs/METHODS.md, "DPN"): random ±1 vectors with exactly floor(p·bits) entries -1, seeded
    (the reference draws 20 times, keeps the last draw, unseeded)."""
    rng = np.random.default_rng(seed)
    return np.stack([_balanced_code(rng, bits, int(np.floor(p * bits))) for _ in range(num_classes)])


class CentreTargetLoss(HashLoss):
    """Base for losses with one target code per class. Multi-label target (CSQ/DPN multi-label rule):
    v = y·centres, then sign(v), with v = 0 coordinates replaced by fixed random bits drawn once from ``seed``.
    For one-hot y this is exactly the class's centre, so one rule serves both cases."""

    centres: Tensor
    tie_bits: Tensor

    def __init__(self, num_classes: int, bits: int, num_train: int, seed: int, centres: np.ndarray):
        super().__init__(num_classes, bits, num_train, seed)
        self.register_buffer("centres", torch.as_tensor(centres, dtype=torch.float32))
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("tie_bits", torch.randint(0, 2, (bits,), generator=gen).float() * 2 - 1)

    def targets(self, y: Tensor) -> Tensor:
        """±1 target codes (n, B) for multi-hot ``y``."""
        v = y.float() @ self.centres
        return torch.where(v == 0, self.tie_bits.expand_as(v), torch.sign(v))


class CSQLoss(CentreTargetLoss):
    """Central Similarity Quantization (docs/METHODS.md, "CSQ"): BCE((h+1)/2, (c(y)+1)/2) + lam·mean(|h|-1)², h = tanh(u).

    Defaults: lam = 1e-4; centres from ``hash_centres`` (Hadamard rows in balanced order, ``balanced=False`` for
    the reference order; balanced random fallback e.g. at 48 bits).
    BCE is computed as BCE-with-logits on 2u, since (tanh(u)+1)/2 = sigmoid(2u): the same value, without the
    reference's log(0) risk (the previous version clamped the probability to [1e-6, 1-1e-6])."""

    name = "csq"
    optimizer: ClassVar[dict] = {
        "optimizer": "rmsprop",
        "lr": 1e-5,
        "weight_decay": 1e-5,
        "batch_size": 64,
        "epochs": 150,
    }

    def __init__(
        self,
        num_classes: int,
        bits: int,
        num_train: int = 0,
        seed: int = 0,
        lam: float = 1e-4,
        balanced: bool = True,
    ):
        super().__init__(
            num_classes, bits, num_train, seed, hash_centres(num_classes, bits, seed, balanced=balanced)
        )
        self.lam = lam
        self.balanced = balanced

    def compute(self, u: Tensor, y: Tensor, index: Tensor | None) -> Tensor:
        target = (self.targets(y) + 1) / 2
        centre = F.binary_cross_entropy_with_logits(2 * u, target)
        quant = (torch.tanh(u).abs() - 1).pow(2).mean()
        return centre + self.lam * quant


class DPNLoss(CentreTargetLoss):
    """Deep Polarized Network (docs/METHODS.md, "DPN"): mean(max(m - u·t(y), 0)) on the raw u (no tanh).

    Defaults: margin m = 1, p = 0.5 (targets with exactly floor(p·B) entries -1). Multi-label targets as CSQ.
    The -A (adaptive targets) and -T (ternarised, zero-gradient) variants are not implemented."""

    name = "dpn"
    optimizer: ClassVar[dict] = {
        "optimizer": "rmsprop",
        "lr": 1e-5,
        "weight_decay": 1e-5,
        "batch_size": 32,
        "epochs": 150,
    }

    def __init__(
        self,
        num_classes: int,
        bits: int,
        num_train: int = 0,
        seed: int = 0,
        margin: float = 1.0,
        p: float = 0.5,
    ):
        if not 0 <= p <= 1:
            raise ValueError(f"dpn: p must lie in [0, 1], got {p}")
        super().__init__(num_classes, bits, num_train, seed, dpn_targets(num_classes, bits, p, seed))
        self.margin = margin
        self.p = p

    def compute(self, u: Tensor, y: Tensor, index: Tensor | None) -> Tensor:
        return torch.relu(self.margin - u * self.targets(y)).mean()
