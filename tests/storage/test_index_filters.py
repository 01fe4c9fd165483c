"""Deletes and filters on every index kind: search with rows hidden (tombstones, ``remove``) or restricted to an
allow-list equals brute force over the remaining rows, ties at the k-th distance included (ranked by row_id);
a filter matching nothing gives empty results."""

from __future__ import annotations

import numpy as np
import pytest

from storage.index import KINDS, build_index, get_kind
from storage.index import filters as filters_module
from storage.index.filters import exact_search, search_rows

BITS = 64
# exhaustive settings on tiny data, so the approximate kinds find every neighbour the data holds
PARAMS = {
    "hnsw": {"ef_search": 512},
    "ivf": {"nlist": 4, "nprobe": 4},
    "ivf-dedup": {"nlist": 4, "nprobe": 4},
    "multihash": {"nflip": 2},
}


def brute_force(ids, codes, queries, k):
    """Reference: Hamming distance, then row_id; returns (distances, row_ids, all distances per query)."""
    every = np.stack([np.unpackbits(codes ^ q, axis=1).sum(axis=1) for q in queries])
    order = np.stack([np.lexsort((ids, d))[:k] for d in every])
    return np.take_along_axis(every, order, 1), ids[order], every


def assert_equals_brute_force(kind, got, ids, codes, queries, k):
    """Exact kinds: identical to brute force. Approximate kinds (exhaustive settings): identical distances,
    identical rows below the k-th distance, and rows at the k-th distance that truly tie there."""
    ref_d, ref_i, every = brute_force(ids, codes, queries, k)
    dist, rows = got
    assert dist.shape == ref_d.shape, (kind, dist.shape, ref_d.shape)
    assert np.array_equal(dist, ref_d), kind
    if get_kind(kind).exact:
        assert np.array_equal(rows, ref_i), kind
        return
    for q in range(len(queries)):
        kth = ref_d[q, -1]
        below = ref_d[q] < kth
        assert np.array_equal(rows[q, below], ref_i[q, below]), (kind, q)
        at_kth = set(ids[every[q] == kth].tolist())
        tail = rows[q, ~below].tolist()
        assert set(tail) <= at_kth and len(set(tail)) == len(tail) and tail == sorted(tail), (kind, q)


def near(kind, queries):
    """multihash only finds codes sharing a hash window within nflip bits: it gets the 12 database codes."""
    return queries[:12] if kind == "multihash" else queries


