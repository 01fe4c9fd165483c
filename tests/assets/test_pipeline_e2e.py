"""The whole asset graph, materialised in-process on a tiny slice of real Fashion-MNIST."""

from __future__ import annotations

import json

import numpy as np

from storage.codes import read_codes
from storage.index import current, load_index, search
from tests.conftest import needs_fashion_mnist


@needs_fashion_mnist
def test_graph_materialises_and_checks_pass(tiny_run):
    result, _, _ = tiny_run
    assert result.success
    materialised = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert materialised == {
        "catalogue",
        "hashing_model",
        "packed_codes",
        "model_evaluation",
        "binary_index",
        "retrieval_diagnostics",
    }
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        "model_quality": True,
        "codes_complete": True,
        "index_consistent": True,
        "map_regression": True,  # the first model: no baseline to compare with
        "eval_map_regression": True,
        "bit_balance_drift": True,
        "collision_rate": True,
        "copy_recall_drop": True,  # no copies protocol in this run: not measured
    }


@needs_fashion_mnist
def test_artifacts_agree(tiny_run):
    _, root, db = tiny_run
    pointer = current(root, "fashion-mnist")
    row_ids, codes, meta = read_codes(root, "fashion-mnist", pointer["model_id"])
    assert len(row_ids) == 700 + 200  # every catalogue image, queries included
    assert codes.shape == (900, 4) and meta.bits == 32
    index, manifest = load_index(root, "fashion-mnist")
    assert index.ntotal == manifest.ntotal == 700  # database = the training images
    cols, rows = db.query(
        "SELECT count(*) FROM metrics m JOIN runs r USING (run_id) WHERE r.kind = 'evaluation'"
    )
    assert rows[0][0] > 10
    cols, rows = db.query("SELECT count(*) FROM search_latency")
    assert rows[0][0] == 2
    cols, rows = db.query("SELECT count(*) FROM training_log")
    assert rows[0][0] == 2
    card = json.loads(root.read_text("models", pointer["model_id"], "model.json"))
    assert card["evaluation"]["map@100"] > 0.3


@needs_fashion_mnist
def test_database_image_finds_itself_first(tiny_run):
    _, root, _ = tiny_run
    pointer = current(root, "fashion-mnist")
    row_ids, codes, _ = read_codes(root, "fashion-mnist", pointer["model_id"])
    index, _ = load_index(root, "fashion-mnist")
    probe = int(np.flatnonzero(row_ids < 60_000)[5])
    dist, ids = search(index, codes[probe : probe + 1], 10)
    assert dist[0, 0] == 0
    assert row_ids[probe] in ids[0][dist[0] == 0]
