"""A folder catalogue and a multi-label manifest, each through ingest -> train -> encode -> index -> search."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pyarrow.compute as pc
import pytest

from pipelines.cli import main
from storage.catalogue import read_catalogue
from storage.codes import read_codes
from storage.diagnostics import DiagnosticsDB
from storage.fs import StorageRoot
from storage.index import current, load_index
from tests.catalogue_factory import write_folder, write_multilabel
from tests.tiny_graph import failure_messages, run_graph, tiny_catalogue_config

ASSETS = {
    "catalogue",
    "hashing_model",
    "packed_codes",
    "model_evaluation",
    "binary_index",
    "retrieval_diagnostics",
}


@pytest.fixture(scope="module")
def two_catalogues(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("byo")
    folder = write_folder(tmp / "pets", per_class=10)
    manifest = write_multilabel(tmp / "scenes", n=40)
    root, db = str(tmp / "data"), str(tmp / "diagnostics.duckdb")
    instance = dg.DagsterInstance.ephemeral()
    results = {
        "pets": run_graph(instance, "pets", tiny_catalogue_config(str(folder)), root, db),
        "scenes": run_graph(
            instance, "scenes", tiny_catalogue_config(str(manifest), label_columns=["tags"]), root, db
        ),
    }
    return results, tmp, StorageRoot(root), DiagnosticsDB(db)


@pytest.mark.parametrize("name", ["pets", "scenes"])
def test_whole_graph_runs_and_checks_pass(two_catalogues, name):
    results, _, root, db = two_catalogues
    result = results[name]
    assert result.success, failure_messages(result)
    assert {e.asset_key.path[-1] for e in result.get_asset_materialization_events()} == ASSETS
    assert all(e.passed for e in result.get_asset_check_evaluations())
    table, info = read_catalogue(root, name, columns=["row_id", "in_database", "labels"])
    row_ids, _, _ = read_codes(root, name, current(root, name)["model_id"])
    assert row_ids.tolist() == table["row_id"].to_pylist()  # one code per catalogue image
    index, _ = load_index(root, name)
    assert index.ntotal == int(pc.sum(table["in_database"]).as_py())
    _, rows = db.query("SELECT count(*) FROM latest_metrics WHERE catalogue = ? AND name = 'map'", [name])
    assert rows[0][0] > 0
    if name == "scenes":
        assert max(len(x) for x in table["labels"].to_pylist()) == 2 and len(info.label_names) == 4


@pytest.mark.parametrize("name", ["pets", "scenes"])
def test_search_by_image_file_and_row_id(two_catalogues, name, capsys):
    _, tmp, root, _ = two_catalogues
    table, _ = read_catalogue(root, name, columns=["row_id", "uri", "in_database"])
    db_rows = table.filter(table["in_database"])
    probe_file, probe_row = db_rows["uri"][0].as_py(), db_rows["row_id"][1].as_py()
    assert (
        main(
            [
                "search",
                "--root",
                root.uri,
                "--catalogue",
                name,
                probe_file,
                str(probe_row),
                "-k",
                "5",
                "--device",
                "cpu",
                "--json",
            ]
        )
        == 0
    )
    by_file, by_row = json.loads(capsys.readouterr().out)
    assert by_file["hits"][0]["distance"] == 0
    assert db_rows["row_id"][0].as_py() in [h["row_id"] for h in by_file["hits"] if h["distance"] == 0]
    assert by_row["hits"][0] == {**by_row["hits"][0], "row_id": probe_row, "distance": 0}
    assert all(h["labels"] for h in by_file["hits"]) and len(by_file["hits"]) == 5
    assert np.all(np.diff([h["distance"] for h in by_row["hits"]]) >= 0)
