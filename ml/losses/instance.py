"""The instance term (``TrainConfig.instance``): two views of one image pulled together in code space, other images
pushed apart; added to any hashing loss, as the auxiliary classifier is. Its kinds (``INSTANCE_LOSSES``, chosen by
``TrainConfig.instance_loss``) differ in the negatives: the batch's other images (``nt-xent``), every training
image through a memory bank (``bank``), or the batch's plus the last training views (``memory``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.train_config import INSTANCE_LOSSES


def unit_codes(u: Tensor) -> Tensor:
    """The rows of tanh(u) in fp32, scaled to unit length."""
    return F.normalize(torch.tanh(u.float()), dim=1)


def nt_xent(
    u: Tensor, v: Tensor, temperature: float, memory: Tensor | None = None, clash: Tensor | None = None
) -> Tensor:
    """NT-Xent (SimCLR's normalised-temperature cross-entropy) of the paired rows of ``u`` and ``v`` (n, B) on
    their tanh: with z the 2n rows of tanh(u) and tanh(v) scaled to unit length and sim = z zᵀ / temperature,
    the mean over the 2n anchors of ``-log softmax`` of the anchor's other view among the 2n - 1 other rows
    (its own similarity left out). With ``memory`` (m, B unit rows), every anchor also has those rows as
    negatives, except the ones ``clash`` (2n, m) marks. fp32, autocast off."""
    if u.shape != v.shape or u.ndim != 2:
        raise ValueError(
            f"instance term: views must be the same (n, B), got {tuple(u.shape)}, {tuple(v.shape)}"
        )
    n = len(u)
    with torch.autocast(device_type=u.device.type, enabled=False):
        z = unit_codes(torch.cat([u, v]))
        sim = z @ z.T / temperature
        sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=u.device), float("-inf"))
        if memory is not None:
            sim = torch.cat([sim, (z @ memory.T / temperature).masked_fill(clash, float("-inf"))], 1)
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(u.device)
        return F.cross_entropy(sim, target)


class InstanceContrast(nn.Module):
    """``weight`` · ``nt_xent(u, v, temperature)``: ``u`` the codes of the training view, ``v`` those of a
    copy-style view of the same images (``ml.views.copy_view``). Against class-centre losses (CSQ), whose codes
    of one class all sit on one centre, it keeps images of one class apart by a few bits and a copy nearest to
    its source, which the copies protocol measures; the other images of the batch, same class or not, are the
    negatives. No parameters."""

    def __init__(self, weight: float, temperature: float = 0.3):
        super().__init__()
        if weight < 0 or temperature <= 0:
            raise ValueError(
                f"instance weight must be >= 0 and instance_temperature > 0, got {weight}, {temperature}"
            )
        self.weight, self.temperature = weight, temperature

    def forward(self, u: Tensor, v: Tensor, idx: Tensor | None = None) -> Tensor:
        return self.weight * nt_xent(u, v, self.temperature)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, temperature={self.temperature}"


def bank_cross_entropy(z: Tensor, bank: Tensor, target: Tensor, temperature: float) -> Tensor:
    """Mean over the rows of unit vectors ``z`` (m, d) of ``-log softmax(z bankᵀ / temperature)[target]``: each
    row's cross-entropy of its own entry among every entry of the memory ``bank`` (N, d)."""
    return F.cross_entropy(z @ bank.T / temperature, target)


class InstanceBank(InstanceContrast):
    """Instance discrimination against a memory bank (Zhirong Wu et al. "Unsupervised Feature Learning via
    Non-Parametric Instance Discrimination". CVPR 2018), on the tanh codes: the bank holds one unit vector per
    training image; both views of image i are scored against all N entries and trained towards entry i
    (``bank_cross_entropy``), so every other training image is a negative, not only the batch's. After the step
    entry i moves to the training view: ``normalise(m · entry + (1 - m) · z)``, ``m`` = ``momentum``. The bank
    starts as seeded random unit vectors, is a buffer (saved with the training state) and costs N · d floats."""

    def __init__(
        self,
        weight: float,
        temperature: float,
        num_train: int,
        dims: int,
        seed: int = 0,
        momentum: float = 0.5,
    ):
        super().__init__(weight, temperature)
        if num_train < 1 or dims < 1 or not 0 <= momentum < 1:
            raise ValueError(
                f"instance bank needs num_train >= 1, dims >= 1 and 0 <= momentum < 1, got {num_train}, {dims}, "
                f"{momentum}"
            )
        start = torch.randn(num_train, dims, generator=torch.Generator().manual_seed(seed + 2))
        self.register_buffer("bank", F.normalize(start, dim=1))
        self.momentum = momentum

    def forward(self, u: Tensor, v: Tensor, idx: Tensor | None = None) -> Tensor:
        if idx is None or u.shape != v.shape or len(idx) != len(u) or u.shape[1] != self.bank.shape[1]:
            raise ValueError(
                f"instance bank: views must be (n, {self.bank.shape[1]}) with n indices, got "
                f"{tuple(u.shape)}, {tuple(v.shape)}, {None if idx is None else len(idx)}"
            )
        n = len(u)
        with torch.autocast(device_type=u.device.type, enabled=False):
            z = unit_codes(torch.cat([u, v]))
            loss = bank_cross_entropy(z, self.bank, torch.cat([idx, idx]), self.temperature)
            with torch.no_grad():
                moved = F.normalize(self.momentum * self.bank[idx] + (1 - self.momentum) * z[:n], dim=1)
                self.bank = self.bank.index_copy(0, idx, moved)  # a new tensor: backward reads the old one
        return self.weight * loss

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, entries={self.bank.shape[0]}, momentum={self.momentum}"


class InstanceMemory(InstanceContrast):
    """NT-Xent with a cross-batch memory (Xun Wang et al. "Cross-Batch Memory for Embedding Learning". CVPR
    2020): the unit tanh codes of the last ``size`` training views (detached, with their image index) are extra
    negatives of every anchor, so each step sees ``size`` negatives instead of the batch's. An entry of the
    anchor's own image is left out. A buffer, saved with the training state."""

    def __init__(self, weight: float, temperature: float, dims: int, size: int = 8192):
        super().__init__(weight, temperature)
        self.register_buffer("memory", torch.zeros(size, dims))
        self.register_buffer("memory_idx", torch.full((size,), -1, dtype=torch.long))  # -1: empty

    def forward(self, u: Tensor, v: Tensor, idx: Tensor | None = None) -> Tensor:
        if idx is None or u.shape != v.shape or len(idx) != len(u):
            raise ValueError(
                f"instance memory: views must be the same (n, B) with n indices, got {tuple(u.shape)}"
            )
        with torch.autocast(device_type=u.device.type, enabled=False):
            clash = ((idx[:, None] == self.memory_idx[None, :]) | (self.memory_idx < 0)).repeat(2, 1)
            loss = nt_xent(u, v, self.temperature, self.memory, clash)
            with torch.no_grad():
                z = unit_codes(u)
                self.memory = torch.cat([z, self.memory])[: len(self.memory)]
                self.memory_idx = torch.cat([idx, self.memory_idx])[: len(self.memory)]
        return self.weight * loss


def build_instance(kind: str, weight: float, temperature: float, num_train: int, dims: int, seed: int):
    """The instance term of ``kind`` (``INSTANCE_LOSSES``)."""
    if kind == "nt-xent":
        return InstanceContrast(weight, temperature)
    if kind == "bank":
        return InstanceBank(weight, temperature, num_train, dims, seed)
    if kind == "memory":
        return InstanceMemory(weight, temperature, dims)
    raise ValueError(f"unknown instance_loss {kind!r}; choose one of {list(INSTANCE_LOSSES)}")
