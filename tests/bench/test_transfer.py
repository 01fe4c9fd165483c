"""``vitrieve bench transfer`` (bench/transfer.py) on a shrunk backbone: its row lands in DuckDB."""

from __future__ import annotations

import json

import duckdb

from bench.transfer import run_transfer_bench
from pipelines.cli.options import parser

TINY = {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "train_blocks": 0}


def test_bench_transfer_records_extraction_and_head_figures(tmp_path, capsys):
    db = str(tmp_path / "diag.duckdb")
    rc = run_transfer_bench(
        db, images=48, val_queries=16, preset="transfer-vitt16", channels=1, epochs=2, bits=16,
        device="cpu", overrides=TINY, json_path=str(tmp_path / "row.json"),
    )  # fmt: skip
    assert rc == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["extracted"] == 64 and row["head_epochs"] == 2 and row["img_size"] == 16
    assert row["extract_images_per_s"] > 0 and row["head_train_seconds"] > 0
    assert row["cached_feature_seconds"] > 0
    assert json.loads((tmp_path / "row.json").read_text())["run_id"] == row["run_id"]
    with duckdb.connect(db, read_only=True) as con:
        kind = con.execute("SELECT kind FROM runs WHERE run_id = ?", [row["run_id"]]).fetchone()[0]
        value = con.execute(
            "SELECT value FROM metrics WHERE run_id = ? AND name = 'extract_images_per_s'", [row["run_id"]]
        ).fetchone()[0]
        epochs = con.execute(
            "SELECT count(*) FROM training_log WHERE run_id = ?", [row["run_id"]]
        ).fetchone()[0]
    assert kind == "bench-transfer" and value == row["extract_images_per_s"] and epochs == 2


def test_cli_parses_bench_transfer():
    args = parser().parse_args(["bench", "transfer", "--images", "512", "--pretrained", "none"])
    assert (args.bench, args.images, args.preset, args.channels) == ("transfer", 512, "transfer-vits16", 3)
