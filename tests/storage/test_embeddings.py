"""Stored embeddings beside the codes, and the instance_metrics rows in the leaderboards."""

from __future__ import annotations

import numpy as np
import pytest

from ml.instance_metrics import InstanceMetrics, metric_rows
from ml.rerank import dequantise, quantise
from storage.codes import PartWriter, commit_parts, read_codes, rewrite_without
from storage.diagnostics import DiagnosticsDB, insert_instance_metrics, insert_metrics
from storage.embeddings import META_KEY, embedding_columns, read_embeddings
from storage.fs import StorageRoot


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_embeddings_round_trip_and_survive_compaction(tmp_path, dtype):
    root = StorageRoot(str(tmp_path))
    rng = np.random.default_rng(0)
    u = rng.normal(size=(20, 32)).astype(np.float32)
    codes = np.packbits(u >= 0, axis=1)
    ids = np.arange(20)[::-1] * 5  # written out of row_id order
    extra = {META_KEY: dtype}
    w = PartWriter(root, "cat", "m", 32, extra, with_image_hash=True)
    w.write(ids, codes, ids + 1, embedding_columns(*quantise(u, dtype)))
    commit_parts(root, "cat", "m", [w.close()], 32, 20, extra)
    got_ids, data, scale, got_dtype = read_embeddings(root, "cat", "m")
    order = np.argsort(ids)
    assert got_dtype == dtype and np.array_equal(got_ids, ids[order])
    assert np.allclose(dequantise(data, scale, dtype), u[order], atol=0.05)
    part, kept = rewrite_without(root, "cat", "m", np.array([0, 50]), 32)  # drops two rows
    commit_parts(root, "cat", "m", [part], 32, kept, extra)
    ids2, data2, scale2, _ = read_embeddings(root, "cat", "m")
    keep = ~np.isin(ids[order], [0, 50])
    assert kept == 18 and np.array_equal(ids2, ids[order][keep])
    assert np.array_equal(dequantise(data2, scale2, dtype), dequantise(data, scale, dtype)[keep])
    assert np.array_equal(read_codes(root, "cat", "m")[1], codes[order][keep])


def test_codes_without_embeddings_say_how_to_get_them(tmp_path):
    root = StorageRoot(str(tmp_path))
    w = PartWriter(root, "cat", "m", 8)
    w.write(np.arange(3), np.zeros((3, 1), np.uint8))
    commit_parts(root, "cat", "m", [w.close()], 8, 3)
    with pytest.raises(FileNotFoundError, match="no stored embeddings.*--embeddings"):
        read_embeddings(root, "cat", "m")


def test_instance_rows_reach_the_leaderboards(tmp_path):
    db = DiagnosticsDB(str(tmp_path / "d.duckdb"))
    m = InstanceMetrics(
        n=4,
        recall={"expected": {1: 0.25, 10: 0.5, 100: 1.0}, "listed": {1: 0.5, 10: 0.75, 100: 1.0}},
        mrr={"expected": 0.4, "listed": 0.6},
        ties={"first_ties_ge_10": 0.75, "first_ties_ge_99": 0.5, "distinct_top_100": 3.0},
    )
    rows = list(metric_rows(m, "none", "all")) + list(metric_rows(m, "asymmetric", "all"))
    rows[0] = ("asymmetric", "all", "expected", "recall", 1, 0.9)  # another scorer: not in the leaderboard

    def write(kind):
        def w(rid, con):
            insert_metrics(con, rid, [("map", 100, 0.7)])
            insert_instance_metrics(con, rid, rows[1:] + [("none", "all", "expected", "recall", 1, 0.25)])

        return db.record(kind, "fmnist", "A", {"spec": {"bits": 16}}, None, w)

    write("evaluation")
    write("bench-quality")
    for view in ("leaderboard", "quality_leaderboard"):
        cols, got = db.query(
            f"SELECT map_at_100, copy_recall_at_1, copy_recall_at_1_listed, copy_mrr, first_ties_ge_99 FROM {view}"
        )
        assert got == [(0.7, 0.25, 0.5, 0.4, 0.5)], view
    _, n = db.query("SELECT count(*) FROM instance_metrics")
    assert n == [(2 * len(rows),)]
