"""Atomic writes, codes Parquet and FAISS index publication."""

from __future__ import annotations

import numpy as np
import pytest

from storage.codes import read_codes, write_codes
from storage.fs import StorageRoot
from storage.index import build_index, current, load_index, publish, search, verify_index, write_index


def test_failed_write_keeps_previous_file(tmp_path):
    root = StorageRoot(tmp_path)
    root.write_text("old", "a", "b.txt")
    with pytest.raises(RuntimeError), root.atomic_open("a", "b.txt") as f:
        f.write(b"half")
        raise RuntimeError("crash mid-write")
    assert root.read_text("a", "b.txt") == "old"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.txt"]  # no temp file left behind


def test_codes_roundtrip_and_width_check(tmp_path):
    root = StorageRoot(tmp_path)
    codes = np.random.default_rng(0).integers(0, 256, (5, 2), dtype=np.uint8)
    write_codes(root, "cat", "m1", np.array([9, 3, 4, 1, 2]), codes, 16)
    row_ids, back, meta = read_codes(root, "cat", "m1")
    assert row_ids.tolist() == [1, 2, 3, 4, 9]
    assert np.array_equal(back, codes[[3, 4, 1, 2, 0]])
    assert meta.bits == 16 and meta.model_id == "m1" and meta.bit_order
    with pytest.raises(ValueError, match="shape"):
        write_codes(root, "cat", "m1", np.arange(5), codes, 32)
    with pytest.raises(FileNotFoundError, match="no codes"):
        read_codes(root, "cat", "nope")


def test_codes_metadata_keeps_its_stored_format_and_reads_back_typed(tmp_path):
    """Parquet key-value metadata holds ``bits`` as a string and ``parts.json`` as a number, as always; both read
    back as one ``CodesMeta``, also for a lone part written before ``parts.json`` existed."""
    import json

    import pyarrow.parquet as pq

    from storage.codes import read_codes_meta

    root = StorageRoot(tmp_path)
    extra = {"catalogue_fingerprint": "fp", "note": "x"}
    write_codes(root, "cat", "m", np.arange(3), np.zeros((3, 4), np.uint8), 32, extra)
    d = tmp_path / "codes" / "cat" / "m"
    kv = pq.read_schema(d / "part-00000.parquet").metadata
    assert kv[b"bits"] == b"32" and kv[b"model_id"] == b"m" and kv[b"catalogue_fingerprint"] == b"fp"
    manifest = json.loads((d / "parts.json").read_text())
    assert manifest["bits"] == 32 and manifest["rows"] == 3 and manifest["parts"] == ["part-00000.parquet"]
    meta = read_codes_meta(root, "cat", "m")
    assert (meta.model_id, meta.catalogue, meta.bits, meta.nbytes, meta.rows) == ("m", "cat", 32, 4, 3)
    assert meta.parts == ("part-00000.parquet",) and meta.bit_order and meta.created_at and meta.updated_at
    assert meta.catalogue_fingerprint == "fp" and meta.extra == {"note": "x"} and meta.writer_extra == extra
    (d / "parts.json").unlink()
    legacy = read_codes_meta(root, "cat", "m")
    assert (legacy.bits, legacy.rows, legacy.updated_at, legacy.parts) == (
        32,
        None,
        None,
        ("part-00000.parquet",),
    )


def brute_force_topk(db_ids, db_codes, q, k):
    d = np.unpackbits(db_codes ^ q, axis=1).sum(axis=1)
    ranked = sorted(zip(d.tolist(), db_ids.tolist(), strict=True))[:k]
    return [r[0] for r in ranked], [r[1] for r in ranked]


def test_search_breaks_ties_by_row_id_like_brute_force():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 4, (400, 1), dtype=np.uint8)  # 4 distinct codes: ties everywhere
    ids = rng.permutation(10_000)[:400]
    index = build_index(ids, codes, 8)
    dist, got = search(index, codes[:20], 37)
    for j in range(20):
        ref_d, ref_i = brute_force_topk(ids, codes, codes[j], 37)
        assert dist[j].tolist() == ref_d and got[j].tolist() == ref_i