@pytest.fixture(scope="module")
def tied():
    """1200 rows over 30 distinct codes (a fifth with one bit flipped): ties at every distance."""
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, (30, BITS // 8), dtype=np.uint8)
    codes = base[rng.integers(0, 30, 1200)]
    codes[rng.random(1200) < 0.2, 0] ^= 1
    ids = rng.permutation(20_000)[:1200].astype(np.int64)  # sparse, unsorted row_ids
    queries = np.concatenate([codes[:12], rng.integers(0, 256, (4, BITS // 8), dtype=np.uint8)])
    return ids, codes, queries


@pytest.mark.parametrize("oversample_max", [1024, 0])  # 0: through the kind's selector where it has one
@pytest.mark.parametrize("kind", KINDS)
def test_deletes_then_search_equal_brute_force_over_the_remaining_rows(
    kind, oversample_max, tied, monkeypatch
):
    monkeypatch.setattr(filters_module, "OVERSAMPLE_MAX", oversample_max)
    ids, codes, queries = tied
    queries = near(kind, queries)
    index = build_index(ids, codes, BITS, kind, PARAMS.get(kind))
    gone = np.random.default_rng(1).choice(ids, 300, replace=False)
    left = ~np.isin(ids, gone)
    # multihash reaches no further than a code's near copies (~30 left of each): k stays within them
    for k in (1, 10, 20) if kind == "multihash" else (1, 10, 75):
        got = search_rows(index, queries, k, exclude=gone)
        assert not np.isin(got[1], gone).any()
        assert_equals_brute_force(kind, got, ids[left], codes[left], queries, k)
    if index.removable:  # the same rows dropped in place: the same results without a filter
        assert index.remove(gone) == len(gone) and index.ntotal == int(left.sum())
        assert_equals_brute_force(kind, index.search(queries, 75), ids[left], codes[left], queries, 75)
        rows, held = index.row_codes()
        order = np.argsort(rows)
        kept = np.argsort(ids[left])
        assert np.array_equal(np.asarray(rows)[order], ids[left][kept])
        assert np.array_equal(np.asarray(held)[order], codes[left][kept])
    else:
        with pytest.raises(NotImplementedError, match=f"{kind} indexes cannot remove"):
            index.remove(gone)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_hidden_rows_crowding_the_top_are_searched_past(kind, tied, monkeypatch):
    """Hidden rows that are the queries' own nearest neighbours fill the first k + margin results: the search
    asks again with a wider margin until k visible rows are found, and still equals brute force."""
    monkeypatch.setattr(filters_module, "OVERSAMPLE_MAX", 10**6)  # never a selector: the margin path
    ids, codes, queries = tied
    index = build_index(ids, codes, BITS, kind, PARAMS.get(kind))
    _, nearest, _ = brute_force(ids, codes, queries[:3], 150)
    gone = np.unique(nearest)
    calls = []
    search = index.search
    monkeypatch.setattr(index, "search", lambda q, k: calls.append(k) or search(q, k))
    got = search_rows(index, queries, 40, exclude=gone)
    assert len(calls) >= 2 and calls[1] > calls[0]
    left = ~np.isin(ids, gone)
    assert_equals_brute_force(kind, got, ids[left], codes[left], queries, 40)


@pytest.mark.parametrize("kind", KINDS)
def test_filtered_search_equals_brute_force_over_the_filtered_rows(kind, tied):
    ids, codes, queries = tied
    queries = near(kind, queries)
    index = build_index(ids, codes, BITS, kind, PARAMS.get(kind))
    rng = np.random.default_rng(2)
    for size in (5, 200, 900):
        allow = rng.choice(ids, size, replace=False)
        allow = np.concatenate([allow, [10**7]])  # a row the index does not hold is ignored
        pick = np.isin(ids, allow)
        for k in (1, 20, 60):
            got = search_rows(index, queries, k, allow=allow)
            assert_equals_brute_force(kind, got, ids[pick], codes[pick], queries, min(k, int(pick.sum())))
    # a filter and deletes together
    allow, gone = ids[::2], ids[::6]
    pick = np.isin(ids, allow) & ~np.isin(ids, gone)
    got = search_rows(index, queries, 30, allow=allow, exclude=gone)
    assert_equals_brute_force(kind, got, ids[pick], codes[pick], queries, 30)


@pytest.mark.parametrize("kind", KINDS)
def test_a_filter_matching_nothing_returns_empty_results(kind, tied):
    ids, codes, queries = tied
    queries = near(kind, queries)
    index = build_index(ids, codes, BITS, kind, PARAMS.get(kind))
    for allow in (np.zeros(0, np.int64), np.array([10**7])):
        dist, rows = search_rows(index, queries, 10, allow=allow)
        assert dist.shape == rows.shape == (len(queries), 0)
        assert dist.dtype == np.int32 and rows.dtype == np.int64
    dist, rows = search_rows(index, queries, 10, exclude=ids)  # every row deleted
    assert rows.shape == (len(queries), 0)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_updated_codes_are_served_beside_the_index(kind, tied):
    ids, codes, queries = tied
    queries = near(kind, queries)
    index = build_index(ids, codes, BITS, kind, PARAMS.get(kind))
    changed = ids[:40]
    new_codes = np.ascontiguousarray(codes[::-1][:40])
    now = codes.copy()
    now[:40] = new_codes
    got = search_rows(index, queries, 50, exclude=changed, extra=(changed, new_codes))
    assert_equals_brute_force(kind, got, ids, now, queries, 50)
    allow = ids[::3]
    pick = np.isin(ids, allow)
    got = search_rows(index, queries, 50, allow=allow, exclude=changed, extra=(changed, new_codes))
    assert_equals_brute_force(kind, got, ids[pick], now[pick], queries, 50)


def test_exact_search_ranks_ties_by_row_id(tied):
    ids, codes, queries = tied
    for k in (1, 33, 2000):
        dist, rows = exact_search(ids, codes, queries, k)
        ref_d, ref_i, _ = brute_force(ids, codes, queries, min(k, len(ids)))
        assert np.array_equal(dist, ref_d) and np.array_equal(rows, ref_i)


def test_unordered_flat_with_a_filter_stays_exact(tied):
    ids, codes, queries = tied
    order = np.argsort(ids)
    index = build_index(ids[order][300:], codes[order][300:], BITS, "flat")
    index.add(ids[order][:300], codes[order][:300])  # older row_ids appended: not in row_id order
    assert not index.ordered
    allow = ids[::4]
    pick = np.isin(ids, allow)
    view = index.restricted(np.sort(allow), None)  # the selector path re-ranks ties by range search
    for k in (5, 80, 400):  # 400 > the 300 allowed rows: short rows are completed, not padded
        ref_k = min(k, int(pick.sum()))
        assert_equals_brute_force(
            "flat", search_rows(index, queries, k, allow=allow), ids[pick], codes[pick], queries, ref_k
        )
        got = filters_module._trim(*view.search(queries, k))
        assert_equals_brute_force("flat", got, ids[pick], codes[pick], queries, ref_k)


@pytest.mark.parametrize("offset", [0, 1 << 40])  # small row_ids: bitmap selector; huge ones: hash set
@pytest.mark.parametrize("kind", [k for k in KINDS if get_kind(k).selector_search])
def test_selector_views_equal_brute_force(kind, offset, tied):
    ids, codes, queries = tied
    ids = ids + offset
    index = build_index(ids, codes, BITS, kind, PARAMS.get(kind))
    allow, gone = ids[::3], ids[::5]
    for a, e in ((allow, None), (None, gone), (allow, gone)):
        pick = np.ones(len(ids), bool) if a is None else np.isin(ids, a)
        pick &= True if e is None else ~np.isin(ids, e)
        view = index.restricted(None if a is None else np.sort(a), None if e is None else np.sort(e))
        for k in (1, 25, 500):
            got = filters_module._trim(*view.search(queries, k))
            assert_equals_brute_force(kind, got, ids[pick], codes[pick], queries, min(k, int(pick.sum())))
    assert index.search(queries, 5)[1].shape == (len(queries), 5)  # the index itself is not restricted
