"""Attention rollout (Abnar & Zuidema, 2020) for the timm ViT backbones of the hashing models.

timm's ``Attention`` uses fused ``scaled_dot_product_attention`` and never materialises the attention
matrix, so forward hooks capture each block's attention input and recompute softmax(q kᵀ · scale) from its
``qkv`` projection (q/k norms included), the same arithmetic as timm's unfused path.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ml.data import normalise


def vit_of(model: nn.Module) -> nn.Module | None:
    """The timm ``VisionTransformer`` inside a hashing model, or None (e.g. hierarchical backbones)."""
    backbone = getattr(model, "backbone", model)
    blocks = getattr(backbone, "blocks", None)
    if blocks is None or not hasattr(backbone, "patch_embed") or not len(blocks):
        return None
    return backbone if all(hasattr(getattr(b, "attn", None), "qkv") for b in blocks) else None


def _attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Head-averaged attention probabilities (B, N, N) of one timm ``Attention`` on its input ``x``."""
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1).mean(dim=1)


@torch.no_grad()
def attention_rollout(
    model: nn.Module, images: np.ndarray, device: torch.device | str = "cpu"
) -> np.ndarray | None:
    """Rollout of the first prefix token's attention to the patches, (n, grid_h, grid_w) in [0, 1] per image;
    None when the model has no plain ViT backbone. ``images`` are uint8 (n, c, s, s)."""
    vit = vit_of(model)
    if vit is None:
        return None
    inputs: list[torch.Tensor] = []
    hooks = [b.attn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) for b in vit.blocks]
    was_training = model.training
    model.eval()
    try:
        model(normalise(torch.from_numpy(images).to(device)))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    rollout = None
    for block, x in zip(vit.blocks, inputs, strict=True):
        a = _attention(block.attn, x)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], device=a.device)  # residual connection
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    prefix = vit.num_prefix_tokens
    gh, gw = vit.patch_embed.grid_size
    source = rollout[:, 0] if prefix else rollout.mean(dim=1)  # no class token: average over all tokens
    cls = source[:, prefix:].reshape(-1, gh, gw)
    lo = cls.amin(dim=(1, 2), keepdim=True)
    hi = cls.amax(dim=(1, 2), keepdim=True)
    return ((cls - lo) / (hi - lo).clamp_min(1e-12)).float().cpu().numpy()
