"""Incremental re-index through Dagster: new catalogue rows are the only ones encoded, deleted rows disappear,
changed images are re-encoded, the index grows by the new rows, and everything equals a from-scratch run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from storage.catalogue import write_catalogue
from storage.codes import parts_manifest, read_codes, read_row_index
from storage.fs import StorageRoot
from storage.index import build_index, current, load_index
from tests.conftest import needs_fashion_mnist

BITS = 32
MODEL = "fake-encoder-32b"
_W = np.random.default_rng(0).standard_normal((28 * 28, BITS)).astype(np.float32)


def fake_encode(images: np.ndarray) -> np.ndarray:
    """Deterministic stand-in for the hashing model: a fixed random projection of the pixels."""
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0 - 0.5
    return np.packbits(x @ _W >= 0, axis=1)


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    from assets import codes as codes_asset
    from storage.ingest_idx import FASHION_MNIST_DIR, idx_catalogue

    encoded: list[int] = []

    def encode_images(model, images, device, batch_size=256, progress=False, transform=None):
        encoded.append(len(images))
        return fake_encode(images)

    model = SimpleNamespace(spec=SimpleNamespace(img_size=28, in_chans=1))
    monkeypatch.setattr("ml.encode.encode_images", encode_images)
    monkeypatch.setattr(codes_asset, "load_model", lambda root, model_id, device: (model, {"bits": BITS}))
    root = StorageRoot(tmp_path / "data")
    root.write_text(json.dumps({"bits": BITS, "model_id": MODEL}), "models", MODEL, "model.json")
    full, info = idx_catalogue(
        "inc", FASHION_MNIST_DIR, validation_size=50, seed=0, train_limit=400, query_limit=60
    )
    return root, full, info, encoded


def _materialise(root: StorageRoot, instance, kind: str = "") -> dict:
    from assets.codes import packed_codes
    from assets.index import binary_index
    from assets.resources import ComputeResource, StorageResource

    cfg = {"model_id": MODEL}
    result = dg.materialize(
        [packed_codes, binary_index],
        partition_key="inc",
        instance=instance,
        resources={
            "storage": StorageResource(root=root.uri),
            "compute": ComputeResource(device="cpu", threads=2),
        },
        run_config={
            "ops": {
                "packed_codes": {"config": {**cfg, "chunk_rows": 64}},
                "binary_index": {"config": {**cfg, "kind": kind}},
            }
        },
    )
    assert result.success
    return {
        e.asset_key.path[-1]: {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }


def _replace(table: pa.Table, column: str, values: list, typ) -> pa.Table:
    return table.set_column(table.schema.get_field_index(column), column, pa.array(values, typ))


def _check_against_scratch(root: StorageRoot, table: pa.Table) -> None:
    """Stored codes = a fresh encode of every catalogue row; index = a fresh flat index of the database rows."""
    from imaging.decode import decode_images

    row_ids, codes, meta = read_codes(root, "inc", MODEL)
    order = np.argsort(table["row_id"].to_numpy())
    assert np.array_equal(row_ids, table["row_id"].to_numpy()[order])
    scratch = fake_encode(decode_images(table["image"].to_pylist(), 28, 1))[order]
    assert np.array_equal(codes, scratch)
    db = table["in_database"].to_numpy(zero_copy_only=False)[order]
    index, manifest = load_index(root, "inc")
    ref = build_index(row_ids[db], codes[db], BITS, "flat")
    assert index.ntotal == manifest.ntotal == int(db.sum())
    probe = codes[::7]
    assert np.array_equal(index.search(probe, 20)[1], ref.search(probe, 20)[1])


@needs_fashion_mnist
def test_only_new_rows_are_encoded_and_indexed(setup):
    root, full, info, encoded = setup
    ids = full["row_id"].to_numpy()
    db_ids = np.sort(ids[full["in_database"].to_numpy(zero_copy_only=False)])
    new = db_ids[-40:]  # the newest database rows arrive later
    old = full.filter(pc.invert(pc.is_in(full["row_id"], pa.array(new))))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("catalogues", ["inc"])
        write_catalogue(root, old, info)
        md = _materialise(root, instance)
        assert md["packed_codes"]["encoded_rows"] == old.num_rows == sum(encoded)
        assert md["binary_index"]["mode"] == "rebuild"
        _check_against_scratch(root, old)

        write_catalogue(root, full, info)  # 40 new rows
        encoded.clear()
        md = _materialise(root, instance)
        assert sum(encoded) == 40, "only the new rows go through the encoder"
        assert md["packed_codes"]["encoded_rows"] == 40 and md["packed_codes"]["mode"] == "incremental"
        assert md["packed_codes"]["reused_rows"] == old.num_rows
        assert (
            len(parts_manifest(root, "inc", MODEL)["parts"]) == 2
        )  # the old part + one part for the new rows
        assert md["binary_index"]["mode"] == "incremental" and md["binary_index"]["added_rows"] == 40
        _check_against_scratch(root, full)

        encoded.clear()  # nothing changed: no inference, index untouched
        sha = current(root, "inc")["sha256"]
        md = _materialise(root, instance)
        assert sum(encoded) == 0 and md["packed_codes"]["mode"] == "up-to-date"
        assert md["binary_index"]["mode"] == "unchanged" and current(root, "inc")["sha256"] == sha


@needs_fashion_mnist
def test_deleted_rows_disappear_and_changed_images_are_reencoded(setup):
    root, full, info, encoded = setup
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("catalogues", ["inc"])
        write_catalogue(root, full, info)
        _materialise(root, instance, kind="flat-dedup")
        ids = full["row_id"].to_numpy()
        gone = ids[[3, 50, 100]]
        edited = full.filter(pc.invert(pc.is_in(full["row_id"], pa.array(gone))))
        images, shas = edited["image"].to_pylist(), edited["sha256"].to_pylist()
        images[10], shas[10] = images[11], shas[11]  # row 10 now shows another image
        edited = _replace(_replace(edited, "image", images, pa.binary()), "sha256", shas, pa.binary(32))
        write_catalogue(root, edited, info)
        encoded.clear()
        md = _materialise(root, instance)  # kind left empty: keeps the published flat-dedup
        assert sum(encoded) == 1 and md["packed_codes"]["encoded_rows"] == 1
        assert md["packed_codes"]["dropped_rows"] == 4  # 3 deleted + the stale code of the changed row
        stored, _ = read_row_index(root, "inc", MODEL)
        assert not np.isin(gone, stored).any()
        assert md["binary_index"]["kind"] == "flat-dedup" and md["binary_index"]["mode"] == "rebuild"
        _check_against_scratch(root, edited)


@needs_fashion_mnist
def test_full_reencode_when_not_incremental(setup):
    root, full, info, encoded = setup
    from assets.codes import packed_codes
    from assets.resources import ComputeResource, StorageResource

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("catalogues", ["inc"])
        write_catalogue(root, full, info)
        for _ in range(2):
            result = dg.materialize(
                [packed_codes],
                partition_key="inc",
                instance=instance,
                resources={
                    "storage": StorageResource(root=root.uri),
                    "compute": ComputeResource(device="cpu"),
                },
                run_config={"ops": {"packed_codes": {"config": {"model_id": MODEL, "incremental": False}}}},
            )
            assert result.success
        assert sum(encoded) == 2 * full.num_rows
        parts = parts_manifest(root, "inc", MODEL)["parts"]
        assert len(parts) == 1  # the replaced part is gone from the manifest and from the directory
        assert sorted(p.name for p in Path(root.path("codes", "inc", MODEL)).glob("part-*")) == parts


@needs_fashion_mnist
def test_current_stays_when_the_new_index_fails_verification(setup, monkeypatch):
    root, full, info, _ = setup
    import assets.index as index_asset

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("catalogues", ["inc"])
        write_catalogue(root, full, info)
        _materialise(root, instance)
        before = current(root, "inc")
        monkeypatch.setattr(
            index_asset, "verify_index", lambda *a, **kw: ["row 1 does not find itself at distance 0"]
        )
        from assets.index import binary_index
        from assets.resources import StorageResource

        result = dg.materialize(
            [binary_index],
            partition_key="inc",
            instance=instance,
            raise_on_error=False,
            resources={"storage": StorageResource(root=root.uri)},
            run_config={"ops": {"binary_index": {"config": {"model_id": MODEL, "kind": "ivf", "nlist": 8}}}},
        )
        assert not result.success
        assert current(root, "inc") == before  # the last good index stays published
        with pytest.raises(Exception, match="unknown index kind 'annoy'"):
            dg.materialize(
                [binary_index],
                partition_key="inc",
                instance=instance,
                resources={"storage": StorageResource(root=root.uri)},
                run_config={"ops": {"binary_index": {"config": {"model_id": MODEL, "kind": "annoy"}}}},
            )


def test_codes_parts_legacy_append_and_compaction(tmp_path):
    import pyarrow.parquet as pq

    from assets.codes import plan_codes
    from storage.codes import PartWriter, codes_table, commit_parts, rewrite_without

    root = StorageRoot(tmp_path)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (10, 4), dtype=np.uint8)
    legacy = tmp_path / "codes" / "cat" / "m" / "part-00000.parquet"  # written before parts.json existed
    legacy.parent.mkdir(parents=True)
    pq.write_table(
        codes_table(np.arange(10), codes, 32, "cat", "m", {"catalogue_fingerprint": "abc"}), legacy
    )
    ids, back, meta = read_codes(root, "cat", "m")
    assert np.array_equal(back, codes) and meta.catalogue_fingerprint == "abc" and meta.bits == 32
    more = rng.integers(0, 256, (3, 4), dtype=np.uint8)
    w = PartWriter(root, "cat", "m", 32)
    w.write(np.array([12, 10, 11]), more)
    commit_parts(
        root, "cat", "m", ["part-00000.parquet", w.close()], 32, 13, {"catalogue_fingerprint": "def"}
    )
    ids, back, meta = read_codes(root, "cat", "m")
    assert ids.tolist() == list(range(13)) and np.array_equal(back[10:], more[[1, 2, 0]])
    assert meta.catalogue_fingerprint == "def"
    part, kept = rewrite_without(root, "cat", "m", np.array([0, 11]), 32)
    commit_parts(root, "cat", "m", [part], 32, kept)
    ids, back, _ = read_codes(root, "cat", "m")
    assert kept == 11 and 0 not in ids and 11 not in ids and not legacy.exists()
    # plan: new rows and changed images are encoded, deleted and changed rows dropped
    enc, drop = plan_codes(
        np.array([1, 2, 3, 9]), np.array([7, 8, 0, 5]), np.array([1, 2, 4]), np.array([7, 9, 1])
    )
    assert enc.tolist() == [2, 3, 9] and sorted(drop.tolist()) == [2, 4]


@needs_fashion_mnist
def test_damaged_codes_are_encoded_again_not_built_upon(setup):
    root, full, info, encoded = setup
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("catalogues", ["inc"])
        write_catalogue(root, full, info)
        _materialise(root, instance)
        part = Path(root.path("codes", "inc", MODEL, parts_manifest(root, "inc", MODEL)["parts"][0]))
        data = bytearray(part.read_bytes())
        data[len(data) // 2] ^= 0xFF
        part.write_bytes(bytes(data))
        encoded.clear()
        md = _materialise(root, instance)
        assert md["packed_codes"]["mode"] == "full" and sum(encoded) == full.num_rows
        _check_against_scratch(root, full)
