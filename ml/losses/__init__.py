"""Hashing losses (docs/METHODS.md, "Losses"). Every loss maps raw outputs u (n, B), multi-hot labels y (n, C) and dataset
indices (n,) to a scalar: ``build_loss(name, num_classes, bits, num_train)(u, y, index)``.

``DEFAULTS[name]`` = {"params": default hyper-parameters (the constructor's keyword defaults), "optimizer": the
reference's optimiser recipe}. The recipes are the published ones (mostly RMSprop lr 1e-5 for ImageNet-pretrained
backbones); a model trained from scratch usually needs the project's own optimiser settings instead."""

from __future__ import annotations

import inspect
from typing import Any

from ml.losses.base import HashLoss, MemoryBank, balanced_pair_weights, pair_similarity, stable_softplus
from ml.losses.centres import CSQLoss, DPNLoss, dpn_targets, hash_centres, nearest_centre
from ml.losses.greedyhash import GreedyHashLoss, sign_ste
from ml.losses.hybridhash import HybridHashLoss
from ml.losses.pairwise import DCHLoss, DSHLoss, HashNetLoss, IDHNLoss
from ml.losses.transhash import TransHashLoss
from ml.losses.xhashnet import XHashNetLoss

LOSSES: dict[str, type[HashLoss]] = {
    cls.name: cls
    for cls in (
        DSHLoss,
        HashNetLoss,
        GreedyHashLoss,
        IDHNLoss,
        CSQLoss,
        DPNLoss,
        DCHLoss,
        TransHashLoss,
        HybridHashLoss,
        XHashNetLoss,
    )
}

_STRUCTURAL = ("self", "num_classes", "bits", "num_train", "seed")


def _hyper_parameters(cls: type[HashLoss]) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if k not in _STRUCTURAL}


DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    name: {"params": _hyper_parameters(cls), "optimizer": dict(cls.optimizer)} for name, cls in LOSSES.items()
}


def build_loss(
    name: str, num_classes: int, bits: int, num_train: int, seed: int = 0, **params: Any
) -> HashLoss:
    """The loss ``name`` for ``num_classes`` labels, ``bits``-bit codes and a training set of ``num_train`` images
    (memory banks are sized to it); ``params`` override ``DEFAULTS[name]["params"]``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    valid = DEFAULTS[name]["params"]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for loss {name!r}; valid: {sorted(valid)}")
    return LOSSES[name](num_classes=num_classes, bits=bits, num_train=num_train, seed=seed, **params)


__all__ = [
    "DEFAULTS",
    "LOSSES",
    "CSQLoss",
    "DCHLoss",
    "DPNLoss",
    "DSHLoss",
    "GreedyHashLoss",
    "HashLoss",
    "HashNetLoss",
    "HybridHashLoss",
    "IDHNLoss",
    "MemoryBank",
    "TransHashLoss",
    "XHashNetLoss",
    "balanced_pair_weights",
    "build_loss",
    "dpn_targets",
    "hash_centres",
    "nearest_centre",
    "pair_similarity",
    "sign_ste",
    "stable_softplus",
]
