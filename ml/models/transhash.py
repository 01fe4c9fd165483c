"""TransHash (docs/METHODS.md, "TransHash"): a ViT with one global and K local hash branches sharing its last block.

No code was published; this follows the reading given in docs/METHODS.md, "TransHash". The first L-1 timm blocks run over
``[cls; p_1..p_N]``. Global branch: the last block over the whole sequence -> final norm -> cls -> Linear(B/2).
Local branches: the N patch tokens (raster order) are cut into K contiguous groups (``torch.tensor_split``, so
the first N mod K groups hold one token more when K does not divide N); group k runs through the *same* last block
as ``[cls; group_k]`` (cls taken before the last block) -> final norm -> cls -> its own Linear(B/(2K)).
``u = concat(global B/2, local_1 .. local_K)``, so B must be divisible by 2K. The siamese streams of the paper
share weights, which is what pairs within one batch give, so the model itself is single-stream.

Presets: ``vit-b16`` (224 px, K = 4: four groups of 49 patches, batched through the last block) and ``small``
(28 px, patch 4 -> 49 patches, width 96, depth 4, 3 heads, K = 4: groups of 13/12/12/12 tokens, looped).

Small preset: 460,288 parameters at 64 bits; throughput: ``python -m bench.models`` (docs/BENCHMARKS.md,
"Throughput of the small presets").
"""

from __future__ import annotations

import torch
from torch import nn

from ml.model_spec import ModelSpec
from ml.models.common import init_head, vit_backbone


class TransHash(nn.Module):
    """Global + K local hash branches over a timm ViT; ``forward`` returns real-valued ``u`` (n, bits)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        spec.validate()
        args = spec.backbone_args()
        groups = int(args["groups"])
        if groups < 1 or spec.bits % (2 * groups):
            raise ValueError(
                f"TransHash needs bits B divisible by 2K (B/2 global bits + K local branches of B/(2K) bits); "
                f"got B={spec.bits}, K={groups}"
            )
        self.spec = spec
        self.groups = groups
        self.backbone = vit_backbone(spec, args)
        if len(self.backbone.blocks) < 1:
            raise ValueError("TransHash needs depth >= 1 (the last block is shared by the branches)")
        num_patches = self.backbone.patch_embed.num_patches
        if groups > num_patches:
            raise ValueError(f"TransHash: K={groups} local groups but only {num_patches} patch tokens")
        width = self.backbone.embed_dim
        self.global_head = nn.Linear(width, spec.bits // 2)
        self.local_heads = nn.ModuleList(nn.Linear(width, spec.bits // (2 * groups)) for _ in range(groups))
        init_head(self.global_head)
        init_head(self.local_heads)

    def tokens_before_last_block(self, x: torch.Tensor) -> torch.Tensor:
        """timm's ``forward_features`` up to (not including) the last block: (n, prefix + N, width)."""
        bb = self.backbone
        x = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(x))))
        for blk in bb.blocks[:-1]:
            x = blk(x)
        return x

    def branch_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Final-norm cls features: global (n, width) and local (n, K, width)."""
        bb = self.backbone
        last, npt = bb.blocks[-1], bb.num_prefix_tokens
        h = self.tokens_before_last_block(x)
        g = bb.norm(last(h)[:, 0])
        prefix, patches = h[:, :npt], h[:, npt:]
        n, num, width = patches.shape
        if num % self.groups == 0:  # equal groups: one batched call of the last block
            size = num // self.groups
            grouped = patches.reshape(n * self.groups, size, width)
            pre = prefix.unsqueeze(1).expand(n, self.groups, npt, width).reshape(n * self.groups, npt, width)
            loc = last(torch.cat([pre, grouped], dim=1))[:, 0].reshape(n, self.groups, width)
        else:
            chunks = torch.tensor_split(patches, self.groups, dim=1)
            loc = torch.stack([last(torch.cat([prefix, c], dim=1))[:, 0] for c in chunks], dim=1)
        return g, bb.norm(loc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, loc = self.branch_features(x)
        local_bits = [head(loc[:, k]) for k, head in enumerate(self.local_heads)]
        return torch.cat([self.global_head(g), *local_bits], dim=1)
