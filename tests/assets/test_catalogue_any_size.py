"""The catalogue asset out of the box: a 50-image folder and a skewed one with sidecar files ingest with the
source alone; the split per label is stored and reported; a failed ingest leaves the stored catalogue as it
was; the IDX catalogue keeps its own protocol."""

from __future__ import annotations

import dagster as dg
import pytest

from assets.catalogue import CatalogueConfig, idx_arguments
from storage.catalogue import read_catalogue
from storage.fs import StorageRoot
from storage.images import IMAGE_CHECKS
from tests.catalogue_factory import class_image, write_folder
from tests.tiny_graph import failure_messages, resources


def _materialise(tmp_path, config: dict, name: str = "mine") -> dg.ExecuteInProcessResult:
    from assets.catalogue import catalogue

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("catalogues", [name])
    res = resources(str(tmp_path / "data"), str(tmp_path / "diag.duckdb"))
    return dg.materialize(
        [catalogue],
        partition_key=name,
        instance=instance,
        raise_on_error=False,
        resources={k: v for k, v in res.items() if k != "compute"},
        run_config={"ops": {"catalogue": {"config": config}}},
    )


def skewed_folder(root, sizes=(30, 20, 10, 4, 2, 1)):
    """Labels of very different sizes (67 images), with a sidecar beside every image and a few system files."""
    for label, n in enumerate(sizes):
        d = root / f"class{label}"
        d.mkdir(parents=True)
        for i in range(n):
            class_image(label, i).save(d / f"{i}.jpg")
            (d / f"{i}.json").write_text("{}")
        (d / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    return root


def test_fifty_images_ingest_with_the_source_alone(tmp_path):
    src = write_folder(tmp_path / "src", classes=("a", "b", "c", "d", "e"), per_class=10)
    result = _materialise(tmp_path, {"source": str(src)})
    assert result.success, failure_messages(result)
    meta = result.asset_materializations_for_node("catalogue")[0].metadata
    table, info = read_catalogue(StorageRoot(tmp_path / "data"), "mine")
    assert table.num_rows == 50 and info.protocol["query_fraction"] == 0.1
    assert info.image_checks == IMAGE_CHECKS  # stored with the catalogue, read back
    assert [(s["label"], s["images"], s["query"]) for s in info.label_splits] == [(c, 10, 1) for c in "abcde"]
    assert sum(s["validation"] for s in info.label_splits) >= 1
    assert "5 query, " in meta["split_summary"].value and "| a | 10 | 1 |" in meta["label_splits"].value


def test_skewed_folder_with_sidecars_through_the_cli(tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    src = skewed_folder(tmp_path / "src")
    root = str(tmp_path / "data")
    assert (
        main(
            [
                "ingest",
                "--root",
                root,
                "--db",
                str(tmp_path / "d.duckdb"),
                "--catalogue",
                "sk",
                "--source",
                str(src),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "images  " in out and "67 accepted, 0 rejected, 73 skipped" in out
    assert (
        "1 database only (fewer than 2 images): class5 (1)" in out
        and "skipped 67 not-an-image, 6 system-file" in out
    )
    _, info = read_catalogue(StorageRoot(root), "sk")
    small = next(s for s in info.label_splits if s["label"] == "class5")
    assert small == {**small, "images": 1, "query": 0, "train": 0, "validation": 0, "database": 1}


def _stored(tmp_path) -> dict[str, bytes]:
    folder = tmp_path / "data" / "catalogues" / "mine"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


@pytest.mark.parametrize("failure", ["too-many-rejects", "protocol", "unusable-source"])
def test_a_failed_ingest_leaves_the_stored_catalogue_as_it_was(tmp_path, failure):
    src = write_folder(tmp_path / "src", per_class=10)
    assert _materialise(tmp_path, {"source": str(src)}).success
    before = _stored(tmp_path)
    config = {"source": str(src)}
    if failure == "too-many-rejects":
        for i in range(5):  # half-written images: 5 of 35 rejected, over the default 5 %
            (src / "cat" / f"cut{i}.png").write_bytes((src / "cat" / f"{i:03d}.png").read_bytes()[:-12])
    elif failure == "protocol":
        class_image(0, 500).save(src / "cat" / "new.png")
        config["validation_size"] = 10_000
    else:
        config["source"] = str(tmp_path / "nowhere")
    result = _materialise(tmp_path, config)
    assert not result.success
    message = " ".join(failure_messages(result))
    assert {
        "too-many-rejects": "truncated x5",
        "protocol": "validation_size 10000",
        "unusable-source": "does not exist",
    }[failure] in message
    assert _stored(tmp_path) == before


def test_idx_keeps_its_own_protocol_with_the_default_config():
    assert idx_arguments(CatalogueConfig()) == dict(
        validation_size=5000, seed=0, train_limit=None, query_limit=None
    )
    assert idx_arguments(CatalogueConfig(validation_size=50, seed=1))["validation_size"] == 50
