"""Catalogues stored as fixed-size shard files: streamed writes, unchanged shards kept, an atomic switch."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from storage.catalogue import (
    LEGACY_FILE,
    MANIFEST,
    SCHEMA,
    CatalogueInfo,
    CatalogueWriter,
    catalogue_dataset,
    catalogue_exists,
    fingerprint,
    read_catalogue,
    write_catalogue,
)
from storage.fs import StorageRoot

INFO = CatalogueInfo(name="cat", label_names=["a", "b", "c"], protocol={"kind": "test"}, source="mem://")


def _table(row_ids: np.ndarray, seed: int = 0) -> pa.Table:
    n = len(row_ids)
    rng = np.random.default_rng(seed)
    split = np.array(["query", "train", "database"])[rng.integers(0, 3, n)]
    split[:3] = ["query", "train", "database"]
    return pa.table(
        {
            "row_id": np.asarray(row_ids, np.int64),
            "image_id": [f"img{r}" for r in row_ids],
            "uri": [f"mem://img{r}.png" for r in row_ids],
            "image": pa.nulls(n, pa.binary()),
            "labels": [[int(x)] for x in rng.integers(0, 3, n)],
            "split": split,
            "in_train": split == "train",
            "in_validation": np.zeros(n, bool),
            "in_query": split == "query",
            "in_database": split != "query",
            "sha256": [rng.bytes(32) for _ in range(n)],
            "width": np.full(n, 8, np.int32),
            "height": np.full(n, 8, np.int32),
            "channels": np.full(n, 3, np.int32),
            "ingested_at": [datetime(2026, 1, 1, tzinfo=UTC)] * n,
        },
        schema=SCHEMA,
    )


def _shard_files(root: StorageRoot) -> list[str]:
    return [n for n in root.names("catalogues", "cat") if n.startswith("shard-")]


def test_rows_land_in_one_file_per_shard_and_read_back_whole(tmp_path):
    root = StorageRoot(tmp_path)
    row_ids = np.r_[
        np.arange(0, 50), np.arange(130, 200), np.arange(640, 650)
    ]  # shards 0, 1, 2, 3 (none), 10
    table = _table(row_ids)
    write_catalogue(root, table.take(np.random.default_rng(1).permutation(len(table))), INFO, shard_rows=64)
    files = _shard_files(root)
    assert [f.split("-")[1] for f in files] == ["00000", "00002", "00003", "00010"]
    back, info = read_catalogue(root, "cat")
    assert back.equals(table) and info == INFO and fingerprint(back) == fingerprint(table)
    assert (
        read_catalogue(root, "cat", columns=["row_id"])[0]["row_id"].to_numpy().tolist() == row_ids.tolist()
    )
    shard = catalogue_dataset(root, "cat").to_table(
        filter=(pc.field("row_id") >= 128) & (pc.field("row_id") < 192), columns=["row_id"]
    )
    assert shard["row_id"].to_numpy().tolist() == list(range(130, 192))


def test_streamed_batches_write_the_same_files_as_a_whole_table(tmp_path):
    table = _table(np.arange(0, 300) * 2)
    whole, streamed = StorageRoot(tmp_path / "whole"), StorageRoot(tmp_path / "streamed")
    write_catalogue(whole, table, INFO, shard_rows=100)
    sizes = [1, 7, 50, 91, 151]
    batches = [
        table.slice(lo, n).to_batches()[0] for lo, n in zip(np.cumsum([0, *sizes[:-1]]), sizes, strict=True)
    ]
    write_catalogue(streamed, iter(batches), INFO, shard_rows=100)
    for name in [*_shard_files(whole), MANIFEST]:
        assert whole.read_bytes("catalogues", "cat", name) == streamed.read_bytes("catalogues", "cat", name)


def test_an_append_rewrites_only_the_last_shard_and_removes_what_it_replaced(tmp_path):
    root = StorageRoot(tmp_path)
    table = _table(np.arange(250))
    write_catalogue(root, table, INFO, shard_rows=100)
    before = {n: os.stat(root.path("catalogues", "cat", n)) for n in _shard_files(root)}
    grown = pa.concat_tables([table, _table(np.arange(250, 260), seed=3)]).sort_by("row_id")
    write_catalogue(root, grown, INFO, shard_rows=100)
    after = _shard_files(root)
    kept = [n for n in after if n in before]
    assert [n.split("-")[1] for n in kept] == ["00000", "00001"]  # untouched: same file, same inode and time
    assert all(os.stat(root.path("catalogues", "cat", n)).st_mtime_ns == before[n].st_mtime_ns for n in kept)
    assert len(after) == 3 and len(set(before) - set(after)) == 1  # the old last shard was removed
    assert read_catalogue(root, "cat")[0].num_rows == 260


@pytest.mark.parametrize(
    "batches, error",
    [
        (lambda t: [t.slice(20), t.slice(0, 20)], "must come in row_id order: 0 after 39"),
        (lambda t: [t.slice(0, 20), t.slice(19)], "'row_id' has duplicate values"),
        (lambda t: [t, t.slice(0, 1).set_column(0, "row_id", pa.array([999], pa.int64()))], "'image_id'"),
        (lambda t: [t.filter(pc.invert(t["in_query"]))], "no query images"),
        (lambda t: [t.set_column(2, "uri", pa.nulls(len(t), pa.string()))], "neither image bytes nor a uri"),
    ],
)
def test_bad_rows_leave_the_stored_catalogue_as_it_was(tmp_path, batches, error):
    root = StorageRoot(tmp_path)
    write_catalogue(root, _table(np.arange(40)), INFO, shard_rows=16)
    stored = {n: root.read_bytes("catalogues", "cat", n) for n in root.names("catalogues", "cat")}
    bad = _table(np.arange(40), seed=5)
    with pytest.raises(ValueError, match=error):
        write_catalogue(root, iter(b for t in batches(bad) for b in t.to_batches()), INFO, shard_rows=16)
    assert read_catalogue(root, "cat")[0].equals(_table(np.arange(40)))
    assert all(root.read_bytes("catalogues", "cat", n) == data for n, data in stored.items())
    assert root.names("catalogues", "cat") == sorted(stored)  # the refused write's shard files are gone
    if "order" not in error:  # a whole table is sorted first, so only the stream can come out of order
        with pytest.raises(ValueError, match=error):
            write_catalogue(root, pa.concat_tables(batches(bad)), INFO, shard_rows=16)
        assert root.names("catalogues", "cat") == sorted(stored)


def test_a_legacy_single_file_is_read_and_replaced_by_the_next_write(tmp_path):
    import pyarrow.parquet as pq

    root = StorageRoot(tmp_path)
    table = _table(np.arange(30))
    os.makedirs(root.path("catalogues", "cat"))
    pq.write_table(
        table.replace_schema_metadata(INFO.to_metadata()), root.path("catalogues", "cat", LEGACY_FILE)
    )
    assert catalogue_exists(root, "cat")
    back, info = read_catalogue(root, "cat")
    assert back.equals(table) and info == INFO
    assert catalogue_dataset(root, "cat").count_rows() == 30
    write_catalogue(root, table, INFO)
    assert LEGACY_FILE not in root.names("catalogues", "cat") and read_catalogue(root, "cat")[0].equals(table)


def test_the_writer_holds_one_shard_at_a_time(tmp_path):
    root = StorageRoot(tmp_path)
    writer = CatalogueWriter(root, INFO, shard_rows=32)
    table = _table(np.arange(100))
    for lo in range(0, 100, 10):
        writer.write(table.slice(lo, 10))
        pending = sum(t.num_rows for t in writer._pending)
        assert pending <= 32 and len(writer.parts) == (lo + 10) // 32
    assert not catalogue_exists(root, "cat")  # nothing is live before the commit
    writer.commit()
    assert read_catalogue(root, "cat")[0].equals(table)


def test_equal_id_hashes_are_told_apart_from_a_repeated_id(tmp_path, monkeypatch):
    import storage.catalogue as catalogue

    monkeypatch.setattr(catalogue, "_id_hash", len)  # every id of one length collides
    root = StorageRoot(tmp_path)
    table = _table(np.arange(40))
    write_catalogue(root, table, INFO, shard_rows=16)
    assert read_catalogue(root, "cat")[0].equals(table)
    repeated = table.set_column(1, "image_id", pa.array([f"img{r % 39}" for r in range(40)]))
    with pytest.raises(ValueError, match="'image_id' has duplicate values"):
        write_catalogue(root, iter(repeated.to_batches(max_chunksize=7)), INFO, shard_rows=16)
