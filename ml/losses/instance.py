"""The instance term (``TrainConfig.instance``): two views of one image pulled together in code space, every other
image of the batch pushed apart; added to any hashing loss, as the auxiliary classifier is."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def nt_xent(u: Tensor, v: Tensor, temperature: float) -> Tensor:
    """NT-Xent (SimCLR's normalised-temperature cross-entropy) of the paired rows of ``u`` and ``v`` (n, B) on
    their tanh: with z the 2n rows of tanh(u) and tanh(v) scaled to unit length and sim = z zᵀ / temperature,
    the mean over the 2n anchors of ``-log softmax`` of the anchor's other view among the 2n - 1 other rows
    (its own similarity left out). fp32, autocast off."""
    if u.shape != v.shape or u.ndim != 2:
        raise ValueError(
            f"instance term: views must be the same (n, B), got {tuple(u.shape)}, {tuple(v.shape)}"
        )
    n = len(u)
    with torch.autocast(device_type=u.device.type, enabled=False):
        z = F.normalize(torch.tanh(torch.cat([u, v]).float()), dim=1)
        sim = z @ z.T / temperature
        sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=u.device), float("-inf"))
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

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        return self.weight * nt_xent(u, v, self.temperature)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, temperature={self.temperature}"
