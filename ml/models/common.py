"""Pieces shared by the hashing models: the timm ViT backbone and the head initialisation."""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn

from ml.model_spec import ModelSpec
from ml.timm_compat import import_timm

VIT_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")


def conv_stem(in_chans: int, channels: tuple[int, ...]) -> nn.Sequential:
    """VGG-style stages, one per entry of ``channels``: (3x3 conv -> BatchNorm -> ReLU) x 2 -> 2x2 max-pool, so the
    map shrinks by 2 ** len(channels). Hand-written: timm's ``ConvStem`` has one conv per stride and no pooling,
    which learned markedly slower at 28 px (docs/BENCHMARKS.md, "Quality")."""
    layers: list[nn.Module] = []
    c = in_chans
    for out in channels:
        for conv_in in (c, out):
            layers += [
                nn.Conv2d(conv_in, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.MaxPool2d(2))
        c = out
    return nn.Sequential(*layers)


def vit_backbone(spec: ModelSpec, args: dict[str, Any]) -> nn.Module:
    """A timm ``VisionTransformer`` without classifier or pooling (``forward_features`` gives all tokens).

    With a non-empty ``stem_channels`` preset key the patch embedding is timm's ``HybridEmbed`` over
    ``conv_stem`` (a 1x1 projection of its map: one token per cell, ``img_size / 2 ** len(stem_channels)`` per
    side); ``patch_size`` must then be 1."""
    timm = import_timm()
    stem = tuple(int(c) for c in args.get("stem_channels", ()))
    kwargs: dict[str, Any] = {}
    if stem:
        if int(args["patch_size"]) != 1 or int(args["img_size"]) % 2 ** len(stem):
            raise ValueError(
                f"a conv stem of {len(stem)} stages needs patch_size 1 and img_size divisible by {2 ** len(stem)}, "
                f"got patch_size {args['patch_size']}, img_size {args['img_size']}"
            )
        kwargs["embed_layer"] = partial(timm.layers.HybridEmbed, backbone=conv_stem(spec.in_chans, stem))
    return timm.models.vision_transformer.VisionTransformer(
        in_chans=spec.in_chans,
        num_classes=0,
        global_pool="",
        drop_path_rate=spec.drop_path_rate,
        **{k: args[k] for k in VIT_KEYS},
        **kwargs,
    )


def init_head(module: nn.Module) -> None:
    """timm's ViT init for the hash heads' Linear layers: truncated normal (std 0.02) weights, zero biases, unit
    norms. Convolutions keep PyTorch's fan-in scaled default, as the references' ``nn.Conv2d`` do: at std 0.02
    HybridHash's chain of convolutions shrank ``u`` to ~0.002 at init, and DSH then collapsed every code to one."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
