"""Hashing models built on timm backbones (``pretrained=False``; weights only from a user-given path)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ml.timm_compat import import_timm

# Backbone presets. "small" is sized for 28-32 px images on a 2-core CPU (see README, "Presets");
# the paper presets are the 224 px ImageNet ViTs of VTS.
PRESETS: dict[str, dict] = {
    "small": dict(img_size=28, patch_size=4, embed_dim=96, depth=4, num_heads=3, mlp_ratio=4.0),
    "vit-b16": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "vit-b32": dict(img_size=224, patch_size=32, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
}
MODELS = ("vts", "vts-cls")


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model: stored in ``model.json`` beside the weights."""

    model: str = "vts"
    preset: str = "small"
    bits: int = 64
    in_chans: int = 1
    num_classes: int = 10
    head_hidden: int = 1024
    head_dropout: float = 0.5
    drop_path_rate: float = 0.0
    overrides: dict = field(default_factory=dict)  # preset fields replaced by the user (e.g. depth)

    def backbone_args(self) -> dict:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        return {**PRESETS[self.preset], **self.overrides}

    @property
    def img_size(self) -> int:
        return int(self.backbone_args()["img_size"])

    def to_dict(self) -> dict:
        return asdict(self)


class VTSHash(nn.Module):
    """VTS: a ViT whose final-norm tokens feed a hash head (METHODS.md D).

    ``vts`` flattens all tokens (cls included) -> Dropout -> Linear(hidden) -> ReLU -> Linear(bits);
    ``vts-cls`` maps the cls token with a single Linear(bits). Outputs are real-valued; losses squash them.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        if spec.model not in MODELS:
            raise ValueError(f"unknown model {spec.model!r}; choose one of {MODELS}")
        if spec.bits % 8 or not 8 <= spec.bits <= 1024:
            raise ValueError(f"bits must be a multiple of 8 in [8, 1024], got {spec.bits}")
        timm = import_timm()
        args = spec.backbone_args()
        self.spec = spec
        self.backbone = timm.models.vision_transformer.VisionTransformer(
            in_chans=spec.in_chans, num_classes=0, global_pool="", drop_path_rate=spec.drop_path_rate, **args
        )
        width = self.backbone.embed_dim
        if spec.model == "vts":
            tokens = self.backbone.patch_embed.num_patches + self.backbone.num_prefix_tokens
            self.head = nn.Sequential(
                nn.Flatten(1),
                nn.Dropout(spec.head_dropout),
                nn.Linear(tokens * width, spec.head_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(spec.head_hidden, spec.bits),
            )
        else:
            self.head = nn.Linear(width, spec.bits)
        for m in self.head.modules():
            if isinstance(m, nn.Linear):
                # VTS initialises kaiming-uniform (fan_out) with N(0, 1) biases; trained from scratch that
                # saturates tanh at step 0 (outputs of magnitude ~10) and the hash losses stall, so we use
                # timm's ViT init (truncated normal, std 0.02; zero bias) — see README, "Findings".
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone.forward_features(x)
        return self.head(tokens if self.spec.model == "vts" else tokens[:, 0])


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the hashing model that ``spec`` describes (random init)."""
    return VTSHash(spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
