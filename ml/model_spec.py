"""``ModelSpec`` and the presets of every hashing model (kept free of torch, outside ``ml.models``, so that specs
are cheap to build and the Dagster definitions can read them)."""

from __future__ import annotations

from copy import deepcopy
from dataclasses import asdict, dataclass, field
from typing import Any

from ml.bits import MAX_BITS, check_bits

MODELS = ("vts", "vts-cls", "xhashnet", "transhash", "hybridhash")

# ViT-B at 224 px (VTS's backbones; TransHash uses B/16).
_VIT_B16 = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0)
_VIT_B32 = dict(img_size=224, patch_size=32, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0)
# The CPU preset of the VTS models (unchanged from the first release: 28 px, 49 patches of 4x4).
_VTS_SMALL = dict(img_size=28, patch_size=4, embed_dim=96, depth=4, num_heads=3, mlp_ratio=4.0)
# The hybrid CPU preset (the quick profile's): a two-stage VGG conv stem (28 -> 7 px, 24/48 channels) whose 49
# cells are the tokens of one ViT block (width 96); see ``ml.models.common.conv_stem`` and docs/BENCHMARKS.md.
_VTS_SMALL_CONV = dict(
    img_size=28, patch_size=1, embed_dim=96, depth=1, num_heads=3, mlp_ratio=2.0, stem_channels=(24, 48)
)
# The same with a wider stem (32/64 channels; the full profile's): ~7 % slower to train, codes a little better.
_VTS_SMALL_CONV_WIDE = {**_VTS_SMALL_CONV, "stem_channels": (32, 64)}

# Per model, per preset: every constructor argument the preset fixes. ``ModelSpec.overrides`` may replace any of
# these keys (and only these). Keys that are not timm backbone arguments size the head: ``bottleneck``
# (X-HashNet's hidden hash width), ``groups`` (TransHash's K local branches) and ``interaction_heads``
# (HybridHash's heads in the block-token attention); ``stem_channels`` (the ViT models' ``small-conv``) puts a conv stem before the ViT.
# "small" presets are sized for 28-32 px on a 2-core CPU (their img/s: docs/BENCHMARKS.md); the others are the papers' 224 px GPU backbones.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "vts": {
        "small": _VTS_SMALL,
        "small-conv": _VTS_SMALL_CONV,
        "small-conv-wide": _VTS_SMALL_CONV_WIDE,
        "vit-b16": _VIT_B16,
        "vit-b32": _VIT_B32,
    },
    "vts-cls": {
        "small": _VTS_SMALL,
        "small-conv": _VTS_SMALL_CONV,
        "small-conv-wide": _VTS_SMALL_CONV_WIDE,
        "vit-b16": _VIT_B16,
        "vit-b32": _VIT_B32,
    },
    "xhashnet": {
        "small": dict(
            img_size=28, patch_size=4, embed_dim=96, depth=4, num_heads=3, mlp_ratio=4.0, bottleneck=256
        ),
        "small-conv": {**_VTS_SMALL_CONV, "bottleneck": 256},
        "small-conv-wide": {**_VTS_SMALL_CONV_WIDE, "bottleneck": 256},
        "deit-s": dict(
            img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, bottleneck=256
        ),
    },
    "transhash": {
        "small": dict(img_size=28, patch_size=4, embed_dim=96, depth=4, num_heads=3, mlp_ratio=4.0, groups=4),
        "small-conv": {**_VTS_SMALL_CONV, "groups": 4},
        "small-conv-wide": {**_VTS_SMALL_CONV_WIDE, "groups": 4},
        "vit-b16": {**_VIT_B16, "groups": 4},
    },
    "hybridhash": {
        "small": dict(
            img_size=28,
            patch_size=2,
            embed_dims=(48, 96),
            num_heads=(2, 4),
            depths=(1, 3),
            mlp_ratio=4.0,
            interaction_heads=4,
        ),
        "nest-b": dict(
            img_size=224,
            patch_size=4,
            embed_dims=(128, 256, 512),
            num_heads=(4, 8, 16),
            depths=(2, 2, 15),
            mlp_ratio=4.0,
            interaction_heads=8,
        ),
    },
}
# Transfer presets (``ml.transfer``): a timm ViT at 224 px with ImageNet weights, kept frozen; ``train_blocks`` of its
# last blocks train with the hash head (0: the head alone, on cached features). For photos of 32-224 px on CPUs
# (images are resized to 224 px): ViT-Ti/16 (1.3 GFLOPs an image) and ViT-S/16 (4.6 GFLOPs).
_VIT_TI16 = dict(
    img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0, train_blocks=0
)
_VIT_S16 = dict(
    img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, train_blocks=0
)
PRESETS["vts-cls"] |= {"transfer-vitt16": _VIT_TI16, "transfer-vits16": _VIT_S16}
# The ImageNet weights each preset takes, as its paper does, unless a run names others (``--pretrained``, a
# timm name, hub id, file or URI) or ``none``: (timm name, strict key match; HybridHash's backbone and timm's
# NesT-B differ in a few keys).
NO_WEIGHTS = "none"
PRESET_WEIGHTS: dict[str, tuple[str, bool]] = {
    "vit-b16": ("vit_base_patch16_224.augreg_in21k_ft_in1k", True),
    "vit-b32": ("vit_base_patch32_224.augreg_in21k_ft_in1k", True),
    "deit-s": ("deit_small_patch16_224.fb_in1k", True),
    "nest-b": ("nest_base_jx.goog_in1k", False),
    "transfer-vitt16": ("vit_tiny_patch16_224.augreg_in21k_ft_in1k", True),
    "transfer-vits16": ("vit_small_patch16_224.augreg_in21k_ft_in1k", True),
}
# Every preset name of any model, CPU presets first (``--preset`` choices; ``ModelSpec`` checks the pair).
PRESET_NAMES = tuple(dict.fromkeys(name for presets in PRESETS.values() for name in presets))
# The paper preset each model is published with (``default_preset(model, gpu=True)``).
PAPER_PRESETS = {
    "vts": "vit-b32",
    "vts-cls": "vit-b32",
    "xhashnet": "deit-s",
    "transhash": "vit-b16",
    "hybridhash": "nest-b",
}


