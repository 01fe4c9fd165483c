"""The copies protocol and re-ranking through the graph: embeddings stored by packed_codes, instance metrics
by model_evaluation (DuckDB, metadata, leaderboard), re-ranked ``vitrieve search``."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pytest

from pipelines.cli import main
from storage.catalogue import read_catalogue
from storage.codes import read_codes
from storage.diagnostics import DiagnosticsDB
from storage.embeddings import read_embeddings
from storage.fs import StorageRoot
from storage.index import current
from tests.catalogue_factory import write_folder
from tests.tiny_graph import failure_messages, run_graph, tiny_catalogue_config

OPS = {
    "packed_codes": {"config": {"embeddings": "int8"}},
    "model_evaluation": {
        "config": {
            "stability_sample": 8,
            "copy_protocol": True,
            "copies": 12,
            "rerank": "asymmetric,stored",
            "oversample": 2,
        }
    },
}


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("copies")
    folder = write_folder(tmp / "pets", per_class=10)
    root, db = str(tmp / "data"), str(tmp / "diagnostics.duckdb")
    instance = dg.DagsterInstance.ephemeral()
    config = tiny_catalogue_config(str(folder))
    result = run_graph(instance, "pets", config, root, db, ops=OPS)
    return result, StorageRoot(root), DiagnosticsDB(db), (instance, config, root, str(tmp / "again.duckdb"))


def test_evaluation_stores_instance_metrics(graph):
    result, root, db, _ = graph
    assert result.success, failure_messages(result)
    model_id = current(root, "pets")["model_id"]
    ids, _, _ = read_codes(root, "pets", model_id)
    e_ids, data, scale, dtype = read_embeddings(root, "pets", model_id)
    assert dtype == "int8" and np.array_equal(e_ids, ids) and data.shape[1] == 16 and scale is not None
    _, rows = db.query("SELECT DISTINCT scorer, family FROM instance_metrics ORDER BY ALL")
    assert rows == [(s, f) for s in ("asymmetric", "none", "stored") for f in ("all", "easy", "hard")]
    _, rows = db.query(
        "SELECT value FROM instance_metrics WHERE scorer='none' AND family='all' AND name='queries'"
    )
    assert rows == [(12.0,)]
    _, rows = db.query("SELECT copy_recall_at_1, copy_mrr, first_ties_ge_99 FROM leaderboard")
    assert len(rows) == 1 and all(v is not None and 0 <= v <= 1 for v in rows[0])
    meta = next(
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key.path[-1] == "model_evaluation"
    )
    assert "copy_metrics" in meta and "| stored | hard |" in meta["copy_metrics"].value
    assert 0 <= meta["copy_recall_at_1_expected"].value <= 1


@pytest.mark.parametrize("scorer", ["asymmetric", "stored"])
def test_search_reranks(graph, scorer, capsys):
    _, root, _, _ = graph
    table, _ = read_catalogue(root, "pets", columns=["row_id", "in_database"])
    rid = int(table.filter(table["in_database"])["row_id"][2].as_py())
    argv = ["search", "--root", root.uri, "--catalogue", "pets", "-k", "4", "--device", "cpu", "--json"]
    assert main([*argv, "--rerank", scorer, "--oversample", "3", str(rid)]) == 0
    (res,) = json.loads(capsys.readouterr().out)
    hits = res["hits"]
    assert res["rerank"] == scorer and len(hits) == 4 and hits[0]["row_id"] == rid
    assert [h["score"] for h in hits] == sorted(h["score"] for h in hits)


def test_bench_rerank_on_the_published_catalogue(graph, tmp_path, capsys):
    from bench.rerank import VARIANTS, run_rerank_bench

    _, root, _, _ = graph
    db = str(tmp_path / "bench.duckdb")
    out = tmp_path / "rows.json"
    code = run_rerank_bench(
        root.uri,
        db,
        "pets",
        "cpu",
        (1, 2),
        k=5,
        copies=10,
        latency_queries=4,
        large_batch=8,
        json_path=str(out),
    )
    assert code == 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == 2 * len(VARIANTS)
    # 'none' keeps the Hamming order: a longer shortlist cut to k gives the same list
    assert rows["none@1"]["map_at_100"] == rows["none@2"]["map_at_100"]
    assert rows["none@1"]["copy_recall_at_1_listed"] == rows["none@2"]["copy_recall_at_1_listed"]
    assert rows["none@1"]["bytes_per_image"] == 2 and rows["stored-int8@1"]["bytes_per_image"] == 2 + 16 + 4
    assert rows["stored-fp16@2"]["bytes_per_image"] == 2 + 32
    assert all(0 <= r["copy_recall_at_1"] <= 1 and r["qps_batch_1"] > 0 for r in rows.values())
    assert "| asymmetric@2 |" in capsys.readouterr().out
    _, n = DiagnosticsDB(db).query("SELECT count(DISTINCT scorer) FROM instance_metrics")
    assert n == [(2 * len(VARIANTS),)]


def test_copy_recall_check_judges_measured_evaluations_only(graph, monkeypatch):
    from assets import drift_checks

    result, _, _, (instance, config, root, db) = graph

    def check(run: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
        (evaluation,) = [
            e for e in run.get_asset_check_evaluations() if e.asset_check_key.name == "copy_recall_drop"
        ]
        return evaluation

    first = check(result)
    assert first.passed and first.metadata["baseline"].value == "none"
    meta = next(
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key.path[-1] == "model_evaluation"
    )
    assert first.metadata["value"].value == meta["copy_recall_at_1_expected"].value
    assert first.metadata["samples"].value == 12
    # an evaluation without the copies protocol records no value, so it never becomes a baseline
    plain = {"model_evaluation": {"config": {"stability_sample": 8}}}
    unmeasured = run_graph(instance, "pets", config, root, db, selection=["model_evaluation"], ops=plain)
    assert unmeasured.success, failure_messages(unmeasured)
    assert check(unmeasured).passed and "value" not in check(unmeasured).metadata
    # any drop is an error under these limits: judged against the first measured evaluation
    monkeypatch.setitem(
        drift_checks.LIMITS, "copy_recall_drop", drift_checks.Limit(-1.0, -1.0, "lower", 1, "any")
    )
    again = run_graph(instance, "pets", config, root, db, selection=["model_evaluation"], ops=OPS)
    judged = check(again)
    assert (judged.passed, judged.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert judged.metadata["baseline"].value == first.metadata["value"].value
