"""ml.metrics held against brute-force references (python loops, explicit (distance, index) ranking)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml.metrics import (
    _pairs,
    bit_diagnostics,
    code_stability,
    evaluate_retrieval,
    hamming_distance_matrix,
)


# --------------------------------------------------------------------------------------------- data
def tied_codes(rng: np.random.Generator, n: int, bits: int, n_distinct: int) -> np.ndarray:
    """Rows drawn from a small pool of distinct codes, so Hamming ties are everywhere."""
    pool = rng.integers(0, 2, size=(n_distinct, bits), dtype=np.uint8)
    return np.packbits(pool[rng.integers(0, n_distinct, size=n)], axis=1)


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((y.size, n_classes), dtype=bool)
    out[np.arange(y.size), y] = True
    return out


def make_labels(rng: np.random.Generator, n: int, n_classes: int, multilabel: bool) -> np.ndarray:
    if not multilabel:
        return one_hot(rng.integers(0, n_classes, size=n), n_classes)
    labels = rng.random((n, n_classes)) < 0.3  # some rows end up with no label at all
    return labels


# --------------------------------------------------------------------------------------------- references
def ref_distances(q: np.ndarray, db: np.ndarray) -> list[list[int]]:
    qb, dbb = np.unpackbits(q, axis=1), np.unpackbits(db, axis=1)
    return [[int(np.sum(qb[i] != dbb[j])) for j in range(len(db))] for i in range(len(q))]


def ref_metrics(q, ql, db, dbl, bits, map_ks, precision_ks) -> dict:
    dists = ref_distances(q, db)
    n = len(db)
    aps = {k: [] for k in map_ks}
    prec = {k: [] for k in precision_ks}
    rec = {k: [] for k in precision_ks}
    prad = [[] for _ in range(bits + 1)]
    rrad = [[] for _ in range(bits + 1)]
    for i in range(len(q)):
        ranked = [j for _, j in sorted((dists[i][j], j) for j in range(n))]
        rel = [bool(np.any(ql[i] & dbl[j])) for j in ranked]
        n_rel = sum(rel)
        for k in map_ks:
            kk = n if k is None else min(k, n)
            hits, total = 0, 0.0
            for rank in range(1, kk + 1):
                if rel[rank - 1]:
                    hits += 1
                    total += hits / rank
            aps[k].append(total / hits if hits else 0.0)
        for k in precision_ks:
            kk = min(k, n)
            hits = sum(rel[:kk])
            prec[k].append(hits / kk)
            if n_rel:
                rec[k].append(hits / n_rel)
        for r in range(bits + 1):
            within = [j for j in range(n) if dists[i][j] <= r]
            rel_within = sum(1 for j in within if np.any(ql[i] & dbl[j]))
            prad[r].append(rel_within / len(within) if within else 0.0)
            if n_rel:
                rrad[r].append(rel_within / n_rel)
    first = map_ks[0]
    per_class = {}
    for c in range(ql.shape[1]):
        members = [aps[first][i] for i in range(len(q)) if ql[i, c]]
        if members:
            per_class[c] = (sum(members) / len(members), len(members))
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    key = lambda k: "all" if k is None else str(k)  # noqa: E731
    return {
        "map_at": {key(k): mean(v) for k, v in aps.items()},
        "precision_at": {key(k): mean(v) for k, v in prec.items()},
        "recall_at": {key(k): mean(v) for k, v in rec.items()},
        "precision_radius": [mean(v) for v in prad],
        "recall_radius": [mean(v) for v in rrad],
        "per_class_ap": per_class,
    }


def assert_dict_close(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12, nan_ok=True), k


# --------------------------------------------------------------------------------------------- hamming
@pytest.mark.parametrize("bits", [8, 24, 64, 128])
def test_hamming_matches_unpackbits(bits: int) -> None:
    rng = np.random.default_rng(bits)
    q = rng.integers(0, 256, size=(13, bits // 8), dtype=np.uint8)
    db = rng.integers(0, 256, size=(29, bits // 8), dtype=np.uint8)
    db[3] = q[0]  # one exact match
    got = hamming_distance_matrix(q, db)
    want = (np.unpackbits(q, axis=1)[:, None, :] != np.unpackbits(db, axis=1)[None, :, :]).sum(axis=2)
    assert got.shape == (13, 29)
    assert np.issubdtype(got.dtype, np.unsignedinteger)
    np.testing.assert_array_equal(got.astype(np.int64), want)
    assert got[0, 3] == 0
    assert got.max() <= bits


def test_hamming_long_codes_do_not_overflow() -> None:
    q = np.zeros((2, 40), dtype=np.uint8)  # 320 bits
    db = np.full((3, 40), 255, dtype=np.uint8)
    db[1, :20] = 0
    got = hamming_distance_matrix(q, db).astype(np.int64)
    np.testing.assert_array_equal(got, [[320, 160, 320]] * 2)


def test_hamming_rejects_mismatched_widths() -> None:
    with pytest.raises(ValueError):
        hamming_distance_matrix(np.zeros((2, 8), np.uint8), np.zeros((2, 4), np.uint8))


# --------------------------------------------------------------------------------------------- retrieval
@pytest.mark.parametrize(
    ("bits", "multilabel", "n_db", "n_distinct", "seed"),
    [
        (8, False, 50, 4, 0),
        (8, True, 120, 5, 1),
        (16, False, 300, 6, 2),
        (16, True, 200, 3, 3),
        (24, True, 80, 8, 4),
        (128, False, 60, 4, 5),
    ],
)
def test_evaluate_matches_bruteforce(bits, multilabel, n_db, n_distinct, seed) -> None:
    rng = np.random.default_rng(seed)
    n_classes = 5
    db = tied_codes(rng, n_db, bits, n_distinct)
    dbl = make_labels(rng, n_db, n_classes, multilabel)
    dbl[:, n_classes - 1] = False  # the last class is absent from the database
    q = np.concatenate([tied_codes(rng, 20, bits, n_distinct), db[:5]])
    ql = make_labels(rng, 25, n_classes, multilabel)
    ql[:, n_classes - 1] = False
    ql[0] = False
    ql[0, n_classes - 1] = True  # a query with no relevant item at all, alone in its class
    map_ks, precision_ks = (5, 1, 100, None), (1, 5, 10, 1000)
    got = evaluate_retrieval(q, ql, db, dbl, bits, map_ks=map_ks, precision_ks=precision_ks, chunk=7)
    want = ref_metrics(q, ql, db, dbl, bits, map_ks, precision_ks)
    assert_dict_close(got.map_at, want["map_at"])
    assert_dict_close(got.precision_at, want["precision_at"])
    assert_dict_close(got.recall_at, want["recall_at"])
    np.testing.assert_allclose(got.precision_radius, want["precision_radius"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.recall_radius, want["recall_radius"], rtol=1e-9, atol=1e-12)
    assert got.per_class_ap.keys() == want["per_class_ap"].keys()
    for c, (ap, count) in want["per_class_ap"].items():
        assert got.per_class_ap[c][0] == pytest.approx(ap, rel=1e-9, abs=1e-12)
        assert got.per_class_ap[c][1] == count
    assert got.per_class_ap[n_classes - 1][0] == 0.0
    assert got.precision_within_radius2 == got.precision_radius[2]
    assert (got.n_queries, got.n_database) == (25, n_db)
    assert len(got.precision_radius) == bits + 1


def test_chunk_size_does_not_change_result() -> None:
    rng = np.random.default_rng(7)
    db, q = tied_codes(rng, 150, 16, 5), tied_codes(rng, 40, 16, 5)
    dbl, ql = make_labels(rng, 150, 4, True), make_labels(rng, 40, 4, True)
    a = evaluate_retrieval(q, ql, db, dbl, 16, chunk=1)
    b = evaluate_retrieval(q, ql, db, dbl, 16, chunk=1000)
    assert a.map_at == pytest.approx(b.map_at)
    assert a.precision_radius == pytest.approx(b.precision_radius)
    assert list(a.map_at) == ["100", "1000", "all"]
    assert list(a.precision_at) == ["1", "5", "10", "100"]


def test_ap_all_counts_the_last_item() -> None:
    # Four irrelevant items at distance 0, the only relevant one last at distance 8: AP@all = 1/5.
    db = np.array([[0], [0], [0], [0], [255]], dtype=np.uint8)
    dbl = one_hot(np.array([1, 1, 1, 1, 0]), 2)
    q, ql = np.array([[0]], dtype=np.uint8), one_hot(np.array([0]), 2)
    m = evaluate_retrieval(q, ql, db, dbl, 8, map_ks=(None, 4, 5, 100), precision_ks=(1, 5))
    assert m.map_at["all"] == pytest.approx(1 / 5)
    assert m.map_at["4"] == 0.0
    assert m.map_at["5"] == pytest.approx(1 / 5)
    assert m.map_at["100"] == pytest.approx(1 / 5)  # k > N clamps to N
    assert m.precision_at["5"] == pytest.approx(1 / 5)
    assert m.recall_at == {"1": 0.0, "5": 1.0}
    assert m.precision_radius[:8] == [0.0] * 8 and m.precision_radius[8] == pytest.approx(1 / 5)
    assert m.recall_radius[7] == 0.0 and m.recall_radius[8] == 1.0


@pytest.mark.parametrize(("first_relevant", "p_at_1"), [(True, 1.0), (False, 0.0)])
def test_ties_broken_by_database_index(first_relevant: bool, p_at_1: float) -> None:
    db = np.array([[1], [1], [3]], dtype=np.uint8)  # items 0 and 1 tie at distance 1
    y = np.array([0, 1, 1]) if first_relevant else np.array([1, 0, 1])
    m = evaluate_retrieval(
        np.array([[0]], np.uint8),
        one_hot(np.array([0]), 2),
        db,
        one_hot(y, 2),
        8,
        map_ks=(None,),
        precision_ks=(1,),
    )
    assert m.precision_at["1"] == p_at_1
    assert m.map_at["all"] == pytest.approx(1.0 if first_relevant else 0.5)


def test_query_without_relevant_items() -> None:
    db = np.array([[0], [1], [3]], dtype=np.uint8)
    dbl = one_hot(np.array([0, 1, 0]), 3)
    q = np.array([[0], [0]], dtype=np.uint8)
    ql = one_hot(np.array([0, 2]), 3)  # class 2 has no database item
    m = evaluate_retrieval(q, ql, db, dbl, 8, map_ks=(None,), precision_ks=(1, 3))
    ap0 = (1 / 1 + 2 / 3) / 2
    assert m.map_at["all"] == pytest.approx(ap0 / 2)  # the second query scores 0 but still counts
    assert m.recall_at["3"] == 1.0  # ... and is excluded from recall
    assert m.recall_at["1"] == 0.5
    assert m.recall_radius[0] == 0.5 and m.recall_radius[1] == 0.5 and m.recall_radius[2] == 1.0
    assert m.precision_radius[0] == pytest.approx(0.5 * 1.0 + 0.5 * 0.0)
    assert m.per_class_ap == {0: (pytest.approx(ap0), 1), 2: (0.0, 1)}


def test_evaluate_rejects_wrong_bits() -> None:
    codes, labels = np.zeros((3, 2), np.uint8), one_hot(np.array([0, 1, 0]), 2)
    with pytest.raises(ValueError):
        evaluate_retrieval(codes, labels, codes, labels, 8)


# --------------------------------------------------------------------------------------------- diagnostics
def ref_pair_means(codes: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    b = np.unpackbits(codes, axis=1).astype(int)
    same, diff = [], []
    for i in range(len(b)):
        for j in range(i + 1, len(b)):
            d = int(np.abs(b[i] - b[j]).sum())
            (same if np.any(labels[i] & labels[j]) else diff).append(d)
    return float(np.mean(same)), float(np.mean(diff))


@pytest.mark.parametrize("multilabel", [False, True])
def test_bit_diagnostics_matches_references(multilabel: bool) -> None:
    rng = np.random.default_rng(11)
    bits_m = rng.integers(0, 2, size=(60, 16), dtype=np.uint8)
    bits_m[:, 3] = 1  # constant bit
    bits_m[:, 5] = bits_m[:, 4]  # perfectly correlated pair
    bits_m[:, 6] = (rng.random(60) < 0.1).astype(np.uint8)  # skewed bit
    codes = np.packbits(bits_m, axis=1)
    labels = make_labels(rng, 60, 3, multilabel)
    d = bit_diagnostics(codes, labels, 16)

    p = bits_m.mean(axis=0)
    np.testing.assert_allclose(d["ones_rate"], p)
    assert d["mean_ones_rate"] == pytest.approx(p.mean())
    assert (d["min_ones_rate"], d["max_ones_rate"]) == (pytest.approx(p.min()), 1.0)
    ent = [0.0 if x in (0.0, 1.0) else -(x * math.log2(x) + (1 - x) * math.log2(1 - x)) for x in p]
    np.testing.assert_allclose(d["entropy"], ent)
    assert d["entropy"][3] == 0.0
    assert d["mean_entropy"] == pytest.approx(np.mean(ent))

    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.nan_to_num(np.corrcoef(bits_m.T.astype(float)), nan=0.0)
    off = ~np.eye(16, dtype=bool)
    assert d["redundancy"] == pytest.approx(np.abs(corr[off]).mean())

    intra, inter = ref_pair_means(codes, labels)
    assert d["intra_class_hamming"] == pytest.approx(intra)
    assert d["inter_class_hamming"] == pytest.approx(inter)
    assert d["intra_class_hamming_frac"] == pytest.approx(intra / 16)
    assert d["inter_class_hamming_frac"] == pytest.approx(inter / 16)
    assert d["bytes_per_image"] == 2


def test_code_entropy_and_unique_codes() -> None:
    a, b, c = [0, 0], [255, 1], [7, 128]
    codes = np.array([a, a, a, a, b, b, c, c], dtype=np.uint8)
    d = bit_diagnostics(codes, one_hot(np.zeros(8, int), 1), 16)
    assert d["unique_codes"] == 3
    assert d["code_entropy"] == pytest.approx(1.5)  # p = (1/2, 1/4, 1/4)
    assert d["redundancy"] <= 1.0


def test_redundancy_extremes() -> None:
    rng = np.random.default_rng(3)
    col = rng.integers(0, 2, size=(100, 1), dtype=np.uint8)
    dup = bit_diagnostics(np.packbits(np.repeat(col, 8, axis=1), axis=1), one_hot(np.zeros(100, int), 1), 8)
    assert dup["redundancy"] == pytest.approx(1.0)
    const = bit_diagnostics(np.zeros((10, 1), np.uint8), one_hot(np.zeros(10, int), 1), 8)
    assert const["redundancy"] == 0.0 and const["mean_entropy"] == 0.0 and const["unique_codes"] == 1


def test_sampled_pairs_are_seeded_and_distinct() -> None:
    i, j = _pairs(500, seed=5, max_pairs=20_000)
    assert i.size == 20_000 and np.all(i != j) and j.max() == 499 and i.min() == 0
    i2, j2 = _pairs(500, seed=5, max_pairs=20_000)
    np.testing.assert_array_equal(i, i2)
    np.testing.assert_array_equal(j, j2)
    ie, je = _pairs(50, seed=0, max_pairs=1225)  # exactly n(n-1)/2: exact mode
    assert ie.size == 1225 and np.all(ie < je)


def test_sampled_class_hamming_close_to_exact() -> None:
    rng = np.random.default_rng(9)
    centers = rng.integers(0, 2, size=(4, 32), dtype=np.uint8)
    y = rng.integers(0, 4, size=400)
    noisy = centers[y] ^ (rng.random((400, 32)) < 0.1).astype(np.uint8)
    codes, labels = np.packbits(noisy, axis=1), one_hot(y, 4)
    exact = bit_diagnostics(codes, labels, 32)
    sampled = bit_diagnostics(codes, labels, 32, seed=1, max_pairs=40_000)
    assert exact["intra_class_hamming"] < 0.5 * exact["inter_class_hamming"]
    assert sampled["intra_class_hamming"] == pytest.approx(exact["intra_class_hamming"], rel=0.03)
    assert sampled["inter_class_hamming"] == pytest.approx(exact["inter_class_hamming"], rel=0.03)
    again = bit_diagnostics(codes, labels, 32, seed=1, max_pairs=40_000)
    assert again["intra_class_hamming"] == sampled["intra_class_hamming"]


# --------------------------------------------------------------------------------------------- stability
def test_code_stability() -> None:
    a = np.array([[0, 0], [1, 2], [255, 255], [9, 9]], dtype=np.uint8)
    b = a.copy()
    b[1, 0] ^= 0b11  # two flipped bits in one row
    b[3, 1] ^= 0b1000_0000  # one flipped bit in another
    s = code_stability(a, b, 16)
    assert s["exact_match_rate"] == 0.5
    assert s["bit_flip_rate"] == pytest.approx(3 / (4 * 16))
    assert s["stability"] == pytest.approx(1 - 3 / 64)
    same = code_stability(a, a, 16)
    assert same == {"exact_match_rate": 1.0, "bit_flip_rate": 0.0, "stability": 1.0}
    with pytest.raises(ValueError):
        code_stability(a, b[:3], 16)


@pytest.mark.parametrize("multilabel", [False, True])
def test_chance_precision_is_the_mean_share_of_relevant_database_rows(multilabel) -> None:
    from ml.metrics import chance_precision

    rng = np.random.default_rng(3)
    if multilabel:
        q, d = rng.random((40, 5)) < 0.3, rng.random((300, 5)) < 0.3
    else:
        q, d = np.eye(5, dtype=bool)[rng.integers(0, 5, 40)], np.eye(5, dtype=bool)[rng.integers(0, 5, 300)]
    brute = np.mean([np.mean([(qi & di).any() for di in d]) for qi in q])
    assert chance_precision(q, d) == pytest.approx(brute)
    # a long random ranking's P@1 averages to it
    p1 = [(q[i % 40] & d[rng.integers(0, 300)]).any() for i in range(40_000)]
    assert np.mean(p1) == pytest.approx(brute, abs=0.01)