def check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {list(MODELS)}")


def default_preset(model: str, gpu: bool = False) -> str:
    """``"small"`` (the CPU preset) unless ``gpu``, then the preset of the model's paper (224 px)."""
    check_model(model)
    return PAPER_PRESETS[model] if gpu else "small"


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model: stored (as JSON) in ``model.json`` beside the weights.

    Each field's description is declared here once (``dataclasses.field`` metadata ``"description"``); the Dagster
    config of ``hashing_model`` is built from it. ``pretrained`` weights are loaded by ``build_model``. ``flip_tta``
    suits catalogues where mirroring keeps the class (clothes, products, photos), not text.
    """

    model: str = field(default="vts", metadata={"description": "hashing model: " + " | ".join(MODELS)})
    preset: str = field(
        default="small",
        metadata={
            "description": "backbone size: small / small-conv (28-32 px, CPU) or the model's paper preset (224 px)"
        },
    )
    bits: int = field(
        default=64, metadata={"description": f"code length in bits: a multiple of 8 in [8, {MAX_BITS}]"}
    )
    in_chans: int = field(default=1, metadata={"description": "image channels (the catalogue's)"})
    num_classes: int = field(default=10, metadata={"description": "label classes (the catalogue's)"})
    head_hidden: int = field(default=1024, metadata={"description": "hidden width of the VTS hash head"})
    head_dropout: float = field(
        default=0.5, metadata={"description": "dropout of the VTS / X-HashNet hash head"}
    )
    drop_path_rate: float = field(default=0.0, metadata={"description": "stochastic depth of the backbone"})
    overrides: dict = field(
        default_factory=dict,
        metadata={"description": "preset fields to replace (only the preset's keys), e.g. {depth: 6}"},
    )
    pretrained: str = field(
        default="",
        metadata={
            "description": "backbone weights: a timm name or hf-hub: id (Hugging Face cache), a .safetensors / "
            ".pth path or fsspec URI, or none; unset: the preset's ImageNet weights (paper and transfer presets)"
        },
    )
    pretrained_strict: bool = field(
        default=True,
        metadata={"description": "false tolerates missing / unexpected weight keys (HybridHash from NesT-B)"},
    )
    flip_tta: bool = field(
        default=False,
        metadata={
            "description": "codes from an image and its mirror image together: sign of u(x) + u(mirrored x)"
        },
    )

    def backbone_args(self) -> dict[str, Any]:
        """The preset's constructor arguments with ``overrides`` applied (head-sizing keys included)."""
        check_model(self.model)
        presets = PRESETS[self.model]
        if self.preset not in presets:
            raise ValueError(
                f"unknown preset {self.preset!r} for model {self.model!r}; choose one of {sorted(presets)}"
            )
        base = presets[self.preset]
        unknown = sorted(set(self.overrides) - set(base))
        if unknown:
            raise ValueError(
                f"unknown override(s) {unknown} for model {self.model!r}; valid keys: {sorted(base)}"
            )
        return {**deepcopy(base), **deepcopy(self.overrides)}

    def validate(self) -> None:
        """Raise ``ValueError`` for an unknown model/preset/override or an unusable code length."""
        self.backbone_args()
        check_bits(self.bits, most=MAX_BITS)

    @property
    def img_size(self) -> int:
        return int(self.backbone_args()["img_size"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
