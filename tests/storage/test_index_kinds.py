"""Index kinds: exact kinds equal brute force (ties by row_id), ANN recall on clustered codes, manifests,
CURRENT only after verification, memory-mapped and cached loading, clear errors for bad parameters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.search import clustered_codes
from storage.fs import StorageRoot
from storage.index import (
    KINDS,
    build_index,
    current,
    load_index,
    load_index_cached,
    publish,
    resolve_params,
    search,
    verify_index,
    write_index,
)
from storage.search_eval import exact_topk_numpy, recall_at_k


def brute_force(db_ids, db_codes, queries, k):
    """Reference ranking: Hamming distance, then row_id (docs/ARCHITECTURE.md, "Ranking and search")."""
    out_d, out_i = [], []
    for q in queries:
        d = np.unpackbits(db_codes ^ q, axis=1).sum(axis=1)
        order = np.lexsort((db_ids, d))[:k]
        out_d.append(d[order])
        out_i.append(db_ids[order])
    return np.array(out_d), np.array(out_i)


@pytest.fixture(scope="module")
def clustered():
    codes = clustered_codes(6000, 64, centres=40, flip_p=0.04, seed=3)
    ids = np.random.default_rng(4).permutation(100_000)[:6000].astype(np.int64)  # unsorted, sparse ids
    queries = clustered_codes(300, 64, centres=40, flip_p=0.04, seed=3, offset=10**6)
    return ids, codes, queries


@pytest.mark.parametrize("kind", ["flat", "flat-dedup"])
@pytest.mark.parametrize("bits", [8, 64, 128])
def test_exact_kinds_equal_brute_force_with_ties(kind, bits):
    rng = np.random.default_rng(bits)
    nbytes = bits // 8
    base = rng.integers(0, 256, (25, nbytes), dtype=np.uint8)  # few distinct codes: ties everywhere
    codes = base[rng.integers(0, 25, 3000)]
    codes[rng.random(3000) < 0.2, 0] ^= 1
    ids = rng.permutation(50_000)[:3000].astype(np.int64)
    queries = np.concatenate([codes[:40], rng.integers(0, 256, (20, nbytes), dtype=np.uint8)])
    index = build_index(ids, codes, bits, kind)
    for k in (1, 7, 100, 250):
        ref_d, ref_i = brute_force(ids, codes, queries, k)
        dist, got = search(index, queries, k)
        assert np.array_equal(dist, ref_d), (kind, bits, k)
        assert np.array_equal(got, ref_i), (kind, bits, k)
    # one query at a time gives the same rows as the batch
    d1, i1 = index.search(queries[:1], 100)
    assert np.array_equal(i1[0], brute_force(ids, codes, queries[:1], 100)[1][0])


def test_numpy_baseline_and_flat_agree(clustered):
    ids, codes, queries = clustered
    order = np.argsort(ids)
    nd, ni = exact_topk_numpy(ids[order], codes[order], queries, 100)
    fd, fi = build_index(ids, codes, 64, "flat").search(queries, 100)
    dd, di = build_index(ids, codes, 64, "flat-dedup").search(queries, 100)
    assert np.array_equal(ni, fi) and np.array_equal(nd, fd)
    assert np.array_equal(di, fi) and np.array_equal(dd, fd)


@pytest.mark.parametrize(
    "kind,params",
    [
        ("hnsw", {"ef_search": 256}),
        ("ivf", {"nlist": 64, "nprobe": 8}),
        ("ivf-dedup", {"nlist": 64, "nprobe": 8}),
        ("multihash", {"nflip": 2}),
    ],
)
def test_ann_recall_against_exact_on_clustered_codes(clustered, kind, params):
    ids, codes, queries = clustered
    exact_d, exact_i = build_index(ids, codes, 64, "flat").search(queries, 100)
    index = build_index(ids, codes, 64, kind, params)
    assert verify_index(index, ids, codes) == []
    dist, got = index.search(queries, 100)
    tie_recall, id_recall = recall_at_k(exact_d, exact_i, dist, got)
    assert tie_recall >= 0.95, (kind, tie_recall)
    assert id_recall <= tie_recall + 1e-9
    ok = got >= 0  # returned ids are real rows, with their true distances, ordered by (distance, row_id)
    assert np.isin(got[ok], ids).all()
    assert (np.diff(dist.astype(np.int64), axis=1)[ok[:, 1:]] >= 0).all()


def test_recall_counts_ties_at_the_kth_distance():
    exact_d = np.array([[0, 1, 1]])
    exact_i = np.array([[5, 6, 7]])
    ann_d = np.array([[0, 1, 1]])
    ann_i = np.array([[5, 6, 9]])  # 9 ties 7 at distance 1: a correct 3rd neighbour
    tie, ids = recall_at_k(exact_d, exact_i, ann_d, ann_i)
    assert tie == 1.0 and ids == pytest.approx(2 / 3)


@pytest.mark.parametrize("kind", KINDS)
def test_manifest_roundtrip_mmap_and_cache(tmp_path, clustered, kind):
    ids, codes, queries = clustered
    root = StorageRoot(tmp_path)
    params = {"nlist": 32} if kind == "ivf" else None
    index = build_index(ids, codes, 64, kind, params)
    manifest = write_index(root, index, "cat", "m1", kind, 64, len(ids), 0.5)
    data = json.loads((tmp_path / "indexes" / "cat" / "m1" / f"{kind}.manifest.json").read_text())
    for key in ("kind", "params", "bits", "ntotal", "sha256", "build_seconds", "file_bytes"):
        assert key in data
    assert data["kind"] == kind and data["ntotal"] == len(ids) and data["bits"] == 64
    files = [data["file"]] + ([data["companion_file"]] if data["companion_file"] else [])
    assert data["file_bytes"] == sum((tmp_path / "indexes" / "cat" / "m1" / f).stat().st_size for f in files)
    if kind == "ivf":
        assert data["params"]["nlist"] == 32 and data["params"]["nprobe"] == 8
    publish(root, manifest)
    assert current(root, "cat")["kind"] == kind
    loaded, m2 = load_index(root, "cat")
    assert m2.sha256 == manifest.sha256 and loaded.ntotal == len(ids)
    assert np.array_equal(loaded.search(queries[:20], 10)[1], index.search(queries[:20], 10)[1])
    first, _ = load_index_cached(root, "cat")
    again, _ = load_index_cached(root, "cat")
    assert first is again  # loaded once


def test_flat_is_memory_mapped(tmp_path, clustered):
    ids, codes, _ = clustered
    root = StorageRoot(tmp_path)
    publish(root, write_index(root, build_index(ids, codes, 64), "cat", "m1", "flat", 64, len(ids), 0.0))
    loaded, _ = load_index(root, "cat")
    assert not loaded.inner.xb.is_owned  # the codes stay in the page cache, not copied into the process
    loaded, _ = load_index(root, "cat", mmap=False)
    assert loaded.inner.xb.is_owned


def test_bad_parameters_name_the_item_and_reason():
    with pytest.raises(ValueError, match=r"shop.*unknown index kind 'annoy'"):
        resolve_params("annoy", None, 100, 64, item="shop")
    with pytest.raises(ValueError, match=r"nlist=500 exceeds the 100 codes"):
        resolve_params("ivf", {"nlist": 500}, 100, 64)
    with pytest.raises(ValueError, match=r"nprobe=20 exceeds nlist=10"):
        resolve_params("ivf", {"nlist": 10, "nprobe": 20}, 100, 64)
    with pytest.raises(ValueError, match=r"do not apply to kind 'flat'"):
        resolve_params("flat", {"nprobe": 3}, 100, 64)
    with pytest.raises(ValueError, match=r"nhash\*hash_bits = 80 exceeds the 64-bit"):
        resolve_params("multihash", {"nhash": 5, "hash_bits": 16}, 100, 64)
    with pytest.raises(ValueError, match=r"must be a positive integer"):
        resolve_params("hnsw", {"m": 0}, 100, 64)
    with pytest.raises(ValueError, match="duplicate row_ids"):
        build_index(np.array([1, 1]), np.zeros((2, 8), np.uint8), 64)


def test_incremental_add_keeps_exact_order(clustered):
    ids, codes, queries = clustered
    order = np.argsort(ids)
    ids, codes = ids[order], codes[order]
    for kind in ("flat", "flat-dedup"):
        index = build_index(ids[:5000], codes[:5000], 64, kind)
        index.add(ids[5000:], codes[5000:])
        assert index.ntotal == 6000
        ref = brute_force(ids, codes, queries[:30], 50)
        assert np.array_equal(index.search(queries[:30], 50)[1], ref[1]), kind
    index = build_index(ids[1000:], codes[1000:], 64, "flat")
    index.add(ids[:1000], codes[:1000])  # older row_ids appended: falls back to exact re-ranking
    assert not index.ordered
    assert np.array_equal(index.search(queries[:30], 50)[1], brute_force(ids, codes, queries[:30], 50)[1])


def test_verify_rejects_wrong_rows(clustered):
    ids, codes, _ = clustered
    index = build_index(ids, codes, 64, "flat-dedup")
    other = ids.copy()
    other[0] = 10**9
    problems = verify_index(index, other, codes)
    assert problems and "differ" in problems[0]


def test_hnsw_companion_is_checked_and_current_moves_only_on_publish(tmp_path, clustered):
    ids, codes, queries = clustered
    root = StorageRoot(tmp_path)
    flat = write_index(root, build_index(ids, codes, 64, "flat"), "cat", "m1", "flat", 64, len(ids), 0.0)
    publish(root, flat)
    hnsw = write_index(root, build_index(ids, codes, 64, "hnsw"), "cat", "m1", "hnsw", 64, len(ids), 0.0)
    assert current(root, "cat")["kind"] == "flat"  # written, not yet published
    loaded, _ = load_index(root, "cat", "m1", "hnsw")
    assert loaded.ntotal == len(ids) and np.array_equal(np.sort(loaded.ids()), np.sort(ids))
    publish(root, hnsw)
    assert current(root, "cat") | {"published_at": None} == {
        "model_id": "m1",
        "kind": "hnsw",
        "sha256": hnsw.sha256,
        "params": hnsw.params,
        "published_at": None,
    }
    (tmp_path / "indexes" / "cat" / "m1" / "hnsw.rows.npy").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="sha256"):
        load_index(root, "cat")


@pytest.mark.parametrize("far", [False, True])  # far: row_ids past 2^31, dropped without a mark array
def test_ivf_remove_rewrites_only_the_dropped_entries(clustered, far):
    ids, codes, queries = clustered
    ids = ids + (1 << 40) if far else ids
    index = build_index(ids, codes, 64, "ivf", {"nlist": 16, "nprobe": 16})
    gone = ids[::3]
    assert index.remove(np.concatenate((gone, [-1, 10**7]))) == len(gone)  # unknown ids are ignored
    left = ~np.isin(ids, gone)
    assert index.ntotal == int(left.sum()) and verify_index(index, ids[left], codes[left]) == []
    ref_d, _ = brute_force(ids[left], codes[left], queries[:20], 10)
    assert np.array_equal(index.search(queries[:20], 10)[0], ref_d)
    assert index.remove(gone) == 0
