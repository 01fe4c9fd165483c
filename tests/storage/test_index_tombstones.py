"""Tombstones on a storage root: deletes and updates are visible to the next search, survive a reload, and are
compacted by the next re-index (rows dropped in place where the kind can remove them); ``--where`` predicates
resolve to catalogue rows through DuckDB, and a bad one is one clean line."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from storage.catalogue import SCHEMA, CatalogueInfo, write_catalogue
from storage.codes import write_codes
from storage.doctor import examine
from storage.fs import StorageRoot
from storage.index import (
    build_index,
    compact_tombstones,
    current,
    delete_rows,
    index_dir,
    index_from_codes,
    load_index,
    publish,
    read_tombstones,
    rows_where,
    search_published,
    update_rows,
    verify_index,
    write_index,
)

BITS, N = 64, 600
LABELS = ["zero", "one", "two", "three"]


def brute_force(ids, codes, queries, k):
    out_d, out_i = [], []
    for q in queries:
        d = np.unpackbits(codes ^ q, axis=1).sum(axis=1)
        order = np.lexsort((ids, d))[:k]
        out_d.append(d[order])
        out_i.append(ids[order])
    return np.array(out_d), np.array(out_i)


def _catalogue(n: int) -> pa.Table:
    rows = np.arange(n, dtype=np.int64) * 3 + 5
    split = np.where(rows % 10 == 1, "query", np.where(rows % 10 == 2, "train", "database"))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return pa.table(
        {
            "row_id": rows,
            "image_id": [f"img{r}" for r in rows],
            "uri": [f"mem://img{r}" for r in rows],
            "image": pa.nulls(n, pa.binary()),
            "labels": [[int(r % 4)] for r in rows],
            "split": split,
            "in_train": split == "train",
            "in_validation": np.zeros(n, bool),
            "in_query": split == "query",
            "in_database": split == "database",
            "sha256": [bytes(32)] * n,
            "width": np.full(n, 28, np.int32),
            "height": np.full(n, 28, np.int32),
            "channels": np.ones(n, np.int32),
            "ingested_at": [now] * n,
        },
        schema=SCHEMA,
    )


@pytest.fixture
def store(tmp_path):
    """A catalogue, codes of model m1 for every row (few distinct codes: ties), and nothing published yet."""
    root = StorageRoot(tmp_path)
    table = _catalogue(N)
    write_catalogue(root, table, CatalogueInfo("cat", LABELS, {}, "test"))
    rng = np.random.default_rng(11)
    base = rng.integers(0, 256, (20, BITS // 8), dtype=np.uint8)
    codes = base[rng.integers(0, 20, N)]
    codes[rng.random(N) < 0.25, 1] ^= 4
    rows = table["row_id"].to_numpy()
    write_codes(root, "cat", "m1", rows, codes, BITS)
    db = table["in_database"].to_numpy(zero_copy_only=False)
    return root, rows, codes, rows[db], codes[db]


def reindex(root: StorageRoot, kind: str, db_rows: np.ndarray, params=None):
    """What the ``binary_index`` asset does: compact the tombstones into a new index and publish it."""
    stones = read_tombstones(root, "cat")
    overrides = stones.overrides(root, "cat", "m1") if stones else None
    previous = None
    if root.exists(*index_dir("cat", "m1"), f"{kind}.manifest.json"):
        previous = load_index(root, "cat", "m1", kind, mmap=False)
    keep = stones.keep(db_rows) if stones else db_rows
    index, row_ids, _, report = index_from_codes(
        root, "cat", "m1", kind, params, keep_rows=keep, previous=previous, overrides=overrides
    )
    if report.mode == "unchanged":
        manifest = previous[1]
    else:
        manifest = write_index(root, index, "cat", "m1", kind, BITS, len(row_ids), 0.0, mode=report.mode)
    publish(root, manifest)
    if stones:
        compact_tombstones(root, "cat", stones, manifest, db_rows, overrides[0])
    return report


def code_of(index, rows: np.ndarray) -> np.ndarray:
    """The codes an index holds for ``rows`` (its rows are in any order)."""
    held, held_codes = index.row_codes()
    order = np.argsort(held)
    return np.asarray(held_codes)[order[np.searchsorted(np.asarray(held)[order], rows)]]


def served(root, queries, k, allow=None):
    """A search as a fresh process makes it: the published index and tombstones read from storage."""
    index, _ = load_index(StorageRoot(root.uri), "cat")
    return search_published(StorageRoot(root.uri), "cat", queries, k, allow, index)


@pytest.mark.parametrize("kind", ["flat", "flat-dedup", "hnsw", "ivf", "ivf-dedup", "multihash"])
def test_deletes_are_immediate_survive_reload_and_are_compacted(store, kind):
    root, rows, codes, db_rows, db_codes = store
    params = {"nlist": 4, "nprobe": 4} if kind in ("ivf", "ivf-dedup") else None
    assert reindex(root, kind, db_rows, params).mode == "rebuild"
    queries = db_codes[:10]
    gone = db_rows[::7]
    stones = delete_rows(root, "cat", gone)
    assert np.array_equal(read_tombstones(StorageRoot(root.uri), "cat").deleted, np.sort(gone))
    left = ~np.isin(db_rows, gone)
    ref = brute_force(db_rows[left], db_codes[left], queries, 15)
    got = served(root, queries, 15)
    assert not np.isin(got[1], gone).any() and np.array_equal(got[0], ref[0])
    if kind in ("flat", "flat-dedup"):
        assert np.array_equal(got[1], ref[1])
    assert len(stones.hidden(current(root, "cat"))) == len(gone)

    report = reindex(root, kind, db_rows, params)  # the nightly re-index compacts them
    removable = kind in ("flat", "flat-dedup", "ivf", "ivf-dedup")
    assert report.mode == ("incremental" if removable else "rebuild"), report
    assert report.removed_rows == (len(gone) if removable else 0)
    index, manifest = load_index(root, "cat")
    assert index.ntotal == manifest.ntotal == int(left.sum())
    assert not np.isin(index.ids(), gone).any()
    after = read_tombstones(root, "cat")
    assert after.index_sha256 == manifest.sha256 and len(after.pending) == 0
    assert np.array_equal(after.deleted, np.sort(gone))  # still deleted at the following re-index
    assert len(after.hidden(current(root, "cat"))) == 0
    again = served(root, queries, 15)
    assert np.array_equal(again[0], ref[0])
    assert reindex(root, kind, db_rows, params).mode == "unchanged"


def test_updates_are_served_then_merged_and_a_reencoded_row_supersedes_them(store):
    root, rows, codes, db_rows, db_codes = store
    reindex(root, "flat", db_rows)
    queries = db_codes[:10]
    changed = db_rows[[0, 5, 9]]
    new_codes = np.ascontiguousarray(~db_codes[[0, 5, 9]])
    update_rows(root, "cat", changed, new_codes)
    now = db_codes.copy()
    now[[0, 5, 9]] = new_codes
    probes = np.concatenate([queries, new_codes])
    ref = brute_force(db_rows, now, probes, 12)
    got = served(root, probes, 12)
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])

    assert reindex(root, "flat", db_rows).mode == "incremental"  # old codes removed, new ones added
    index, _ = load_index(root, "cat")
    assert np.array_equal(code_of(index, changed), new_codes)
    assert len(read_tombstones(root, "cat").hidden(current(root, "cat"))) == 0
    got = served(root, probes, 12)
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])
    assert reindex(root, "flat", db_rows).mode == "unchanged"  # the update lasts
    pointer, index = current(root, "cat"), load_index(root, "cat")[0]
    assert verify_index(index, db_rows, db_codes)  # the stored codes alone no longer describe the index
    delete_rows(root, "cat", db_rows[20:23])  # pending: the index still holds these rows
    assert verify_index(index, *read_tombstones(root, "cat").held(pointer, db_rows, db_codes)) == []

    stored = codes.copy()  # the image of row changed[0] was re-encoded: its stored code moves on
    stored[np.searchsorted(rows, changed[0])] ^= 1
    write_codes(root, "cat", "m1", rows, stored, BITS)
    reindex(root, "flat", db_rows)
    held = code_of(load_index(root, "cat")[0], changed[:1])
    assert np.array_equal(held[0], stored[np.searchsorted(rows, changed[0])])
    assert np.array_equal(read_tombstones(root, "cat").updated, np.sort(changed[1:]))


def test_delete_and_update_name_the_catalogue_and_reason(store):
    root, rows, _, db_rows, _ = store
    reindex(root, "flat", db_rows)
    with pytest.raises(ValueError, match=r"catalogue 'cat': row ids \[7\] are not rows of it"):
        delete_rows(root, "cat", [7, int(rows[0])])
    query_row = int(rows[~np.isin(rows, db_rows)][0])
    with pytest.raises(ValueError, match=r"are not database rows"):
        update_rows(root, "cat", [query_row], np.zeros((1, 8), np.uint8))
    with pytest.raises(ValueError, match=r"codes have 4 bytes, the published model m1 has 8"):
        update_rows(root, "cat", [int(db_rows[0])], np.zeros((1, 4), np.uint8))
    assert read_tombstones(root, "cat") is None  # nothing written by a refused change


def test_filters_resolve_through_duckdb_and_match_brute_force(store):
    root, rows, codes, db_rows, db_codes = store
    reindex(root, "flat-dedup", db_rows)
    threes = rows_where(root, "cat", "label = 3")
    assert np.array_equal(threes, rows[rows % 4 == 3])
    assert np.array_equal(rows_where(root, "cat", "label_name = 'three'"), threes)
    both = rows_where(root, "cat", "split = 'database' AND list_contains(labels, 1)")
    assert np.array_equal(both, db_rows[db_rows % 4 == 1])
    queries = db_codes[:8]
    pick = np.isin(db_rows, threes)
    delete_rows(root, "cat", db_rows[pick][:5])
    pick[np.flatnonzero(pick)[:5]] = False
    ref = brute_force(db_rows[pick], db_codes[pick], queries, 20)
    got = served(root, queries, 20, threes)
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])
    nothing = rows_where(root, "cat", "label = 99")
    assert len(nothing) == 0
    dist, ids = served(root, queries, 20, nothing)
    assert dist.shape == ids.shape == (8, 0)


@pytest.mark.parametrize(
    "predicate,reason",
    [
        ("colour = 'red'", r'--where "colour = \'red\'"|colour'),
        ("label = ", r"Parser Error|syntax error"),
        ("1=1; DROP TABLE catalogue", r"not a single SQL predicate|Parser Error|syntax"),
        ("row_id IN (SELECT 1 FROM read_csv('/etc/hostname'))", r"disabled|external|Permission"),
    ],
)
def test_a_bad_predicate_is_one_clean_line(store, predicate, reason):
    root = store[0]
    with pytest.raises(ValueError, match=reason) as err:
        rows_where(root, "cat", predicate)
    message = str(err.value)
    assert message.startswith("--where ") and "\n" not in message


def test_doctor_leaves_the_tombstones_alone(store):
    root, _, _, db_rows, _ = store
    reindex(root, "flat", db_rows)
    delete_rows(root, "cat", db_rows[:3])
    assert not [f for f in examine(root) if "TOMBSTONES" in f.path]


def test_a_row_query_ignores_a_previous_model(store):
    root, rows, codes, db_rows, _ = store
    reindex(root, "flat", db_rows)
    update_rows(root, "cat", db_rows[:2], np.zeros((2, 8), np.uint8))
    other = build_index(db_rows, codes[np.isin(rows, db_rows)], BITS)
    write_codes(root, "cat", "m2", rows, codes, BITS)
    publish(root, write_index(root, other, "cat", "m2", "flat", BITS, len(db_rows), 0.0))
    stones = read_tombstones(root, "cat")
    assert len(stones.served(current(root, "cat"))[0]) == 0  # m1's codes are not m2's
    assert len(stones.hidden(current(root, "cat"))) == 0  # m2's own codes of those rows are searched
