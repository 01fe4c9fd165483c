"""``model_id`` of a run stays byte-identical: the ids below are those of ``hashing_model-v5`` with the
``instance``, ``instance_temperature`` and ``instance_bits`` fields in the training config (each addition changed
every id once; the training of a run with ``instance`` 0 is unchanged). A change here without a new ``CODE_VERSION`` means stored
models would silently be retrained (or stale ones reused)."""

from __future__ import annotations

import pytest

from assets.model import HashingModelConfig, make_model_id, resolve_run

FINGERPRINT = "0123456789abcdef" * 4  # a fixed, fake catalogue fingerprint


def model_id_of(catalogue: str, num_classes: int, in_chans: int, **config) -> str:
    """The id ``hashing_model`` derives for ``config`` (resolved exactly as the asset resolves it)."""
    spec, train_cfg = resolve_run(HashingModelConfig(**config), num_classes, in_chans)
    return make_model_id(spec.to_dict(), train_cfg.to_dict(), catalogue, FINGERPRINT)


@pytest.mark.parametrize(
    ("catalogue", "num_classes", "in_chans", "config", "expected"),
    [
        ("fashion-mnist", 10, 1, {}, "vts-csq-64b-small-conv-fef4a253"),
        ("fashion-mnist", 10, 1, {"profile": "full"}, "vts-csq-64b-small-conv-wide-4c8d3a21"),
        ("fashion-mnist", 10, 1, {"instance": 0.3}, "vts-csq-64b-small-conv-ea1ae84b"),
        ("pets", 37, 3, {"profile": "full", "seed": 1, "amp": False}, "vts-csq-64b-small-conv-wide-1ab0f9ac"),
        (
            "fashion-mnist",
            10,
            1,
            {"bits": 32, "model": "transhash", "loss": "transhash"},
            "transhash-transhash-32b-small-conv-d82e3fa8",
        ),
        (
            "fashion-mnist",
            10,
            1,
            {"model": "hybridhash", "bits": 16, "epochs": 2, "lr": 1e-3},
            "hybridhash-csq-16b-small-724dadc0",
        ),
        (
            "fashion-mnist",
            10,
            1,
            {"overrides": {"depth": 2}, "loss_params": {"alpha": 0.2}, "loss": "dsh", "head_hidden": 256},
            "vts-dsh-64b-small-conv-10d6b5c9",
        ),
        (
            "shoes",
            5,
            3,
            {
                "model": "xhashnet",
                "preset": "small",
                "overrides": {"bottleneck": 128},
                "loss_params": {"lam": 0.1},
                "flip_tta": False,
                "ema": 0.99,
                "clean_epochs": 2,
                "pretrained": "/weights/x.safetensors",
                "augment": False,
                "force": True,
                "val_queries": 100,
                "min_val_map": 0.1,
            },
            "xhashnet-csq-64b-small-e1966aa7",
        ),
    ],
)
def test_model_id_is_pinned(catalogue, num_classes, in_chans, config, expected):
    assert model_id_of(catalogue, num_classes, in_chans, **config) == expected
