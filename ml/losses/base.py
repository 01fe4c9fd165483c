"""Shared pieces of every hashing loss (docs/METHODS.md, "Conventions shared by every model and loss"): the ``HashLoss`` interface, a stable softplus,
label similarity and balanced pair weights, the fp32 memory bank and the label-classification term."""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def stable_softplus(z: Tensor) -> Tensor:
    """log(1 + e^z) without overflow (docs/METHODS.md, "Conventions shared by every model and loss").

    ``F.softplus`` evaluates log1p(exp(z)) below 20 and z above, so neither the value nor the gradient
    (sigmoid(z)) overflows; unlike the literal ``relu(z) + log1p(exp(-|z|))`` it also has the exact
    gradient 1/2 at z = 0."""
    return F.softplus(z)


def pair_similarity(y_a: Tensor, y_b: Tensor) -> Tensor:
    """s_ij = 1[<y_a_i, y_b_j> > 0] as float (n_a, n_b): images sharing at least one label are similar."""
    return (y_a.float() @ y_b.float().T > 0).float()


def balanced_pair_weights(s: Tensor) -> Tensor:
    """HashNet/DCH/TransHash re-weighting: similar pairs get S/S1, dissimilar pairs S/S0 (S = S0 + S1 all
    pairs of ``s``). A group with no member keeps weight 1 (DCH's fallback; HashNet's masked multiply has
    the same effect), so sum(w·l)/S is the mean similar loss + the mean dissimilar loss."""
    total = float(s.numel())
    s1 = s.sum()
    s0 = total - s1
    w_sim = torch.where(s1 > 0, total / s1.clamp(min=1), torch.ones_like(s1))
    w_dis = torch.where(s0 > 0, total / s0.clamp(min=1), torch.ones_like(s0))
    return s * w_sim + (1 - s) * w_dis


def label_classification_loss(logits: Tensor, y: Tensor, multilabel: bool, owner: str) -> Tensor:
    """Cross-entropy against argmax(y) (single-label, the reference behaviour) or, with ``multilabel``,
    mean binary cross-entropy with logits over all C labels. Single-label mode on multi-hot rows keeps only
    the first label, as the reference does silently; we warn once per loss instance (``owner``)."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, y)
    if bool((y.sum(dim=1) > 1).any()):
        warnings.warn(
            f"{owner}: multi-hot labels with multilabel=False keep only argmax(y); pass multilabel=True",
            stacklevel=3,
        )
    return F.cross_entropy(logits, y.argmax(dim=1))


def seeded_classifier(bits: int, num_classes: int, seed: int) -> nn.Linear:
    """Linear(bits -> num_classes) with PyTorch's default uniform(±1/sqrt(bits)) init drawn from its own seeded
    generator, so adding a classifier head leaves the global RNG stream (and every other init) unchanged."""
    layer = nn.Linear(bits, num_classes)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bound = bits**-0.5
        layer.weight.uniform_(-bound, bound, generator=gen)
        layer.bias.uniform_(-bound, bound, generator=gen)
    return layer


class MemoryBank(nn.Module):
    """Per-training-image banks U (num_train, B) and Y (num_train, C) of DETACHED outputs and labels (DSH,
    HashNet's history, IDHN, HybridHash's WML). fp32 whatever the model's precision, zero at the start.

    ``filled`` records which rows were ever written. ``rows()`` returns only those, so rows not yet seen
    never act as fake dissimilar pairs with z = 0 — a deliberate fix of the DeepHash/HybridHash quirk
    where zero rows (and HybridHash's hard-coded, too large num_train) enter the pair set."""

    codes: Tensor
    labels: Tensor
    filled: Tensor

    def __init__(self, num_train: int, bits: int, num_classes: int):
        super().__init__()
        if num_train < 1:
            raise ValueError(f"a memory bank needs num_train >= 1, got {num_train}")
        self.num_train = num_train
        self.register_buffer("codes", torch.zeros(num_train, bits, dtype=torch.float32))
        self.register_buffer("labels", torch.zeros(num_train, num_classes, dtype=torch.float32))
        self.register_buffer("filled", torch.zeros(num_train, dtype=torch.bool))

    def update(self, index: Tensor, codes: Tensor, labels: Tensor) -> None:
        """Store detached ``codes``/``labels`` at dataset ``index`` (a later duplicate index wins)."""
        index = index.to(self.codes.device).long()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_train):
            raise ValueError(
                f"index out of range [0, {self.num_train}): is num_train the real training-set size?"
            )
        self.codes[index] = codes.detach().to(self.codes.dtype)
        self.labels[index] = labels.detach().to(self.labels.dtype)
        self.filled[index] = True

    def rows(self) -> tuple[Tensor, Tensor]:
        """(U, Y) restricted to the rows filled so far."""
        if bool(self.filled.all()):
            return self.codes, self.labels
        return self.codes[self.filled], self.labels[self.filled]


class HashLoss(nn.Module):
    """Interface of every hashing loss: ``loss(u, y, index)`` -> scalar.

    ``u`` (n, B) raw model outputs (no activation; test codes are ``u >= 0``), ``y`` (n, C) multi-hot labels,
    ``index`` (n,) long dataset indices in [0, num_train) (only memory-bank losses need it). The loss runs in
    fp32 with autocast disabled (inputs are cast). ``optimizer`` is the reference's optimiser recipe."""

    name: ClassVar[str] = ""
    uses_memory_bank: bool = False
    optimizer: ClassVar[dict] = {}

    def __init__(self, num_classes: int, bits: int, num_train: int, seed: int = 0):
        super().__init__()
        if num_classes < 1 or bits < 1:
            raise ValueError(f"{self.name}: need num_classes >= 1 and bits >= 1, got {num_classes}, {bits}")
        self.num_classes = num_classes
        self.bits = bits
        self.num_train = num_train
        self.seed = seed

    def forward(self, u: Tensor, y: Tensor, index: Tensor | None = None) -> Tensor:
        if u.ndim != 2 or u.shape[1] != self.bits:
            raise ValueError(f"{self.name}: expected u of shape (n, {self.bits}), got {tuple(u.shape)}")
        if y.shape != (u.shape[0], self.num_classes):
            raise ValueError(
                f"{self.name}: expected y of shape ({u.shape[0]}, {self.num_classes}), got {tuple(y.shape)}"
            )
        if self.uses_memory_bank and (index is None or index.shape != (u.shape[0],)):
            raise ValueError(f"{self.name} keeps a memory bank and needs index of shape ({u.shape[0]},)")
        with torch.autocast(device_type=u.device.type, enabled=False):
            return self.compute(u.float(), y.float(), index)

    def compute(self, u: Tensor, y: Tensor, index: Tensor | None) -> Tensor:
        """The loss on fp32 ``u`` and ``y``; subclasses implement it."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Called with the 0-based epoch before it starts; no-op unless a loss has a schedule."""

    def extra_repr(self) -> str:
        return f"bits={self.bits}, num_classes={self.num_classes}"
