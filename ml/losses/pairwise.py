"""Pairwise-similarity losses: DSH, HashNet, IDHN, DCH (docs/METHODS.md), and the pair terms
they share with TransHash, HybridHash's WML and X-HashNet."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from ml.losses.base import HashLoss, MemoryBank, balanced_pair_weights, pair_similarity, stable_softplus

# DCH's surrogate distance caps the cosine at 0.99 (so d >= 0.005·B) and clamps the norm product at 1e-4.
COS_CAP = 0.99
NORM_FLOOR = 1e-4


def likelihood_pair_loss(a: Tensor, b: Tensor, s: Tensor, alpha: float) -> Tensor:
    """HashNet's weighted pairwise negative log-likelihood: z = alpha·<a_i, b_j>, l = softplus(z) - s·z,
    balanced weights S/S1 and S/S0, L = sum(w·l)/S (HashNet; also HybridHash's WML)."""
    z = alpha * a @ b.T
    nll = stable_softplus(z) - s * z
    return (balanced_pair_weights(s) * nll).sum() / s.numel()


def cauchy_distance(a: Tensor, b: Tensor, bits: int) -> Tensor:
    """DCH surrogate Hamming distance (DCH): (B/2)·(1 - min(cos(a_i, b_j), 0.99)), norm product >= 1e-4."""
    norms = a.norm(dim=1, keepdim=True) @ b.norm(dim=1, keepdim=True).T
    cos = (a @ b.T) / norms.clamp(min=NORM_FLOOR)
    return bits / 2 * (1 - cos.clamp(max=COS_CAP))


def cauchy_probability(d: Tensor, gamma: float) -> Tensor:
    """p(s = 1 | d) = gamma / (gamma + d): decreasing in the distance d."""
    return gamma / (gamma + d)


def cauchy_pair_nll(d: Tensor, s: Tensor, gamma: float) -> Tensor:
    """-log p for similar pairs (= log(1 + d/gamma)), -log(1 - p) for dissimilar ones (= log(1 + gamma/d));
    the same as the reference's s·log(d/gamma) + log(1 + gamma/d), without log(d) of a small d."""
    return s * torch.log1p(d / gamma) + (1 - s) * torch.log1p(gamma / d)


def cauchy_pair_loss(a: Tensor, b: Tensor, s: Tensor, gamma: float, bits: int) -> Tensor:
    """Balanced Cauchy cross-entropy: sum(w·nll)/S with w = S/S1, S/S0 (DCH's n²/S1, TransHash's |S|/|S1|)."""
    nll = cauchy_pair_nll(cauchy_distance(a, b, bits), s, gamma)
    return (balanced_pair_weights(s) * nll).sum() / s.numel()


def cauchy_quantisation(u: Tensor, gamma: float, bits: int) -> Tensor:
    """mean_i log(1 + d(|u_i|, 1)/gamma), 1 the all-ones vector (DCH, TransHash)."""
    ones = torch.ones(1, u.shape[1], dtype=u.dtype, device=u.device)
    return torch.log1p(cauchy_distance(u.abs(), ones, bits) / gamma).mean()


class DSHLoss(HashLoss):
    """Deep Supervised Hashing (docs/METHODS.md, "DSH"), memory-bank contrastive loss on the raw u:
    mean_ij[½(1-ŝ)d + ½ŝ·max(m - d, 0)] + alpha·mean| |u| - 1 |, d_ij = ||u_i - U_j||², ŝ = dissimilar.

    Defaults: margin m = 2B (``margin=None``), alpha = 0.1. Pairs: batch × filled bank rows (bank updated with
    the batch first). Uses the differentiable |u| quantisation term (post-2021 fix, not VTS's sign(u))."""

    name = "dsh"
    uses_memory_bank = True
    optimizer: ClassVar[dict] = {
        "optimizer": "rmsprop",
        "lr": 1e-5,
        "weight_decay": 1e-5,
        "batch_size": 64,
        "epochs": 250,
    }

    def __init__(
        self,
        num_classes: int,
        bits: int,
        num_train: int,
        seed: int = 0,
        margin: float | None = None,
        alpha: float = 0.1,
    ):
        super().__init__(num_classes, bits, num_train, seed)
        self.margin = 2.0 * bits if margin is None else margin
        self.alpha = alpha
        self.bank = MemoryBank(num_train, bits, num_classes)

    def compute(self, u: Tensor, y: Tensor, index: Tensor | None) -> Tensor:
        assert index is not None
        self.bank.update(index, u, y)
        bank_u, bank_y = self.bank.rows()
        # ||u_i - U_j||² expanded: no (n, N, B) intermediate for a large bank.
        dist = (u.pow(2).sum(1, keepdim=True) + bank_u.pow(2).sum(1) - 2 * u @ bank_u.T).clamp(min=0)
        similar = pair_similarity(y, bank_y)
        contrastive = 0.5 * similar * dist + 0.5 * (1 - similar) * torch.relu(self.margin - dist)
        return contrastive.mean() + self.alpha * (u.abs() - 1).abs().mean()


class HashNetLoss(HashLoss):
    """HashNet (docs/METHODS.md, "HashNet"): h = tanh(beta·u), z = alpha·<h_i, h_j>, balanced likelihood over batch × batch
    pairs (diagonal included), L = sum(w·(softplus(z) - s·z))/S.

    Defaults: alpha = 0.1, continuation step = 20 epochs: beta = sqrt(floor(epoch/step) + 1), set through
    ``set_epoch`` (``step=None`` keeps beta = 1). ``memory_bank=True`` gives the pre-2022 variant that VTS uses:
    pairs batch × filled bank rows of detached h."""

    name = "hashnet"
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
        alpha: float = 0.1,
        step: int | None = 20,
        memory_bank: bool = False,
    ):
        super().__init__(num_classes, bits, num_train, seed)
        if step is not None and step < 1:
            raise ValueError(f"{self.name}: step must be >= 1 or None, got {step}")
        self.alpha = alpha
        self.step = step
        self.epoch = 0
        self.uses_memory_bank = memory_bank
        self.bank = MemoryBank(num_train, bits, num_classes) if memory_bank else None

    @property
    def beta(self) -> float:
        """Continuation scale for the current epoch."""
        return 1.0 if self.step is None else math.sqrt(self.epoch // self.step + 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def compute(self, u: Tensor, y: Tensor, index: Tensor | None) -> Tensor:
        h = torch.tanh(self.beta * u)
        if self.bank is None:
            return likelihood_pair_loss(h, h, pair_similarity(y, y), self.alpha)
        assert index is not None
        self.bank.update(index, h, y)
        bank_h, bank_y = self.bank.rows()
        return likelihood_pair_loss(h, bank_h, pair_similarity(y, bank_y), self.alpha)


class IDHNLoss(HashLoss):
    """Improved Deep Hashing Network (docs/METHODS.md, "IDHN"; DeepHash-pytorch's ``DPSHLoss`` class in its IDHN module), memory bank.

    u <- u/(|u| + 1); s_ij = cos(y_i, Y_j) (1e-5 in the denominator); hard mask M = 1[s > 0.99] + 1[s < 0.01];
    z = alpha·<u_i, U_j>; L = mean[M·(softplus(z) - s·z) + gamma·(1 - M)·(z - B(2s - 1))²] + lam·mean| |u| - 1 |.
    Defaults: alpha = 0.5, gamma = 0.1, lam = 0.1. With one-hot labels every pair is hard (DPSH-like loss)."""

    name = "idhn"
    uses_memory_bank = True
    optimizer: ClassVar[dict] = {
        "optimizer": "rmsprop",
        "lr": 1e-5,
        "weight_decay": 1e-5,
        "batch_size": 128,
        "epochs": 150,
    }

    def __init__(
        self,
        num_classes: int,
        bits: int,
        num_train: int,
        seed: int = 0,
        alpha: float = 0.5,
        gamma: float = 0.1,
        lam: float = 0.1,
    ):
        super().__init__(num_classes, bits, num_train, seed)
        self.alpha = alpha
        self.gamma = gamma
        self.lam = lam
        self.bank = MemoryBank(num_train, bits, num_classes)

    def compute(self, u: Tensor, y: Tensor, index: Tensor | None) -> Tensor:
        assert index is not None
        u = u / (u.abs() + 1)
        self.bank.update(index, u, y)
        bank_u, bank_y = self.bank.rows()
        norms = y.norm(dim=1, keepdim=True) @ bank_y.norm(dim=1, keepdim=True).T
        s = (y @ bank_y.T) / (norms + 1e-5)
        hard = ((s > 0.99) | (s < 0.01)).float()
        z = self.alpha * u @ bank_u.T
        hard_loss = stable_softplus(z) - s * z
        soft_loss = (z - self.bits * (2 * s - 1)).pow(2)
        pairs = (hard * hard_loss + self.gamma * (1 - hard) * soft_loss).mean()
        return pairs + self.lam * (u.abs() - 1).abs().mean()


class DCHLoss(HashLoss):
    """Deep Cauchy Hashing (docs/METHODS.md, "DCH") on the raw u, batch × batch pairs:
    mean(w·[-log p(s|d)]) + lam·mean_i log(1 + d(|u_i|, 1)/gamma), p(s=1|d) = gamma/(gamma + d),
    d = (B/2)(1 - min(cos, 0.99)), w = n²/S1 and n²/S0 (1 if either count is zero).

    Defaults: gamma = 20, lam = 0.1."""

    name = "dch"
    optimizer: ClassVar[dict] = {
        "optimizer": "rmsprop",
        "lr": 1e-5,
        "weight_decay": 1e-5,
        "batch_size": 128,
        "epochs": 150,
    }

    def __init__(
        self,
        num_classes: int,
        bits: int,
        num_train: int = 0,
        seed: int = 0,
        gamma: float = 20.0,
        lam: float = 0.1,
    ):
        super().__init__(num_classes, bits, num_train, seed)
        if gamma <= 0:
            raise ValueError(f"{self.name}: gamma must be > 0, got {gamma}")
        self.gamma = gamma
        self.lam = lam

    def compute(self, u: Tensor, y: Tensor, index: Tensor | None) -> Tensor:
        pairs = cauchy_pair_loss(u, u, pair_similarity(y, y), self.gamma, self.bits)
        return pairs + self.lam * cauchy_quantisation(u, self.gamma, self.bits)
