"""HybridHash (docs/METHODS.md, "HybridHash"): NesT stages of block-local attention, interaction modules, a hybrid hash layer.

Built on timm's ``Nest`` (its patch embedding, ``NestLevel`` stages with per-block position embeddings,
blockify -> block-local ``TransformerLayer`` s -> deblockify, and the final channel LayerNorm). Each ``ConvPool``
between stages is replaced by the paper's interaction module: a local 3x3 conv branch plus a global branch (1x1
conv without bias -> average pool with the previous stage's block size, i.e. one "block token" per block -> learned
position embedding -> multi-head attention over the block tokens (no MLP, no residual) -> bilinear upsampling back),
added, LayerNorm over channels, 3x3 max-pool stride 2. The hash layer is the last, modified interaction: (1x3) then
(3x1) conv + the pooled-token branch (one token: a value and output projection), added, 3x3 max-pool stride 2,
1x1 conv -> bits, global average pool. Module names follow NesT (``levels.i.pool.conv``, ``levels.i.pool.norm``)
so timm NesT weights load with ``strict=False``, as the paper does from ``jx_nest_base``.

Deviations from the released code (``shuaichaochao/HybridHash``, its ``model`` package):
- no final tanh: ``forward`` returns pre-tanh ``u``; our losses apply tanh (codes are ``u >= 0``, the sign of tanh).
- the block-token attention flattens the pooled map as ``(n, C, h, w) -> (n, h*w, C)``; the released code reshapes
  the NCHW tensor directly, which mixes channels and positions when there is more than one token. We use timm's
  ``Attention`` (fused SDPA; same ``qkv``/``proj`` parameters, qkv without bias).
- pool/upsample sizes follow the preset's block size instead of a hard-coded 14 (equal for ``nest-b``).
- the block-token position embeddings start at zero, as released (they are never initialised there).

Presets: ``nest-b`` (224 px, patch 4 -> 56x56, widths 128/256/512, heads 4/8/16, depths 2/2/15, blocks 14x14 so
T = 16, 4, 1; interaction heads 8; the paper trains with drop-path 0.5: set ``ModelSpec.drop_path_rate``) and
``small`` (28 px, patch 2 -> 14x14, blocks 7x7 so T = 4, 1; widths 48/96, heads 2/4, depths 1/3, interaction
heads 4).

Small preset: 560,800 parameters at 64 bits; throughput: ``python -m bench.models`` (docs/BENCHMARKS.md,
"Throughput of the small presets").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ml.model_spec import ModelSpec
from ml.models.common import init_head
from ml.timm_compat import import_timm


class BlockAttention(nn.Module):
    """timm NesT's block-local attention with the same modules (``qkv``, ``proj``) and output channel order,
    run as one 4-D ``scaled_dot_product_attention`` over (n*T) sequences: timm passes 5-D tensors, which take
    SDPA's slower math path on CPU (measured +21% inference, +12% training img/s on the small preset)."""

    def __init__(self, src: nn.Module):
        super().__init__()
        self.num_heads = src.num_heads
        self.qkv, self.attn_drop, self.proj, self.proj_drop = src.qkv, src.attn_drop, src.proj, src.proj_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, length, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(n * t, length, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        # (n*T, H, N, C') -> (n, T, N, C', H): NesT's channel order, which its pretrained ``proj`` expects
        return self.proj_drop(self.proj(x.permute(0, 2, 3, 1).reshape(n, t, length, c)))


class BlockTokenAttention(nn.Module):
    """Average-pool to one token per ``block`` x ``block`` region, add position embeddings, attend over the
    tokens (timm ``Attention``, no MLP, no residual), upsample bilinearly back to the input size."""

    def __init__(self, dim: int, num_tokens: int, num_heads: int, block: int):
        super().__init__()
        timm = import_timm()
        self.block = block
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        self.attn = timm.layers.Attention(dim, num_heads=num_heads, qkv_bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, height, width = x.shape
        t = F.avg_pool2d(x, self.block)
        h, w = t.shape[-2:]
        t = self.attn(t.flatten(2).transpose(1, 2) + self.pos_embed)
        t = t.transpose(1, 2).reshape(n, c, h, w)
        return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)


class InteractionModule(nn.Module):
    """Replaces NesT's ``ConvPool``: (3x3 conv + block-token attention of a 1x1 conv) -> LayerNorm -> max-pool."""

    def __init__(self, in_dim: int, out_dim: int, num_tokens: int, num_heads: int, block: int):
        super().__init__()
        timm = import_timm()
        self.conv = nn.Conv2d(in_dim, out_dim, 3, padding=1)
        self.conv_glo = nn.Conv2d(in_dim, out_dim, 1, bias=False)
        self.global_attention = BlockTokenAttention(out_dim, num_tokens, num_heads, block)
        self.norm = timm.layers.LayerNorm2d(out_dim)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x) + self.global_attention(self.conv_glo(x))
        return self.pool(self.norm(x))


