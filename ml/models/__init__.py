"""Hashing models on timm backbones (random init; ``spec.pretrained`` weights: a path, URI or timm name).

Every model maps images (n, in_chans, img_size, img_size) to real-valued ``u`` of shape (n, bits) (no tanh: the
losses squash; codes are ``u >= 0``) and keeps its ``ModelSpec`` as ``model.spec``; timm weights go in
``model.backbone`` (see ``ml.pretrained.load_pretrained``). Models (docs/METHODS.md, "Models"): ``vts``/``vts-cls``,
``xhashnet``, ``transhash``, ``hybridhash``. Presets: ``PRESETS[model]``; throughput of the small
presets: ``python -m bench.models``.
"""

from __future__ import annotations

import torch
from torch import nn

from ml.model_spec import MODELS, NO_WEIGHTS, PAPER_PRESETS, PRESETS, ModelSpec, check_model, default_preset
from ml.models.hybridhash import HybridHash
from ml.models.transhash import TransHash
from ml.models.vts import VTSHash
from ml.models.xhashnet import XHashNet

_CLASSES: dict[str, type[nn.Module]] = {
    "vts": VTSHash,
    "vts-cls": VTSHash,
    "xhashnet": XHashNet,
    "transhash": TransHash,
    "hybridhash": HybridHash,
}

__all__ = [
    "MODELS",
    "PAPER_PRESETS",
    "PRESETS",
    "HybridHash",
    "ModelSpec",
    "TransHash",
    "VTSHash",
    "XHashNet",
    "build_model",
    "count_parameters",
    "default_preset",
]


def build_model(spec: ModelSpec, load_pretrained: bool = True) -> nn.Module:
    """Build the hashing model that ``spec`` describes (random init, then ``spec.pretrained`` backbone weights
    when set and ``load_pretrained``; pass ``False`` when the full weights are loaded next, as from a checkpoint)."""
    check_model(spec.model)
    spec.validate()
    # channels-last convolutions: 1.3x the training rate of the conv-stem models on 2 CPU cores (BENCHMARKS.md)
    model = _CLASSES[spec.model](spec).to(memory_format=torch.channels_last)
    if spec.pretrained and spec.pretrained.lower() != NO_WEIGHTS and load_pretrained:
        from ml.pretrained import load_pretrained as load

        load(model, spec.pretrained, strict=spec.pretrained_strict)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
