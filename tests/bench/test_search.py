"""``vitrieve bench search --quick``: runs end to end on a small synthetic N, asserts recall and consistency
(never speed), prints the table and stores rows in DuckDB."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

from bench.search import DatasetSpec, clustered_chunks, clustered_codes, default_specs, run_dataset
from pipelines.cli import main
from storage.diagnostics import DiagnosticsDB


def test_clustered_codes_are_seeded_chunk_invariant_and_clustered():
    a = clustered_codes(5000, 64, centres=10, flip_p=0.03, seed=1)
    b = np.concatenate(list(clustered_chunks(5000, 64, centres=10, flip_p=0.03, seed=1, chunk=1 << 20)))
    assert np.array_equal(a, b) and a.shape == (5000, 8)
    assert not np.array_equal(a, clustered_codes(5000, 64, centres=10, flip_p=0.03, seed=2))
    fresh = clustered_codes(5000, 64, centres=10, flip_p=0.03, seed=1, offset=1 << 40)
    assert not np.array_equal(a, fresh)
    # clustered, not uniform: nearest-neighbour distances are small, many codes repeat
    w = a.view(np.uint64).ravel()
    d = np.bitwise_count(w[:200, None] ^ w[None, 200:]).min(axis=1)
    assert np.median(d) <= 3 and len(np.unique(w)) < len(w)
    assert clustered_codes(100, 128, centres=4, seed=0).shape == (100, 16)


def test_run_dataset_in_process_checks_everything():
    spec = DatasetSpec(
        name="synthetic-5k",
        n=5000,
        centres=10,
        queries=200,
        latency_queries=20,
        numpy_queries=200,
        large_batch=200,
        kinds=("flat", "flat-dedup", "ivf"),
        params={"ivf": {"nlist": 32}},
        reindex_fraction=0.02,
        reindex_kinds=("flat", "flat-dedup", "ivf"),
        k=50,
    )
    res = run_dataset(spec)
    failed = [c for c, ok in res["checks"] if not ok]
    assert not failed, failed
    kinds = {r["index_kind"] for r in res["rows"]}
    assert kinds == {"numpy", "flat-heap", "flat", "flat-dedup", "ivf"}
    for r in res["rows"]:
        assert r["qps"] > 0 and r["p99_ms"] >= r["p50_ms"] >= 0 and r["k"] == 50
        assert r["recall_at_k"] >= 0.9
    assert res["facts"]["peak_rss_mib"] > 0
    assert {"reindex_seconds/flat", "reindex_seconds/ivf"} <= set(res["facts"])


def test_quick_cli_prints_table_and_records_rows(tmp_path):
    db = tmp_path / "d.duckdb"
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(
            ["bench", "search", "--quick", "--db", str(db), "--root", str(tmp_path / "data"), "--in-process"]
        )
    assert code == 0, err.getvalue()
    text = out.getvalue()
    for word in ("flat", "flat-dedup", "hnsw", "ivf", "multihash", "numpy", "recall@k", "QPS large"):
        assert word in text
    _, rows = DiagnosticsDB(db).query("SELECT DISTINCT index_kind FROM search_latency")
    assert {r[0] for r in rows} >= {"flat", "flat-dedup", "hnsw", "ivf", "multihash", "numpy"}
    _, rows = DiagnosticsDB(db).query("SELECT kind, catalogue, status FROM runs")
    assert rows == [("bench-search", "synthetic-20k", "success"), ("bench-search", "fitted-20k", "success")]
    _, rows = DiagnosticsDB(db).query("SELECT DISTINCT index_kind FROM search_latency ORDER BY 1")
    assert {"ivf nprobe=2", "flat -1% hidden", "ivf -1% hidden"} <= {r[0] for r in rows}
    _, rows = DiagnosticsDB(db).query(
        "SELECT count(*) FROM search_latency WHERE recall_at_k IS NULL OR qps <= 0"
    )
    assert rows[0][0] == 0


def test_bad_dataset_and_kind_are_clear_errors():
    with pytest.raises(ValueError, match="unknown dataset 'mnist-huge'"):
        default_specs(False, ["mnist-huge"], "./data", 2, 100)
    with pytest.raises(ValueError, match="unknown index kinds"):
        default_specs(True, None, "./data", 2, 100, ["flat", "lsh"])
    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["bench", "search", "--dataset", "nope"]) == 2
    assert "unknown dataset" in err.getvalue()


@pytest.mark.slow
def test_full_benchmark(tmp_path):
    """The full benchmark (``vitrieve bench search``): minutes, and wants a quiet machine."""
    assert main(["bench", "search", "--db", str(tmp_path / "d.duckdb")]) == 0
