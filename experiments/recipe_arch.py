"""Prototype architectures of ``recipe_sweep.py`` (CViT: timm ``ConvStem`` + ViT; HViT: VGG stem + ViT, which
became ``vts``'s ``small-conv`` preset); run alone it prints each CViT's size and train img/s in fp32 and bf16:

    .venv/bin/python -m experiments.recipe_arch   # ~2 min on 2 cores
"""

from functools import partial

import torch
from torch import nn

from ml.timm_compat import import_timm

timm = import_timm()
HybridEmbed = timm.layers.HybridEmbed
ConvStem = timm.models.vision_transformer_hybrid.ConvStem


class CViT(nn.Module):
    def __init__(
        self,
        bits=64,
        width=128,
        depth=4,
        heads=4,
        stem=(32, 64, 128),
        strides=(1, 2, 2),
        pool="cls",
        mlp=4.0,
        dp=0.0,
    ):
        super().__init__()
        stem_mod = ConvStem(
            in_chans=1,
            depth=len(stem),
            channels=stem,
            stride=strides,
            norm_layer=nn.BatchNorm2d,
            act_layer=nn.GELU,
        )
        embed = partial(HybridEmbed, backbone=stem_mod, patch_size=1)
        self.backbone = timm.models.vision_transformer.VisionTransformer(
            img_size=28,
            patch_size=1,
            in_chans=1,
            num_classes=0,
            global_pool="",
            embed_dim=width,
            depth=depth,
            num_heads=heads,
            mlp_ratio=mlp,
            embed_layer=embed,
            drop_path_rate=dp,
            class_token=(pool == "cls"),
        )
        self.pool = pool
        self.head = nn.Linear(width, bits)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        t = self.backbone.forward_features(x)
        return self.head(t[:, 0] if self.pool == "cls" else t.mean(1))


def bench(m, bs=128, steps=6, bf16=False, cl=False):
    import time

    x = torch.randn(bs, 1, 28, 28)
    opt = torch.optim.AdamW(m.parameters())
    if cl:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    best = 0
    for r in range(3):
        t = time.perf_counter()
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                u = m(x)
            loss = u.float().pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if r:
            best = max(best, bs * steps / (time.perf_counter() - t))
    return best


def vgg_stem(chans=(32, 64), in_chans=1):
    """(conv-BN-ReLU x2, maxpool) per stage: 28 -> 14 -> 7."""
    layers, c = [], in_chans
    for co in chans:
        layers += [
            nn.Conv2d(c, co, 3, padding=1, bias=False),
            nn.BatchNorm2d(co),
            nn.ReLU(inplace=True),
            nn.Conv2d(co, co, 3, padding=1, bias=False),
            nn.BatchNorm2d(co),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        c = co
    return nn.Sequential(*layers)


class HViT(nn.Module):
    def __init__(
        self, bits=64, width=128, depth=1, heads=4, chans=(32, 64), head="flat", hidden=512, drop=0.3, mlp=2.0
    ):
        super().__init__()
        embed = partial(HybridEmbed, backbone=vgg_stem(chans), patch_size=1)
        self.backbone = timm.models.vision_transformer.VisionTransformer(
            img_size=28,
            patch_size=1,
            in_chans=1,
            num_classes=0,
            global_pool="",
            embed_dim=width,
            depth=depth,
            num_heads=heads,
            mlp_ratio=mlp,
            embed_layer=embed,
            class_token=False,
        )
        self.kind = head
        if head == "flat":
            self.head = nn.Sequential(
                nn.Flatten(1),
                nn.Dropout(drop),
                nn.Linear(49 * width, hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, bits),
            )
        else:
            self.head = nn.Linear(width, bits)
        for m in self.head.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        t = self.backbone.forward_features(x)
        return self.head(t if self.kind == "flat" else t.mean(1))


if __name__ == "__main__":
    torch.set_num_threads(2)
    cfgs = {
        "cvit128d4": dict(width=128, depth=4, heads=4),
        "cvit96d4": dict(width=96, depth=4, heads=3, stem=(24, 48, 96)),
        "cvit128d6": dict(width=128, depth=6, heads=4),
        "cvit192d4": dict(width=192, depth=4, heads=4, stem=(48, 96, 192)),
    }
    for name, c in cfgs.items():
        m = CViT(**c)
        n = sum(p.numel() for p in m.parameters())
        print(name, n, f"fp32 {bench(m):.0f}", f"bf16 {bench(CViT(**c), bf16=True):.0f}", flush=True)
