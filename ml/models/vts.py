"""VTS (docs/METHODS.md, "VTS and VTS-cls"): a timm ViT whose final-norm tokens feed a hash head.

Small preset: 5,435,904 parameters at 64 bits (``vts-cls`` 460,288); throughput: ``python -m bench.models``
(docs/BENCHMARKS.md, "Throughput of the small presets").
"""

from __future__ import annotations

import torch
from torch import nn

from ml.model_spec import ModelSpec
from ml.models.common import init_head, vit_backbone


class VTSHash(nn.Module):
    """VTS: ``vts`` flattens all final-norm tokens (cls included) -> Dropout -> Linear(hidden) -> ReLU ->
    Linear(bits); ``vts-cls`` maps the cls token with a single Linear(bits). Outputs are real-valued ``u``.

    Deviation: VTS initialises its head kaiming-uniform (fan_out) with N(0, 1) biases; trained from scratch that
    saturates tanh at step 0 (outputs of magnitude ~10) and the hash losses stall, so we use timm's ViT init
    (truncated normal, std 0.02; zero bias) — see docs/METHODS.md, "Training from scratch".
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        spec.validate()
        if spec.model not in ("vts", "vts-cls"):
            raise ValueError(f"VTSHash builds 'vts' or 'vts-cls', not {spec.model!r}")
        self.spec = spec
        self.backbone = vit_backbone(spec, spec.backbone_args())
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
        init_head(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone.forward_features(x)
        return self.head(tokens if self.spec.model == "vts" else tokens[:, 0])
