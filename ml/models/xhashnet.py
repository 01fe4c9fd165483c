"""X-HashNet (docs/METHODS.md, "X-HashNet"): DeiT-Small (timm ``VisionTransformer``) -> cls token -> bottleneck hash head.

Only the abstract is public: "DeiT-Small backbone with a supervised bottleneck hash head". The head is our
choice: ``Linear(width -> bottleneck) -> LayerNorm -> GELU -> Dropout(head_dropout) -> Linear(bottleneck -> B)``
(bottleneck 256, as docs/METHODS.md describes: 384 -> 256 -> B). The classifier of its multi-objective loss lives in
the loss, not here. Presets: ``deit-s`` (224 px, patch 16, width 384, depth 12, 6 heads; DeiT-S weights load with
``load_pretrained``) and ``small`` (28 px, patch 4, width 96, depth 4, 3 heads, bottleneck 256).


Small preset: 495,872 parameters at 64 bits; throughput: ``python -m bench.models`` (docs/BENCHMARKS.md,
"Throughput of the small presets").
"""

from __future__ import annotations

import torch
from torch import nn

from ml.model_spec import ModelSpec
from ml.models.common import init_head, vit_backbone


class XHashNet(nn.Module):
    """DeiT-S cls token -> bottleneck MLP -> ``u`` of shape (n, bits), real-valued (losses squash)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        spec.validate()
        args = spec.backbone_args()
        self.spec = spec
        self.backbone = vit_backbone(spec, args)
        width, hidden = self.backbone.embed_dim, int(args["bottleneck"])
        self.head = nn.Sequential(
            nn.Linear(width, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Dropout(spec.head_dropout),
            nn.Linear(hidden, spec.bits),
        )
        init_head(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x)[:, 0])
