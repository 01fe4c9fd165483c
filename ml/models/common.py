"""Pieces shared by the hashing models: the timm ViT backbone and the head initialisation."""

from __future__ import annotations

from typing import Any

from torch import nn

from ml.models.spec import ModelSpec
from ml.timm_compat import import_timm

VIT_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")


def vit_backbone(spec: ModelSpec, args: dict[str, Any]) -> nn.Module:
    """A timm ``VisionTransformer`` without classifier or pooling (``forward_features`` gives all tokens)."""
    timm = import_timm()
    return timm.models.vision_transformer.VisionTransformer(
        in_chans=spec.in_chans,
        num_classes=0,
        global_pool="",
        drop_path_rate=spec.drop_path_rate,
        **{k: args[k] for k in VIT_KEYS},
    )


def init_head(module: nn.Module) -> None:
    """timm's ViT init for the hash heads: truncated normal (std 0.02) weights, zero biases, unit norms."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