def test_verify_detects_missing_rows_and_publish_roundtrip(tmp_path):
    root = StorageRoot(tmp_path)
    codes = np.random.default_rng(0).integers(0, 256, (50, 8), dtype=np.uint8)
    ids = np.arange(50) + 100
    index = build_index(ids[:40], codes[:40], 64)
    assert verify_index(index, ids, codes)  # 10 rows missing -> problems
    index = build_index(ids, codes, 64)
    assert verify_index(index, ids, codes) == []
    manifest = write_index(root, index, "cat", "m1", "flat", 64, 50, 0.01)
    with pytest.raises(FileNotFoundError, match="no published index"):
        current(root, "cat")
    publish(root, manifest)
    loaded, m2 = load_index(root, "cat")
    assert loaded.ntotal == 50 and m2.sha256 == manifest.sha256
    (tmp_path / "indexes" / "cat" / "m1" / "flat.faiss").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="sha256"):
        load_index(root, "cat")


def _plant_temps(root: StorageRoot) -> None:
    """Two finished files and the temporary names ``atomic_open`` uses, as a killed writer leaves them."""
    root.write_bytes(b"kept", "codes", "cat", "m", "part-00000.parquet")
    root.write_bytes(b"kept", "codes", "cat", "m", "parts.json")
    with root.fs.open(root.path("codes", "cat", "m", ".part-00001.parquet.ab12cd.tmp"), "wb") as f:
        f.write(b"half")
    with root.fs.open(root.path("codes", "cat", ".CURRENT.x9.tmp"), "wb") as f:
        f.write(b"half")


def test_stale_temporary_files_are_removed_and_live_ones_kept(tmp_path):
    import os
    import time

    root = StorageRoot(tmp_path)
    _plant_temps(root)
    assert root.stale_temps("codes") == []  # just written: may belong to a live writer
    old = time.time() - 3600
    stale = root.path("codes", "cat", "m", ".part-00001.parquet.ab12cd.tmp")
    os.utime(stale, (old, old))
    assert root.remove_stale_temps("codes", "cat", "m") == [stale]
    assert not os.path.exists(stale)
    assert sorted(p.name for p in (tmp_path / "codes" / "cat" / "m").iterdir()) == [
        "part-00000.parquet",
        "parts.json",
    ]
    assert root.exists("codes", "cat", ".CURRENT.x9.tmp")  # fresh: kept
    assert root.remove_stale_temps("no", "such", "dir") == []


def test_stale_temporary_files_on_s3():
    import time

    from tests.s3_server import moto_s3, new_bucket

    with moto_s3():
        new_bucket("temps")
        root = StorageRoot("s3://temps/v")
        _plant_temps(root)
        assert root.remove_stale_temps("codes") == []
        time.sleep(1.1)
        removed = root.remove_stale_temps("codes", older_than_s=0)
        assert sorted(p.rsplit("/", 1)[1] for p in removed) == [
            ".CURRENT.x9.tmp",
            ".part-00001.parquet.ab12cd.tmp",
        ]
        assert root.exists("codes", "cat", "m", "part-00000.parquet") and root.exists(
            "codes", "cat", "m", "parts.json"
        )
        assert not root.exists("codes", "cat", ".CURRENT.x9.tmp")


def _codes_root(tmp_path) -> tuple[StorageRoot, str]:
    root = StorageRoot(tmp_path)
    codes = np.random.default_rng(5).integers(0, 256, (300, 8), dtype=np.uint8)
    write_codes(root, "cat", "m", np.arange(300), codes, 64)
    return root, root.path("codes", "cat", "m", "part-00000.parquet")


