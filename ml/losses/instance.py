"""The instance term (``TrainConfig.instance``): two views of one image pulled together in code space, other images
pushed apart; added to any hashing loss, as the auxiliary classifier is. Its kinds (``INSTANCE_LOSSES``, chosen by
``TrainConfig.instance_loss``) differ in the negatives: the batch's other images (``nt-xent``), every training
image through a memory bank (``bank``), or the batch's plus the last training views (``memory``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.timm_compat import import_timm
from ml.train_config import INSTANCE_LOSSES


def unit_codes(u: Tensor) -> Tensor:
    """The rows of tanh(u) in fp32, scaled to unit length."""
    return F.normalize(torch.tanh(u.float()), dim=1)


def softmax_contrast(
    anchors: Tensor, candidates: Tensor, target: Tensor, blocked: Tensor, temperature: float
) -> Tensor:
    """Mean over the rows of ``anchors`` (a, d) of ``-log softmax`` of their ``target`` candidate among the rows
    of ``candidates`` (c, d) that ``blocked`` (a, c) leaves in, on similarities ``anchors candidatesᵀ /
    temperature``."""
    sim = (anchors @ candidates.T / temperature).masked_fill(blocked, float("-inf"))
    return F.cross_entropy(sim, target)


def nt_xent(
    u: Tensor, v: Tensor, temperature: float, memory: Tensor | None = None, clash: Tensor | None = None
) -> Tensor:
    """NT-Xent (SimCLR's normalised-temperature cross-entropy) of the paired rows of ``u`` and ``v`` (n, B) on
    their tanh: with z the 2n rows of tanh(u) and tanh(v) scaled to unit length and sim = z zᵀ / temperature,
    the mean over the 2n anchors of ``-log softmax`` of the anchor's other view among the 2n - 1 other rows
    (its own similarity left out). With ``memory`` (m, B unit rows), every anchor also has those rows as
    negatives, except the ones ``clash`` (2n, m) marks. fp32, autocast off."""
    _same_views(u, v)
    n = len(u)
    with torch.autocast(device_type=u.device.type, enabled=False):
        z = unit_codes(torch.cat([u, v]))
        blocked = torch.eye(2 * n, dtype=torch.bool, device=u.device)
        candidates = z if memory is None else torch.cat([z, memory])
        if memory is not None:
            blocked = torch.cat([blocked, clash], 1)
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(u.device)
        return softmax_contrast(z, candidates, target, blocked, temperature)


def _same_views(u: Tensor, v: Tensor) -> None:
    if u.shape != v.shape or u.ndim != 2:
        raise ValueError(
            f"instance term: views must be the same (n, B), got {tuple(u.shape)}, {tuple(v.shape)}"
        )


def koleo(z: Tensor, floor: float = 1e-3) -> Tensor:
    """The KoLeo entropy estimator's loss (Alexandre Sablayrolles et al. "Spreading vectors for similarity
    search". ICLR 2019; SSCD's and DINOv2's spreading term): minus the mean log distance from each row of ``z``
    to its nearest other row. Distances below ``floor`` (a batch's duplicate images) count as ``floor`` and push
    nothing. Hand-written: no installed library packages it (DINOv2's is part of its training code)."""
    if len(z) < 2:
        return z.new_zeros(())
    d = torch.cdist(z, z) + torch.eye(len(z), device=z.device) * 4  # unit rows: 4 exceeds every distance
    return -d.min(1).values.clamp_min(floor).log().mean()


class InstanceContrast(nn.Module):
    """``weight`` · (``nt_xent(u, v, temperature)`` + ``koleo`` · KoLeo(unit tanh(u))): ``u`` the codes of the
    training view, ``v`` those of a copy-style view of the same images (``ml.views.copy_view``). Against
    class-centre losses (CSQ), whose codes of one class all sit on one centre, it keeps images of one class apart
    by a few bits and a copy nearest to its source, which the copies protocol measures; the other images of the
    batch, same class or not, are the negatives. KoLeo spreads the training views' codes over the sphere, so
    near-identical images of a class still get apart. The subclasses change the negatives (``contrast``). No
    parameters."""

    def __init__(self, weight: float, temperature: float = 0.3, koleo: float = 0.0):
        super().__init__()
        if weight < 0 or temperature <= 0 or koleo < 0:
            raise ValueError(
                f"instance weight must be >= 0, instance_temperature > 0 and instance_koleo >= 0, got {weight}, "
                f"{temperature}, {koleo}"
            )
        self.weight, self.temperature, self.koleo = weight, temperature, koleo

    def keys(self, model: nn.Module, inputs: Tensor) -> Tensor | None:
        """The outputs of a second encoder for the step's ``inputs`` (both views), which ``forward`` then takes
        as ``keys``; None here: only the momentum encoder (``InstanceMoCo``) has one."""
        return None

    def contrast(self, u: Tensor, v: Tensor, idx: Tensor | None, keys: Tensor | None) -> Tensor:
        """The unweighted contrastive loss of the two views."""
        return nt_xent(u, v, self.temperature)

    def forward(self, u: Tensor, v: Tensor, idx: Tensor | None = None, keys: Tensor | None = None) -> Tensor:
        loss = self.contrast(u, v, idx, keys)
        if self.koleo:
            with torch.autocast(device_type=u.device.type, enabled=False):
                loss = loss + self.koleo * koleo(unit_codes(u))
        return self.weight * loss

    def extra_repr(self) -> str:
        return f"weight={self.weight}, temperature={self.temperature}, koleo={self.koleo}"


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
        koleo: float = 0.0,
    ):
        super().__init__(weight, temperature, koleo)
        if num_train < 1 or dims < 1 or not 0 <= momentum < 1:
            raise ValueError(
                f"instance bank needs num_train >= 1, dims >= 1 and 0 <= momentum < 1, got {num_train}, {dims}, "
                f"{momentum}"
            )
        start = torch.randn(num_train, dims, generator=torch.Generator().manual_seed(seed + 2))
        self.register_buffer("bank", F.normalize(start, dim=1))
        self.momentum = momentum

    def contrast(self, u: Tensor, v: Tensor, idx: Tensor | None, keys: Tensor | None) -> Tensor:
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
        return loss

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, entries={self.bank.shape[0]}, momentum={self.momentum}"


class InstanceMemory(InstanceContrast):
    """NT-Xent with a cross-batch memory (Xun Wang et al. "Cross-Batch Memory for Embedding Learning". CVPR
    2020): the unit tanh codes of the last ``size`` training views (detached, with their image index) are extra
    negatives of every anchor, so each step sees ``size`` negatives instead of the batch's. An entry of the
    anchor's own image is left out. A buffer, saved with the training state."""

    kind = "memory"  # its name in errors

    def __init__(self, weight: float, temperature: float, dims: int, size: int = 8192, koleo: float = 0.0):
        super().__init__(weight, temperature, koleo)
        self.register_buffer("memory", torch.zeros(size, dims))
        self.register_buffer("memory_idx", torch.full((size,), -1, dtype=torch.long))  # -1: empty

    def _check(self, u: Tensor, v: Tensor, idx: Tensor | None) -> None:
        if idx is None or u.shape != v.shape or len(idx) != len(u):
            raise ValueError(
                f"instance {self.kind}: views must be the same (n, B) with n indices, got {tuple(u.shape)}"
            )

    def _clash(self, idx: Tensor) -> Tensor:
        """(2n, size): the entries each of the 2n anchors leaves out (its own image's, and empty ones)."""
        return ((idx[:, None] == self.memory_idx[None, :]) | (self.memory_idx < 0)).repeat(2, 1)

    @torch.no_grad()
    def _push(self, z: Tensor, idx: Tensor) -> None:
        """Queue unit rows ``z`` of images ``idx`` first; the oldest entries drop out."""
        self.memory = torch.cat([z, self.memory])[: len(self.memory)]
        self.memory_idx = torch.cat([idx, self.memory_idx])[: len(self.memory)]

    def contrast(self, u: Tensor, v: Tensor, idx: Tensor | None, keys: Tensor | None) -> Tensor:
        self._check(u, v, idx)
        with torch.autocast(device_type=u.device.type, enabled=False):
            loss = nt_xent(u, v, self.temperature, self.memory, self._clash(idx))
            self._push(unit_codes(u).detach(), idx)
        return loss


class InstanceMoCo(InstanceMemory):
    """Momentum contrast (Kaiming He et al. "Momentum Contrast for Unsupervised Visual Representation Learning".
    CVPR 2020), on the tanh codes: a key encoder, timm's ``ModelEmaV3`` of the model with decay ``momentum``,
    moved towards the model before each step's keys, codes both views without gradients. Each view's anchor
    is trained towards the key of its other view, against the batch's other keys and a queue of the last
    ``size`` training-view keys (their own image's entries left out). The queue's keys come from an encoder
    that moves slowly, so they stay comparable where ``memory``'s drift. Costs a forward of both views per
    step and a copy of the model; key encoder and queue are buffers, saved with the training state."""

    kind = "moco"

    def __init__(
        self,
        weight: float,
        temperature: float,
        dims: int,
        model: nn.Module,
        momentum: float = 0.99,
        size: int = 8192,
        koleo: float = 0.0,
    ):
        super().__init__(weight, temperature, dims, size, koleo)
        if not 0 <= momentum < 1:
            raise ValueError(f"instance moco needs 0 <= momentum < 1, got {momentum}")
        self.key_encoder = import_timm().utils.ModelEmaV3(model, decay=momentum)
        for p in self.key_encoder.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def keys(self, model: nn.Module, inputs: Tensor) -> Tensor:
        self.key_encoder.update(model)
        self.key_encoder.module.eval()
        return self.key_encoder.module(inputs)

    def contrast(self, u: Tensor, v: Tensor, idx: Tensor | None, keys: Tensor | None) -> Tensor:
        self._check(u, v, idx)
        n = len(u)
        if keys is None or keys.shape != (2 * n, u.shape[1]):
            raise ValueError(
                f"instance moco: keys must be ({2 * n}, {u.shape[1]}), the key encoder's codes of both views, "
                f"got {None if keys is None else tuple(keys.shape)}"
            )
        with torch.autocast(device_type=u.device.type, enabled=False):
            z = unit_codes(torch.cat([u, v]))
            k_train, k_view = unit_codes(keys).split(n)
            # anchor j's positive is candidate j: the key of its other view; the key of its own view is left out
            candidates = torch.cat([k_view, k_train, self.memory])
            own_view = torch.arange(2 * n, device=u.device).roll(n)
            blocked = F.one_hot(own_view, 2 * n).bool()
            blocked = torch.cat([blocked, self._clash(idx)], 1)
            loss = softmax_contrast(
                z, candidates, torch.arange(2 * n, device=u.device), blocked, self.temperature
            )
            self._push(k_train, idx)
        return loss

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, momentum={self.key_encoder.decay}, queue={len(self.memory)}"


def build_instance(
    kind: str,
    weight: float,
    temperature: float,
    num_train: int,
    dims: int,
    seed: int,
    model: nn.Module | None = None,
    koleo: float = 0.0,
) -> InstanceContrast:
    """The instance term of ``kind`` (``INSTANCE_LOSSES``); ``moco`` copies ``model`` as its key encoder."""
    if kind == "nt-xent":
        return InstanceContrast(weight, temperature, koleo)
    if kind == "bank":
        return InstanceBank(weight, temperature, num_train, dims, seed, koleo=koleo)
    if kind == "memory":
        return InstanceMemory(weight, temperature, dims, koleo=koleo)
    if kind == "moco":
        if model is None:
            raise ValueError("instance_loss 'moco' needs the model to copy as its key encoder")
        return InstanceMoCo(weight, temperature, dims, model, koleo=koleo)
    raise ValueError(f"unknown instance_loss {kind!r}; choose one of {list(INSTANCE_LOSSES)}")
