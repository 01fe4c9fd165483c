"""``hashing_model`` with a transfer preset: trained on cached frozen-backbone features, a model like any other."""

from __future__ import annotations

import json

import dagster as dg

from storage.fs import StorageRoot
from tests.catalogue_factory import write_folder
from tests.tiny_graph import run_graph, tiny_catalogue_config

TRANSFER = {
    "profile": "transfer",
    "preset": "transfer-vitt16",
    "pretrained": "none",  # random weights: no hub in tests
    "overrides": {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
    "epochs": 2,
    "batch_size": 16,
    "warmup_steps": 1,
    "bits": 16,
    "val_queries": 8,
    "val_database": 32,
    "min_val_map": 0.0,
}


def test_hashing_model_trains_a_transfer_preset_on_cached_features(tmp_path):
    src = write_folder(tmp_path / "src", per_class=8)
    (tmp_path / "home").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "home"))
    root, db = str(tmp_path / "root"), str(tmp_path / "diag.duckdb")

    def train(**extra) -> dict:
        ops = {"hashing_model": {"config": TRANSFER | extra}}
        result = run_graph(
            instance, "pets", tiny_catalogue_config(str(src)), root, db, ["catalogue", "hashing_model"], ops
        )
        assert result.success
        (model_id,) = StorageRoot(root).names("models")
        return json.loads(StorageRoot(root).read_text("models", model_id, "model.json"))

    card = train()
    assert card["spec"]["preset"] == "transfer-vitt16" and card["spec"]["pretrained"] == ""
    assert card["features_extracted"] > 0 and len(card["history"]) == 2
    assert StorageRoot(root).names("features", "pets") == [card["feature_cache"]]
    again = train(force=True)  # same backbone: every feature read from the cache
    assert again["features_extracted"] == 0 and again["feature_cache"] == card["feature_cache"]
