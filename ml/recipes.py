"""Training profiles: the model and recipe that ``--profile quick|full`` stands for (README, "Profiles").

A profile fills every field a run leaves unset (``None``). Its architecture part (``ARCHITECTURE_FIELDS``)
applies to any model that has the profile's preset (the ViT models all have ``small-conv`` and
``small-conv-wide``); another model (HybridHash) gets its ``small`` preset and its own head defaults, with the
profile's optimisation recipe. Figures behind each choice: docs/BENCHMARKS.md, "Quality".

The fields themselves (type, default, description) are declared once, in ``ModelSpec`` and ``TrainConfig``;
``PROFILE_FIELDS`` and ``RUN_FIELDS`` name the ones a run may set (the Dagster config of ``hashing_model`` is
built from them). Torch-free, so that the Dagster definitions can import it.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from ml.model_spec import NO_WEIGHTS, PRESET_WEIGHTS, PRESETS, ModelSpec
from ml.train_config import TrainConfig

ARCHITECTURE_FIELDS = ("preset", "head_hidden", "head_dropout")
# The profiles' epochs are those of a catalogue with this many training images (Fashion-MNIST's 60,000 less the
# 5,000 held out for validation); ``scaled_epochs`` adapts them to another size.
REFERENCE_TRAIN_IMAGES = 55_000
MAX_SCALED_EPOCHS = 300

_HYBRID_VTS = dict(model="vts", preset="small-conv", head_hidden=512, head_dropout=0.3)
_RECIPE = dict(
    loss="csq",
    bits=64,
    batch_size=128,
    optimizer="adamw",
    lr=2e-3,
    weight_decay=0.05,
    schedule="cosine",
    warmup_steps=200,
    classifier=1.0,
    label_smoothing=0.1,
    flip_tta=True,
    clean_lr=1e-3,
    patience=10,
)

PROFILES: dict[str, dict[str, Any]] = {
    # <= 15 min end to end on 2 CPU cores (`make run`)
    "quick": {**_HYBRID_VTS, **_RECIPE, "epochs": 6, "erase": 0.0, "ema": 0.0, "clean_epochs": 0},
    # the wider stem on a longer schedule with random erasing and weight EMA, then 10 clean epochs: <= 30 training
    # minutes on 2 cores (the clean epochs code the training set, which is the search database: docs/BENCHMARKS.md)
    "full": {
        **_HYBRID_VTS,
        "preset": "small-conv-wide",
        **_RECIPE,
        "epochs": 26,
        "erase": 0.25,
        "ema": 0.999,
        "clean_epochs": 10,
    },
    # a frozen ImageNet ViT-S/16 at 224 px (its features cached per catalogue, ml.features), the cls token's hash
    # layer trained on them: photos of 32-224 px on CPUs; --preset transfer-vitt16 for 3.5x the extraction rate
    "transfer": {
        **_HYBRID_VTS,
        "model": "vts-cls",
        "preset": "transfer-vits16",
        **_RECIPE,
        "batch_size": 256,
        "lr": 1e-3,
        "warmup_steps": 50,
        "flip_tta": False,
        "epochs": 30,
        "erase": 0.0,
        "ema": 0.0,
        "clean_epochs": 0,
    },
}
PROFILE_FIELDS = tuple(PROFILES["quick"])  # the run fields a profile fills (every profile sets the same ones)
# The other fields a run sets (no profile does); the remaining ones come from the catalogue or keep their default.
RUN_FIELDS = (
    "overrides",
    "pretrained",
    "loss_params",
    "seed",
    "augment",
    "amp",
    "instance",
    "instance_temperature",
    "instance_koleo",
    "instance_bits",
    "instance_loss",
)


def resolve_profile(profile: str, **given: Any) -> dict[str, Any]:
    """The profile's fields overridden by every ``given`` field that is not ``None`` (see the module doc)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    base = dict(PROFILES[profile])
    chosen = {k: v for k, v in given.items() if v is not None}
    if base["preset"] not in PRESETS.get(chosen.get("model", base["model"]), {}):
        for key in ARCHITECTURE_FIELDS:
            base.pop(key)
        base["preset"] = "small"
    return {**base, **chosen}


def scaled_epochs(epochs: int, num_train: int) -> int:
    """A profile's ``epochs`` (set for ``REFERENCE_TRAIN_IMAGES``) for a catalogue of ``num_train`` training
    images: scaled by sqrt(reference / num_train), so a catalogue 100 times smaller trains 10 times more epochs
    (10 times fewer steps) and one 20 times larger about a fifth of the epochs; between 1 and
    ``MAX_SCALED_EPOCHS`` (0 stays 0)."""
    if epochs <= 0 or num_train <= 0:
        return max(0, epochs)
    scaled = round(epochs * math.sqrt(REFERENCE_TRAIN_IMAGES / num_train))
    return min(MAX_SCALED_EPOCHS, max(1, scaled))


def build_run(
    profile: str, num_classes: int, in_chans: int, num_train: int | None = None, **given: Any
) -> tuple[ModelSpec, TrainConfig]:
    """The validated ``ModelSpec`` and ``TrainConfig`` of one training run: ``resolve_profile(profile, **given)``
    (a field left ``None`` takes the profile's value, else the dataclass default) plus the catalogue's classes and
    channels. With ``num_train``, the profile's ``epochs`` and ``clean_epochs`` (those a run leaves unset) are
    ``scaled_epochs`` for that many training images, validated as often as the profile's epochs. Paper and transfer presets take their ImageNet weights
    unless ``pretrained`` names others or ``"none"``."""
    r = resolve_profile(profile, **given)
    r |= preset_weights(r["preset"], r.get("pretrained"))
    if num_train is not None:
        planned = r["epochs"]
        for key in ("epochs", "clean_epochs"):
            if given.get(key) is None and key in PROFILES[profile]:
                r[key] = scaled_epochs(r[key], num_train)
        if r["epochs"] > planned:  # as many validations as the profile plans, however many epochs
            r["val_every"] = r["epochs"] // planned
    spec = ModelSpec(**_fields_of(ModelSpec, r), num_classes=num_classes, in_chans=in_chans)
    spec.validate()
    return spec, TrainConfig(**_fields_of(TrainConfig, r))


def preset_weights(preset: str, pretrained: str | None) -> dict[str, Any]:
    """``pretrained`` (and ``pretrained_strict``) of a run: the weights it names, none for ``"none"``, else
    (unset or empty) the preset's ImageNet weights (``ml.model_spec.PRESET_WEIGHTS``; none for CPU presets)."""
    if pretrained and pretrained.strip().lower() == NO_WEIGHTS:
        return {"pretrained": ""}
    if pretrained:
        return {"pretrained": pretrained}
    name, strict = PRESET_WEIGHTS.get(preset, ("", True))
    return {"pretrained": name, "pretrained_strict": strict}


def _fields_of(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are fields of the dataclass ``cls`` (dicts copied)."""
    names = {f.name for f in fields(cls)}
    return {k: dict(v) if isinstance(v, dict) else v for k, v in values.items() if k in names}