def test_parts_json_records_each_part_and_reads_check_it(tmp_path):
    import json

    from storage.part_checks import CorruptCodesError

    root, part = _codes_root(tmp_path)
    checks = json.loads(root.read_text("codes", "cat", "m", "parts.json"))["part_checks"]
    assert checks["part-00000.parquet"]["rows"] == 300 and len(checks["part-00000.parquet"]["sha256"]) == 64
    assert len(read_codes(root, "cat", "m")[0]) == 300
    from pathlib import Path

    data = bytearray(Path(part).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte (bit rot)
    Path(part).write_bytes(bytes(data))
    with pytest.raises(CorruptCodesError, match=r"part-00000\.parquet: sha256 differs.*vitrieve encode"):
        read_codes(root, "cat", "m")
    Path(part).write_bytes(bytes(data[: len(data) // 3]))  # a partial copy
    with pytest.raises(CorruptCodesError, match="partly copied"):
        read_codes(root, "cat", "m")
    import os

    os.unlink(part)
    with pytest.raises(CorruptCodesError, match=r"part-00000\.parquet: missing"):
        read_codes(root, "cat", "m")


def test_parts_committed_before_checks_existed_still_read(tmp_path):
    import json

    root, _ = _codes_root(tmp_path)
    manifest = json.loads(root.read_text("codes", "cat", "m", "parts.json"))
    del manifest["part_checks"]
    root.write_text(json.dumps(manifest), "codes", "cat", "m", "parts.json")
    assert len(read_codes(root, "cat", "m")[0]) == 300


def test_model_weights_are_checked_against_their_card(tmp_path):
    import json

    from storage.model_store import read_card, read_weights, write_model

    root = StorageRoot(tmp_path)
    write_model(root, "m", b"weights", {"model_id": "m", "bits": 64})
    assert read_weights(root, "m") == b"weights" and len(read_card(root, "m")["weights_sha256"]) == 64
    root.write_bytes(b"weightz", "models", "m", "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors: sha256 does not match its model card"):
        read_weights(root, "m")
    card = read_card(root, "m")
    del card["weights_sha256"]  # a card written before the check existed
    root.write_text(json.dumps(card), "models", "m", "model.json")
    assert read_weights(root, "m") == b"weightz"


def test_a_damaged_catalogue_is_refused_naming_the_file(tmp_path):
    from pathlib import Path

    import pyarrow.parquet as pq

    from storage.catalogue import LEGACY_FILE, read_catalogue, write_catalogue
    from storage.ingest_idx import FASHION_MNIST_DIR, idx_catalogue

    if not Path(FASHION_MNIST_DIR).exists():
        pytest.skip("dataset-fashion-mnist not installed")
    root = StorageRoot(tmp_path)
    table, info = idx_catalogue("cat", FASHION_MNIST_DIR, validation_size=20, train_limit=200, query_limit=50)
    write_catalogue(root, table, info)
    assert read_catalogue(root, "cat")[0].num_rows == table.num_rows
    (path,) = Path(root.path("catalogues", "cat")).glob("shard-*.parquet")
    data = bytearray(path.read_bytes())
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF  # bit rot inside the image pages
    path.write_bytes(bytes(damaged))
    with pytest.raises(
        ValueError, match=rf"{path.name}: sha256 differs from catalogue\.json.*vitrieve ingest"
    ):
        read_catalogue(root, "cat")
    path.unlink()
    with pytest.raises(ValueError, match=rf"{path.name}: missing"):
        read_catalogue(root, "cat")

    # A catalogue written as one file before shard files (its metadata in the footer) has only page CRCs.
    Path(root.path("catalogues", "cat", "catalogue.json")).unlink()
    legacy = Path(root.path("catalogues", "cat", LEGACY_FILE))
    pq.write_table(
        table.replace_schema_metadata(info.to_metadata()),
        legacy,
        row_group_size=16384,
        write_page_checksum=True,
    )
    back, back_info = read_catalogue(root, "cat")
    assert back.equals(table) and back_info == info
    data = bytearray(legacy.read_bytes())
    for at in (len(data) // 3, len(data) // 2):
        damaged = bytearray(data)
        damaged[at] ^= 0xFF
        legacy.write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match=r"catalogue\.parquet: damaged.*vitrieve ingest --catalogue cat"):
            read_catalogue(root, "cat")
    legacy.write_bytes(bytes(data[: len(data) // 2]))  # a partial copy
    with pytest.raises(ValueError, match="damaged or partly copied"):
        read_catalogue(root, "cat")
