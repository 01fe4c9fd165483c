"""`vitrieve bench quality`: config parsing, and a --quick run that lands in the DuckDB leaderboard."""

import pytest

from bench.quality import config_label, format_leaderboard, parse_config, quick_problems
from pipelines.cli import main
from storage.diagnostics import DiagnosticsDB
from tests.conftest import needs_fashion_mnist


def test_parse_config_types_values_and_names_bad_items():
    assert parse_config('model=vts,bits=32,lr=1e-3,overrides={"depth":2}') == {
        "model": "vts",
        "bits": 32,
        "lr": 0.001,
        "overrides": {"depth": 2},
    }
    assert parse_config('overrides={"stem_channels":[32,64],"depth":2},epochs=16') == {
        "overrides": {"stem_channels": [32, 64], "depth": 2},
        "epochs": 16,
    }
    assert parse_config("") == {}
    with pytest.raises(ValueError, match="bad --config item 'bits'"):
        parse_config("bits")


def test_config_label_names_every_given_field_overrides_included():
    given = parse_config('overrides={"depth":2},epochs=16,loss_params={"lam":0.1}')
    assert config_label("full", given) == 'full:epochs=16,loss_params={"lam": 0.1},overrides={"depth": 2}'
    assert config_label("full", {"overrides": {"depth": 3}}) != config_label(
        "full", {"overrides": {"depth": 2}}
    )
    assert config_label("quick", {}) == "quick"


def test_quick_problems_flag_out_of_range_metrics():
    row = dict(
        config="c",
        map_at_100=1.2,
        map_at_1000=0.5,
        p_at_1=0.5,
        p_at_100=0.5,
        best_val_map=0.5,
        mean_ones_rate=0.5,
        epochs_run=1,
    )
    assert quick_problems([row]) == ["c: map_at_100 = 1.2 is not in [0, 1]"]


@needs_fashion_mnist
def test_quick_bench_records_each_config_and_ranks_them(tmp_path, capsys):
    db = tmp_path / "d.duckdb"
    rc = main(
        [
            "bench",
            "quality",
            "--quick",
            "--db",
            str(db),
            "--config",
            "",
            "--config",
            "model=vts-cls,loss=dch",
            "--json",
            str(tmp_path / "rows.json"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "quick:epochs=1 |" in out and "quick:epochs=1,loss=dch,model=vts-cls |" in out
    cols, rows = DiagnosticsDB(str(db)).query(
        "SELECT config, model, loss, bits, map_at_100, epochs_run FROM quality_leaderboard"
    )
    assert {(r[1], r[2], r[3], r[5]) for r in rows} == {("vts", "csq", 64, 1.0), ("vts-cls", "dch", 64, 1.0)}
    assert [r[4] for r in rows] == sorted((r[4] for r in rows), reverse=True)
    _, logs = DiagnosticsDB(str(db)).query(
        "SELECT count(*) FROM training_log JOIN runs USING (run_id) WHERE kind = 'bench-quality' AND val_map IS NOT NULL"
    )
    assert logs == [(2,)]
    assert "copy R@1" in out  # the copies protocol beside the label metrics
    _, copy_rows = DiagnosticsDB(str(db)).query("SELECT copy_recall_at_1, copy_mrr FROM quality_leaderboard")
    assert len(copy_rows) == 2 and all(0 <= v <= 1 for r in copy_rows for v in r)
    _, n = DiagnosticsDB(str(db)).query(
        "SELECT DISTINCT value FROM instance_metrics WHERE name = 'queries' AND family = 'all'"
    )
    assert n == [(200.0,)]


def test_format_leaderboard_sorts_by_map():
    base = dict(
        map_at_1000=0.1,
        p_at_1=0.1,
        p_at_100=0.1,
        mean_ones_rate=0.5,
        mean_entropy=1.0,
        intra_class_hamming=1.0,
        inter_class_hamming=2.0,
        best_val_map=0.1,
        epochs_run=1,
        train_minutes=0.1,
        train_images_per_s=10.0,
    )
    text = format_leaderboard(
        [base | {"config": "a", "map_at_100": 0.2}, base | {"config": "b", "map_at_100": 0.9}]
    )
    assert text.index("| b |") < text.index("| a |")
