"""``vitrieve bench shards``: one-step and sharded encoding of the same catalogue in one run, codes compared,
images/s of each recorded in DuckDB (a stand-in encoder: the bench's plumbing, not its speed)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

from bench.shards import run_shard_bench
from storage.catalogue import write_catalogue
from storage.diagnostics import DiagnosticsDB
from storage.fs import StorageRoot
from tests.conftest import needs_fashion_mnist

BITS, MODEL = 32, "fake-encoder-32b"
_W = np.random.default_rng(0).standard_normal((28 * 28, BITS)).astype(np.float32)


def fake_encode(model, images, device, batch_size=256, progress=False, transform=None):
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0 - 0.5
    return np.packbits(x @ _W >= 0, axis=1)


@needs_fashion_mnist
def test_bench_shards_compares_codes_and_records_both_paths(tmp_path, monkeypatch, capsys):
    from assets import codes as codes_asset
    from storage.ingest_idx import FASHION_MNIST_DIR, idx_catalogue

    model = SimpleNamespace(spec=SimpleNamespace(img_size=28, in_chans=1))
    monkeypatch.setattr("ml.encode.encode_images", fake_encode)
    monkeypatch.setattr(codes_asset, "load_model", lambda root, model_id, device: (model, {"bits": BITS}))
    root = StorageRoot(tmp_path / "data")
    root.write_text(json.dumps({"bits": BITS, "model_id": MODEL}), "models", MODEL, "model.json")
    table, info = idx_catalogue(
        "sh", FASHION_MNIST_DIR, validation_size=50, seed=0, train_limit=300, query_limit=40
    )
    write_catalogue(root, table, info)
    shard_rows = int(table["row_id"].to_numpy().max()) // 3 + 1
    db = str(tmp_path / "b.duckdb")
    assert run_shard_bench(root.uri, db, "sh", shard_rows, rounds=1, model_id=MODEL) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["codes_identical"] is True and row["images"] == table.num_rows
    assert row["one-step/encode_steps"] == 1 and row["sharded/encode_steps"] >= 3
    assert row["sharded/encode_seconds"] <= row["sharded/wall_seconds"]
    _, rows = DiagnosticsDB(db).query(
        "SELECT m.name FROM metrics m JOIN runs r USING (run_id) WHERE r.kind = 'bench-shards'"
    )
    assert {"sharded_over_one_step/images_per_s", "one-step/images_per_s"} <= {r[0] for r in rows}


def test_bench_shards_needs_a_published_index(tmp_path, capsys):
    assert run_shard_bench(str(tmp_path), str(tmp_path / "b.duckdb"), "nothing", 10) == 2
    assert "has no published index" in capsys.readouterr().err
