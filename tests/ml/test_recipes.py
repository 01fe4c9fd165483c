"""Profiles fill what a run leaves unset; another model keeps the recipe but not the profile's architecture."""

import pytest

from ml.models import ModelSpec
from ml.recipes import PROFILE_FIELDS, PROFILES, RUN_FIELDS, build_run, resolve_profile
from ml.train_config import TrainConfig


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_profiles_build_a_valid_model(profile):
    r = resolve_profile(profile)
    ModelSpec(model=r["model"], preset=r["preset"], bits=r["bits"], head_hidden=r["head_hidden"]).validate()
    assert r == PROFILES[profile]


def test_given_fields_win_and_none_means_unset():
    r = resolve_profile("quick", epochs=1, lr=None, loss="dch")
    assert r["epochs"] == 1 and r["loss"] == "dch" and r["lr"] == PROFILES["quick"]["lr"]


def test_a_model_without_the_profile_preset_gets_its_small_preset_and_own_head():
    assert resolve_profile("quick", model="transhash")["preset"] == "small-conv"
    r = resolve_profile("quick", model="hybridhash")
    assert r["preset"] == "small" and "head_hidden" not in r and "head_dropout" not in r
    assert r["epochs"] == PROFILES["quick"]["epochs"]
    assert resolve_profile("quick", model="transhash", preset="vit-b16")["preset"] == "vit-b16"


def test_unknown_profile_is_named():
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        resolve_profile("huge")


def test_every_profile_field_is_a_dagster_config_field():
    from assets.model import HashingModelConfig

    assert all(set(p) == set(PROFILE_FIELDS) for p in PROFILES.values())
    assert set(PROFILE_FIELDS) <= set(HashingModelConfig.model_fields)
    assert all(HashingModelConfig.model_fields[k].default is None for k in PROFILE_FIELDS)  # unset -> profile


def test_the_dagster_config_is_built_from_the_dataclass_fields():
    from dataclasses import fields

    from assets.model import HashingModelConfig, RunOptions

    declared = {f.name: f for cls in (ModelSpec, TrainConfig) for f in fields(cls)}
    assert all(f.metadata["description"] for f in declared.values())  # every field says what it is
    config = HashingModelConfig.model_fields
    assert set(config) == set(RunOptions.model_fields) | set(PROFILE_FIELDS) | set(RUN_FIELDS)
    assert not set(RunOptions.model_fields) & set(declared)  # declared in one place each
    assert all(config[k].description for k in config)  # the Dagster UI describes every field
    for name in PROFILE_FIELDS + RUN_FIELDS:
        assert config[name].description.startswith(declared[name].metadata["description"])
    from dataclasses import asdict

    defaults = {
        **asdict(ModelSpec()),
        **asdict(TrainConfig()),
    }  # to_dict leaves out some defaults (model ids)
    assert all(getattr(HashingModelConfig(), k) == defaults[k] for k in RUN_FIELDS)  # the dataclass defaults


def test_the_loss_names_described_are_the_losses():
    from ml.losses import LOSSES
    from ml.train_config import LOSS_NAMES

    assert sorted(LOSS_NAMES.split(" | ")) == sorted(LOSSES)


def test_build_run_takes_run_fields_by_name_and_none_as_unset():
    spec, cfg = build_run("quick", 10, 3, overrides={"depth": 2}, loss_params={"lam": 0.1}, seed=4, lr=None)
    assert spec.overrides == {"depth": 2} and spec.in_chans == 3 and cfg.loss_params == {"lam": 0.1}
    assert cfg.seed == 4 and cfg.lr == PROFILES["quick"]["lr"]
    spec, cfg = build_run("quick", 10, 1, seed=None, amp=None, pretrained=None, overrides=None)
    assert (cfg.seed, cfg.amp, spec.pretrained, spec.overrides) == (0, True, "", {})


def test_the_full_profile_keeps_its_wide_stem_for_every_vit_model():
    for model in ("vts", "vts-cls", "xhashnet", "transhash"):
        r = resolve_profile("full", model=model)
        spec = ModelSpec(model=model, preset=r["preset"], bits=r["bits"])
        assert r["preset"] == "small-conv-wide" and spec.backbone_args()["stem_channels"] == (32, 64)


def test_build_run_passes_amp_through_to_the_training_config():
    assert build_run("quick", 10, 1)[1].amp is True
    assert build_run("quick", 10, 1, amp=False)[1].amp is False


def test_scaled_epochs_keep_the_reference_size_and_follow_the_square_root():
    from ml.recipes import MAX_SCALED_EPOCHS, REFERENCE_TRAIN_IMAGES, scaled_epochs

    assert scaled_epochs(6, REFERENCE_TRAIN_IMAGES) == 6
    assert scaled_epochs(6, REFERENCE_TRAIN_IMAGES // 100) == 60  # 100x fewer images: 10x the epochs
    assert scaled_epochs(6, 5_000_000) == 1 and scaled_epochs(26, 1_000_000) == 6
    assert scaled_epochs(6, 10) == MAX_SCALED_EPOCHS and scaled_epochs(0, 100) == 0


def test_build_run_scales_the_profile_epochs_not_the_given_ones():
    from ml.recipes import REFERENCE_TRAIN_IMAGES

    _, cfg = build_run("full", 10, 1, num_train=REFERENCE_TRAIN_IMAGES)
    assert (cfg.epochs, cfg.clean_epochs) == (PROFILES["full"]["epochs"], PROFILES["full"]["clean_epochs"])
    _, small = build_run("full", 10, 1, num_train=REFERENCE_TRAIN_IMAGES // 25)
    assert (small.epochs, small.clean_epochs) == (5 * PROFILES["full"]["epochs"], 50)
    _, given = build_run("quick", 10, 1, num_train=500, epochs=3)
    assert given.epochs == 3 and given.patience == PROFILES["quick"]["patience"]
    assert build_run("quick", 10, 1)[1].epochs == PROFILES["quick"]["epochs"]  # no size: as declared


def test_scaled_runs_validate_as_often_as_the_profile_plans():
    _, cfg = build_run("quick", 10, 1, num_train=649)  # 55 epochs instead of 6
    assert (cfg.epochs, cfg.val_every) == (55, 9)
    assert build_run("quick", 10, 1, num_train=55_000)[1].val_every == 1
    assert build_run("quick", 10, 1, num_train=5_000_000)[1].val_every == 1  # fewer epochs: each validated