class HashLayer(nn.Module):
    """(1x3)+(3x1) convs + one-token attention branch -> max-pool -> 1x1 conv to bits -> global average pool."""

    def __init__(self, dim: int, bits: int, num_heads: int, block: int):
        super().__init__()
        self.conv_s1 = nn.Conv2d(dim, dim, (1, 3), padding=(0, 1))
        self.conv_s2 = nn.Conv2d(dim, dim, (3, 1), padding=(1, 0))
        self.global_attention = BlockTokenAttention(dim, 1, num_heads, block)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv_out = nn.Conv2d(dim, bits, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_s2(self.conv_s1(x)) + self.global_attention(x)
        return self.conv_out(self.pool(x)).mean(dim=(2, 3))


class HybridHash(nn.Module):
    """timm NesT with interaction modules between stages and the hybrid hash layer; ``u`` is pre-tanh."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        spec.validate()
        args = spec.backbone_args()
        dims, heads, depths = (tuple(int(v) for v in args[k]) for k in ("embed_dims", "num_heads", "depths"))
        if not len(dims) == len(heads) == len(depths) >= 1:
            raise ValueError(
                f"HybridHash: embed_dims {dims}, num_heads {heads}, depths {depths} differ in length"
            )
        img, patch = int(args["img_size"]), int(args["patch_size"])
        levels = len(dims)
        grid, per_side = img // patch, 2 ** (levels - 1)
        if img % patch or grid % per_side:
            raise ValueError(
                f"HybridHash: img_size {img} / patch_size {patch} must give a grid divisible into "
                f"{per_side}x{per_side} blocks for {levels} stages"
            )
        ih = int(args["interaction_heads"])
        if any(d % ih for d in (*dims[1:], dims[-1])):
            raise ValueError(
                f"HybridHash: interaction_heads {ih} must divide the embed dims after stage 1 {dims}"
            )
        timm = import_timm()
        self.spec = spec
        self.backbone = timm.models.nest.Nest(
            img_size=img,
            in_chans=spec.in_chans,
            patch_size=patch,
            num_levels=levels,
            embed_dims=dims,
            num_heads=heads,
            depths=depths,
            mlp_ratio=float(args["mlp_ratio"]),
            qkv_bias=True,
            num_classes=0,
            drop_path_rate=spec.drop_path_rate,
        )
        for level in self.backbone.levels:
            for layer in level.transformer_encoder:
                layer.attn = BlockAttention(layer.attn)
        block = self.backbone.block_size
        for i in range(1, levels):  # NesT's ConvPool -> interaction module (1 block token per previous block)
            module = InteractionModule(dims[i - 1], dims[i], self.backbone.num_blocks[i - 1], ih, block)
            init_head(module)
            self.backbone.levels[i].pool = module
        self.hash_layer = HashLayer(dims[-1], spec.bits, ih, block)
        init_head(self.hash_layer)

    def stage_layout(self) -> list[dict[str, int]]:
        """Per stage: feature-map side, block side and number of blocks T."""
        bb = self.backbone
        return [
            dict(map_size=bb.block_size * math.isqrt(t), block_size=bb.block_size, blocks=t)
            for t in bb.num_blocks
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hash_layer(self.backbone.forward_features(x))
