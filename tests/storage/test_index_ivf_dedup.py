"""``ivf-dedup``: an IVF over the distinct codes with every row per code beside it. Probing every list, it
finds the exact distances; appends and deletes in place leave the same rows per code as a fresh build."""

from __future__ import annotations

import numpy as np
import pytest

from storage.index import build_index, verify_index
from storage.index.distinct import distinct_layout
from tests.storage.test_index_kinds import brute_force


def crowded(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sparse unsorted row_ids; codes from 60 values with a few bits flipped, one value holding a third of rows."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (60, 8), dtype=np.uint8)
    pick = np.where(rng.random(n) < 0.33, 0, rng.integers(0, 60, n))
    flips = np.packbits(rng.random((n, 64)) < 0.03, axis=1)
    codes = base[pick] ^ np.where(rng.random((n, 1)) < 0.5, flips, 0).astype(np.uint8)
    return rng.permutation(20 * n)[:n].astype(np.int64), codes


def groups(index) -> dict[bytes, list[int]]:
    """Code -> its rows, as the index holds them."""
    rows, codes = index.row_codes()
    out: dict[bytes, list[int]] = {}
    for r, c in zip(rows.tolist(), codes, strict=True):
        out.setdefault(c.tobytes(), []).append(r)
    return out


def assert_fresh_layout(index, ids: np.ndarray, codes: np.ndarray) -> None:
    """Code ids are the codes' ranks and rows sit in (code, row_id) order, as a fresh build lays them out."""
    rows, offsets, distinct = distinct_layout(ids, codes)
    assert np.array_equal(index.rows, rows) and np.array_equal(index.offsets, offsets)
    assert np.array_equal(index.distinct_codes(), distinct)


def expected_groups(ids: np.ndarray, codes: np.ndarray) -> dict[bytes, list[int]]:
    rows, offsets, distinct = distinct_layout(ids, codes)
    return {distinct[j].tobytes(): rows[offsets[j] : offsets[j + 1]].tolist() for j in range(len(distinct))}


def test_every_list_probed_gives_the_exact_distances_and_row_order():
    ids, codes = crowded()
    queries = crowded(200, seed=1)[1]
    index = build_index(ids, codes, 64, "ivf-dedup", {"nlist": 16, "nprobe": 16})
    assert index.n_unique < len(ids) // 2 and verify_index(index, ids, codes) == []
    dist, got = index.search(queries, 50)
    ref_d, _ = brute_force(ids, codes, queries, 50)
    assert np.array_equal(dist, ref_d)  # ties at the 50th distance may name other rows, never other distances
    true = np.array(
        [
            [np.unpackbits(codes[ids == r][0] ^ q).sum() for r in row]
            for q, row in zip(queries, got, strict=True)
        ]
    )
    assert np.array_equal(true, dist)
    key = dist.astype(np.int64) * (1 << 40) + got
    assert (np.diff(key, axis=1) > 0).all()  # (distance, row_id) ascending, no row twice
    # below the k-th distance the rows are exactly brute force's
    for q in range(len(queries)):
        below = ref_d[q] < ref_d[q, -1]
        assert np.array_equal(got[q][below], brute_force(ids, codes, queries[q : q + 1], 50)[1][0][below])


@pytest.mark.parametrize("interleaved", [False, True])
def test_appends_in_place_hold_the_rows_of_a_fresh_build(interleaved):
    ids, codes = crowded()
    extra_ids, extra_codes = crowded(700, seed=2)
    extra_codes[:100] = codes[:100]  # known codes join their group, the rest are new or seen among themselves
    extra_ids = (extra_ids % 997) * 60 + 1 if interleaved else extra_ids + 10**6
    extra_ids = np.unique(extra_ids)[: len(extra_ids)]
    extra_ids = extra_ids[~np.isin(extra_ids, ids)]
    extra_codes = extra_codes[: len(extra_ids)]
    index = build_index(ids, codes, 64, "ivf-dedup", {"nlist": 16, "nprobe": 16})
    index.add(extra_ids, extra_codes)
    all_ids, all_codes = np.concatenate((ids, extra_ids)), np.concatenate((codes, extra_codes))
    assert index.ntotal == len(all_ids) and verify_index(index, all_ids, all_codes) == []
    assert groups(index) == expected_groups(all_ids, all_codes)
    assert_fresh_layout(index, all_ids, all_codes)
    fresh = build_index(all_ids, all_codes, 64, "ivf-dedup", {"nlist": 16, "nprobe": 16})
    queries = crowded(100, seed=3)[1]
    assert np.array_equal(index.search(queries, 30)[0], fresh.search(queries, 30)[0])


def test_deletes_in_place_drop_rows_and_emptied_codes():
    ids, codes = crowded()
    index = build_index(ids, codes, 64, "ivf-dedup", {"nlist": 16, "nprobe": 16})
    singles = [j for j in range(len(ids)) if (codes == codes[j]).all(axis=1).sum() == 1][:20]
    gone = np.concatenate((ids[::5], ids[singles]))
    assert index.remove(np.concatenate((gone, [-5, 10**9]))) == len(np.unique(gone))
    left = ~np.isin(ids, gone)
    assert verify_index(index, ids[left], codes[left]) == []
    assert groups(index) == expected_groups(ids[left], codes[left])
    assert_fresh_layout(index, ids[left], codes[left])
    dist, got = index.search(codes[singles], 10)
    assert not np.isin(got, gone).any() and (dist[:, 0] > 0).all()  # an emptied code is no longer found
    ref_d, _ = brute_force(ids[left], codes[left], codes[singles], 10)
    assert np.array_equal(dist, ref_d)


def test_fewer_distinct_codes_than_lists_uses_one_list_each():
    ids = np.arange(200, dtype=np.int64)
    codes = np.repeat(
        np.random.default_rng(0).integers(0, 256, (3, 8), dtype=np.uint8), [100, 60, 40], axis=0
    )
    index = build_index(ids, codes, 64, "ivf-dedup", {"nlist": 5, "nprobe": 4})
    assert index.params["nlist"] == 3 and index.params["nprobe"] == 3 and index.n_unique == 3
    dist, got = index.search(codes[[0]], 120)
    assert (dist[0, :100] == 0).all() and np.array_equal(got[0, :100], np.arange(100))


@pytest.mark.parametrize("nbytes", [1, 8, 16])
def test_repeat_codes_equals_a_repeat_along_rows(nbytes):
    from storage.index.distinct import repeat_codes

    rng = np.random.default_rng(nbytes)
    distinct = rng.integers(0, 256, (40, nbytes), dtype=np.uint8)
    counts = rng.integers(0, 5, 40)
    assert np.array_equal(repeat_codes(distinct, counts), np.repeat(distinct, counts, axis=0))
