"""S3 through a real endpoint (moto's server on 127.0.0.1, via s3fs and the standard AWS environment
variables): sources on S3, and a whole run whose storage root is ``s3://bucket/prefix``."""

from __future__ import annotations

import json

import dagster as dg
import pyarrow.compute as pc
import pytest

from pipelines.cli import main
from storage.catalogue import read_catalogue
from storage.codes import read_codes
from storage.fs import StorageRoot
from storage.images import encoded_images
from storage.index import current, load_index
from storage.ingest import Limits, ingest
from storage.protocols import Protocol
from storage.sources import list_folder, list_manifest
from tests.catalogue_factory import class_image, png, write_folder, write_multilabel
from tests.s3_server import moto_s3, new_bucket
from tests.tiny_graph import failure_messages, run_graph, tiny_catalogue_config

TINY = Protocol(train_per_label=4, query_per_label=2, validation_size=2)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server with bucket ``images`` holding a folder catalogue (``pets/``) and a multi-label
    manifest (``scenes/manifest.csv`` + ``scenes/images/``)."""
    tmp = tmp_path_factory.mktemp("s3src")
    with moto_s3() as url:
        fs = new_bucket("images")
        pets = write_folder(tmp / "pets", per_class=10)
        (pets / "cat" / "000.json").write_text('{"caption": "a cat"}')  # a sidecar, skipped by its content
        (pets / "dog" / "IMG_0001").write_bytes(png(class_image(1, 500)))  # an image without an extension
        fs.put(str(pets), "images/pets", recursive=True)
        write_multilabel(tmp / "scenes", n=40)
        fs.put(str(tmp / "scenes"), "images/scenes", recursive=True)
        yield fs, url


def test_folder_and_manifest_sources_on_s3(s3):
    fs, _ = s3
    folder = ingest("pets", list_folder("s3://images/pets"), TINY)
    assert folder.rejected == [] and folder.table.num_rows == 31  # first bytes read from S3 to sniff
    assert [(k.item, k.reason) for k in folder.skipped] == [("cat/000.json", "not-an-image")]
    assert folder.info.label_names == ["cat", "dog", "fox"]
    assert all(u.startswith("s3://images/pets/") for u in folder.table["uri"].to_pylist())
    blobs = encoded_images(folder.table.slice(0, 3))  # downstream reads the objects back, sha256-checked
    assert all(b.startswith(b"\x89PNG") for b in blobs)

    fs.pipe("images/elsewhere/x.png", blobs[0])
    lines = fs.cat("images/scenes/manifest.csv").decode().splitlines()
    lines += ["images/404.png,sky", "s3://images/elsewhere/x.png,sky", "../pets/cat/000.png,sky"]
    fs.pipe("images/scenes/manifest-bad.csv", ("\n".join(lines) + "\n").encode())
    bad = list_manifest("s3://images/scenes/manifest-bad.csv", label_columns=["tags"])
    manifest = ingest("scenes", bad, TINY, Limits(max_reject_fraction=0.1))
    assert manifest.table.num_rows == 40
    assert sorted(r.reason for r in manifest.rejected) == ["escapes-root", "escapes-root", "missing"]
    again = ingest(
        "scenes",
        list_manifest("s3://images/scenes/manifest-bad.csv", label_columns=["tags"]),
        TINY,
        Limits(max_reject_fraction=0.1),
        previous=(manifest.table, manifest.info),
    )
    assert again.unchanged


def test_whole_run_with_storage_root_on_s3(s3, tmp_path, capsys, monkeypatch):
    """Credentials come from ``dg.EnvVar``s holding planted values: the run uses them, and no event, run
    record, metadata, log line, stored object or DuckDB row holds them afterwards."""
    import s3fs

    fs, _ = s3
    fs.mkdir("vitrieve")
    root_uri = "s3://vitrieve/prod"
    planted = {
        "VITRIEVE_TEST_S3_KEY": "AKIAPLANTEDKEY7Q3ZX",
        "VITRIEVE_TEST_S3_SECRET": "planted-secret-5f1e9c2d",
    }
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    instance = dg.DagsterInstance.ephemeral()
    db = tmp_path / "diagnostics.duckdb"
    result = run_graph(
        instance,
        "pets",
        tiny_catalogue_config("s3://images/pets"),
        root_uri,
        str(db),
        s3_key=dg.EnvVar("VITRIEVE_TEST_S3_KEY"),
        s3_secret=dg.EnvVar("VITRIEVE_TEST_S3_SECRET"),
    )
    assert result.success, failure_messages(result)
    key, secret = planted["VITRIEVE_TEST_S3_KEY"], planted["VITRIEVE_TEST_S3_SECRET"]
    used = [f.storage_options for f in s3fs.S3FileSystem._cache.values()]
    assert any(o.get("key") == key and o.get("secret") == secret for o in used), "credentials not used"
    _assert_nowhere(planted.values(), instance, result.run_id, db, fs, capsys)
    assert all(e.passed for e in result.get_asset_check_evaluations())
    root = StorageRoot(root_uri)
    table, _ = read_catalogue(root, "pets", columns=["row_id", "in_database"])
    pointer = current(root, "pets")
    row_ids, _, _ = read_codes(root, "pets", pointer["model_id"])
    index, manifest = load_index(root, "pets")
    assert row_ids.tolist() == table["row_id"].to_pylist()
    assert index.ntotal == manifest.ntotal == int(pc.sum(table["in_database"]).as_py())
    keys = fs.find("vitrieve/prod")
    assert "vitrieve/prod/catalogues/pets/catalogue.json" in keys
    assert "vitrieve/prod/indexes/pets/CURRENT" in keys
    assert not [k for k in keys if k.endswith(".tmp")]  # every write landed under its final name
    assert (
        main(
            [
                "search",
                "--root",
                root_uri,
                "--catalogue",
                "pets",
                str(row_ids[0]),
                "-k",
                "3",
                "--device",
                "cpu",
                "--json",
            ]
        )
        == 0
    )
    (hits,) = json.loads(capsys.readouterr().out)
    assert hits["hits"][0]["distance"] == 0


def test_endpoint_from_resource_config(s3, tmp_path, monkeypatch):
    """Without AWS_ENDPOINT_URL, the storage resource's ``fsspec_options`` reach every S3 access of the run."""
    import fsspec.config
    import s3fs

    from assets.catalogue import catalogue
    from assets.resources import DiagnosticsResource, StorageResource

    fs, url = s3
    fs.mkdir("byconfig")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    s3fs.S3FileSystem.clear_instance_cache()
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("catalogues", ["pets"])
    storage = StorageResource(root="s3://byconfig/root", fsspec_options={"s3": {"endpoint_url": url}})
    result = dg.materialize(
        [catalogue],
        partition_key="pets",
        instance=instance,
        raise_on_error=False,
        resources={"storage": storage, "diagnostics": DiagnosticsResource(path=str(tmp_path / "d.duckdb"))},
        run_config={"ops": {"catalogue": {"config": tiny_catalogue_config("s3://images/pets")}}},
    )
    assert result.success, failure_messages(result)
    assert "s3" not in fsspec.config.conf  # the run's options are undone after it
    s3fs.S3FileSystem.clear_instance_cache()
    assert s3fs.S3FileSystem(endpoint_url=url).exists("byconfig/root/catalogues/pets/catalogue.json")


def _assert_nowhere(secrets, instance, run_id: str, db, fs, capsys) -> None:
    """No secret in the event log (metadata included), the run record, the captured output, the stored objects
    or the diagnostics DB."""
    import duckdb

    places = {
        "event log": "\n".join(dg.serialize_value(e) for e in instance.all_logs(run_id)),
        "run record": dg.serialize_value(instance.get_run_by_id(run_id)),
        "output": "".join(capsys.readouterr()),
        "stored objects": "\n".join(fs.cat(k).decode("latin-1") for k in fs.find("vitrieve/prod")),
        "diagnostics file": db.read_bytes().decode("latin-1"),
    }
    with duckdb.connect(str(db), read_only=True) as con:
        tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        places["diagnostics rows"] = "\n".join(
            str(con.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables
        )
    assert len(places["event log"]) > 1000 and "diagnostics rows" in places
    for secret in secrets:
        assert [where for where, text in places.items() if secret in text] == []
