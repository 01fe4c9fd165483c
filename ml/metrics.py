"""Retrieval metrics and code diagnostics for packed binary hash codes (NumPy only).

Codes are ``np.packbits`` output (big-endian bits), uint8, shape (n, bits // 8). Labels are multi-hot bool
(n, C); an item is relevant to a query when they share at least one label. Ranking is by Hamming distance
with ties broken by database index ascending (stable sort), and ``k = None`` ("all") means all N database
items (see docs/ARCHITECTURE.md, "Evaluation protocol and metric definitions"; the DeepHash-pytorch ``[0:-1]`` slice is not copied).

Speed: distances are computed per query chunk on uint64 words with ``np.bitwise_count``; ranking is a stable
argsort of uint8 distances (a radix sort); relevance is a float32 matmul of the label matrices; the
precision/recall by Hamming radius comes from per-query distance histograms (no sorting).
Speed on the full Fashion-MNIST protocol: docs/BENCHMARKS.md, "Metrics".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ml.bits import check_bits

__all__ = [
    "RetrievalMetrics",
    "bit_diagnostics",
    "code_stability",
    "evaluate_retrieval",
    "hamming_distance_matrix",
    "map_from_ranking",
]


# --------------------------------------------------------------------------------------------- helpers
def _check_codes(codes: np.ndarray, bits: int | None = None, name: str = "codes") -> np.ndarray:
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2:
        raise ValueError(f"{name} must be a 2-D uint8 packbits array, got {codes.dtype} {codes.shape}")
    if bits is not None:
        check_bits(bits)
        if codes.shape[1] * 8 != bits:
            raise ValueError(f"{name} has {codes.shape[1]} bytes per row; {bits} bits need {bits // 8}")
    return codes


def _check_labels(labels: np.ndarray, n: int, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] != n:
        raise ValueError(f"{name} must be a multi-hot (n={n}, C) matrix, got shape {labels.shape}")
    return labels.astype(bool, copy=False)


def _as_words(codes: np.ndarray) -> np.ndarray:
    """Zero-pad rows to a multiple of 8 bytes and view them as uint64 words, shape (n, ceil(bytes / 8))."""
    n, nbytes = codes.shape
    width = -(-nbytes // 8) * 8
    padded = np.zeros((n, width), dtype=np.uint8)
    padded[:, :nbytes] = codes
    return padded.view(np.uint64)


def _dist_dtype(bits: int) -> type[np.unsignedinteger]:
    return np.uint8 if bits <= np.iinfo(np.uint8).max else np.uint16


def _hamming_words(q_words: np.ndarray, db_words: np.ndarray, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """(nq, n) Hamming distances between uint64 word arrays, accumulated word by word."""
    out = np.bitwise_count(q_words[:, None, 0] ^ db_words[None, :, 0]).astype(dtype, copy=False)
    for w in range(1, q_words.shape[1]):
        out += np.bitwise_count(q_words[:, None, w] ^ db_words[None, :, w])
    return out


def _k_key(k: int | None) -> str:
    return "all" if k is None else str(int(k))


def _clamp_k(k: int | None, n: int) -> int:
    if k is None:
        return n
    if int(k) < 1:
        raise ValueError(f"k must be >= 1 or None, got {k}")
    return min(int(k), n)


# --------------------------------------------------------------------------------------------- distances
def hamming_distance_matrix(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """All-pairs Hamming distances, shape (nq, n); uint8 for codes up to 255 bits, else uint16."""
    query_codes = _check_codes(query_codes, name="query_codes")
    db_codes = _check_codes(db_codes, name="db_codes")
    if query_codes.shape[1] != db_codes.shape[1]:
        raise ValueError(f"code widths differ: {query_codes.shape[1]} vs {db_codes.shape[1]} bytes")
    dtype = _dist_dtype(query_codes.shape[1] * 8)
    if query_codes.shape[1] == 0:
        return np.zeros((query_codes.shape[0], db_codes.shape[0]), dtype=dtype)
    return _hamming_words(_as_words(query_codes), _as_words(db_codes), dtype)


# --------------------------------------------------------------------------------------------- retrieval
@dataclass
class RetrievalMetrics:
    """Hamming-ranking retrieval quality; keys of the dicts are ``str(k)`` or ``"all"``."""

    map_at: dict[str, float]
    precision_at: dict[str, float]
    recall_at: dict[str, float]
    precision_radius: list[float]
    recall_radius: list[float]
    per_class_ap: dict[int, tuple[float, int]]
    n_queries: int
    n_database: int

    @property
    def precision_within_radius2(self) -> float:
        return self.precision_radius[2]


@dataclass
class _Sums:
    """Running per-chunk accumulators for evaluate_retrieval."""

    ap_sum: np.ndarray  # (len(map_ks),)
    p_sum: np.ndarray  # (len(precision_ks),)
    r_sum: np.ndarray  # (len(precision_ks),)
    n_with_rel: int
    prec_rad_sum: np.ndarray  # (bits + 1,)
    rec_rad_sum: np.ndarray  # (bits + 1,)
    first_ap: list[np.ndarray]  # per-query AP at map_ks[0], one array per chunk


def _radius_counts(dist: np.ndarray, rel: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (items, relevant items) with distance <= r, each (nq, bits + 1).

    One bincount per block of rows over the key ``row * 2(bits+1) + 2 * dist + rel``; blocks are sized so
    the key fits uint16 where possible (much cheaper to build than an intp key).
    """
    nq = dist.shape[0]
    width = 2 * (bits + 1)
    key_dtype = np.uint16 if width <= 1 << 15 else np.uint32
    block = max(1, (int(np.iinfo(key_dtype).max) + 1) // width)
    hist = np.empty((nq, width), dtype=np.int64)
    for s in range(0, nq, block):
        d, r = dist[s : s + block], rel[s : s + block]
        offsets = (np.arange(d.shape[0], dtype=key_dtype) * key_dtype(width))[:, None]
        key = d.astype(key_dtype) * key_dtype(2)
        key += r
        key += offsets
        hist[s : s + block] = np.bincount(key.ravel(), minlength=d.shape[0] * width).reshape(-1, width)
    hist = hist.reshape(nq, bits + 1, 2)
    relevant = hist[:, :, 1]
    return np.cumsum(hist[:, :, 0] + relevant, axis=1), np.cumsum(relevant, axis=1)


def _ranked_stats(
    sorted_rel: np.ndarray, n_rel: np.ndarray, map_k: list[int], prec_k: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query AP at each map_k and P, R at each prec_k from relevance in rank order (nq, kmax)."""
    cum = np.cumsum(sorted_rel, axis=1, dtype=np.int32)
    inv_rank = 1.0 / np.arange(1, sorted_rel.shape[1] + 1, dtype=np.float64)
    contrib = cum * inv_rank  # precision@i; kept only where rank i holds a relevant item
    contrib *= sorted_rel
    aps = np.empty((sorted_rel.shape[0], len(map_k)))
    for j, k in enumerate(map_k):
        hits = cum[:, k - 1]
        aps[:, j] = np.where(hits > 0, contrib[:, :k].sum(axis=1) / np.maximum(hits, 1), 0.0)
    hits_p = np.stack([cum[:, k - 1] for k in prec_k], axis=1).astype(np.float64)
    precision = hits_p / np.asarray(prec_k, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = hits_p / n_rel[:, None]
    return aps, precision, recall


def _eval_chunk(
    q_words: np.ndarray,
    q_lab: np.ndarray,
    db_words: np.ndarray,
    db_lab_t: np.ndarray,
    bits: int,
    map_k: list[int],
    prec_k: list[int],
    sums: _Sums,
) -> None:
    dist = _hamming_words(q_words, db_words, _dist_dtype(bits))
    rel = (q_lab @ db_lab_t) > 0
    n_rel = rel.sum(axis=1)
    has_rel = n_rel > 0

    cum_all, cum_rel = _radius_counts(dist, rel, bits)
    with np.errstate(divide="ignore", invalid="ignore"):
        sums.prec_rad_sum += np.where(cum_all > 0, cum_rel / np.maximum(cum_all, 1), 0.0).sum(axis=0)
        sums.rec_rad_sum += (cum_rel[has_rel] / n_rel[has_rel, None]).sum(axis=0)

    kmax = max(map_k + prec_k)
    order = np.argsort(dist, axis=1, kind="stable")[:, :kmax]
    sorted_rel = np.take_along_axis(rel, order, axis=1)
    del dist, order
    aps, precision, recall = _ranked_stats(sorted_rel, n_rel, map_k, prec_k)
    sums.ap_sum += aps.sum(axis=0)
    sums.first_ap.append(aps[:, 0])
    sums.p_sum += precision.sum(axis=0)
    sums.r_sum += recall[has_rel].sum(axis=0)
    sums.n_with_rel += int(has_rel.sum())


def _per_class_ap(query_labels: np.ndarray, ap: np.ndarray) -> dict[int, tuple[float, int]]:
    counts = query_labels.sum(axis=0)
    totals = query_labels.T.astype(np.float64) @ ap
    return {int(c): (float(totals[c] / counts[c]), int(counts[c])) for c in np.flatnonzero(counts)}


def evaluate_retrieval(
    query_codes: np.ndarray,
    query_labels: np.ndarray,
    db_codes: np.ndarray,
    db_labels: np.ndarray,
    bits: int,
    map_ks: Sequence[int | None] = (100, 1000, None),
    precision_ks: Sequence[int] = (1, 5, 10, 100),
    chunk: int = 256,
) -> RetrievalMetrics:
    """mAP@k, P@k, R@k, PR by Hamming radius and per-class AP for a query set against a database.

    The database must be in row_id order (ties are broken by database index). k larger than N is clamped to
    N (also for P@k, whose denominator is then N). Means that exclude queries with no relevant item (R@k,
    recall by radius) are NaN when every query has none. per_class_ap uses ``map_ks[0]``.
    """
    query_codes = _check_codes(query_codes, bits, "query_codes")
    db_codes = _check_codes(db_codes, bits, "db_codes")
    nq, n = query_codes.shape[0], db_codes.shape[0]
    if nq == 0 or n == 0:
        raise ValueError(f"need at least one query and one database item, got {nq} and {n}")
    if not map_ks or not precision_ks:
        raise ValueError("map_ks and precision_ks must be non-empty")
    q_lab = _check_labels(query_labels, nq, "query_labels")
    db_lab = _check_labels(db_labels, n, "db_labels")
    if q_lab.shape[1] != db_lab.shape[1]:
        raise ValueError(f"label widths differ: {q_lab.shape[1]} vs {db_lab.shape[1]}")

    map_k = [_clamp_k(k, n) for k in map_ks]
    prec_k = [_clamp_k(k, n) for k in precision_ks]
    q_words, db_words = _as_words(query_codes), _as_words(db_codes)
    q_lab_f = q_lab.astype(np.float32)
    db_lab_t = np.ascontiguousarray(db_lab.T, dtype=np.float32)
    sums = _Sums(
        np.zeros(len(map_k)),
        np.zeros(len(prec_k)),
        np.zeros(len(prec_k)),
        0,
        np.zeros(bits + 1),
        np.zeros(bits + 1),
        [],
    )
    for start in range(0, nq, max(1, int(chunk))):
        sl = slice(start, start + max(1, int(chunk)))
        _eval_chunk(q_words[sl], q_lab_f[sl], db_words, db_lab_t, bits, map_k, prec_k, sums)

    n_rel_q = sums.n_with_rel
    recall_den = n_rel_q if n_rel_q else float("nan")
    return RetrievalMetrics(
        map_at={_k_key(k): float(s / nq) for k, s in zip(map_ks, sums.ap_sum, strict=True)},
        precision_at={_k_key(k): float(s / nq) for k, s in zip(precision_ks, sums.p_sum, strict=True)},
        recall_at={_k_key(k): float(s / recall_den) for k, s in zip(precision_ks, sums.r_sum, strict=True)},
        precision_radius=[float(v) for v in sums.prec_rad_sum / nq],
        recall_radius=[float(v) for v in sums.rec_rad_sum / recall_den],
        per_class_ap=_per_class_ap(q_lab, np.concatenate(sums.first_ap)),
        n_queries=nq,
        n_database=n,
    )


# --------------------------------------------------------------------------------------------- diagnostics
def chance_precision(query_labels: np.ndarray, db_labels: np.ndarray) -> float:
    """Precision of a random ranking (the chance level of P@k; a random ranking's mAP@k, which averages the
    precision at each hit, lies somewhat above it): the mean share of the database sharing a label with a query. Multi-hot labels are grouped by distinct label set, so the cost
    grows with the number of label sets, not with queries x database."""
    q = _check_labels(np.asarray(query_labels), len(query_labels), "query_labels")
    d = _check_labels(np.asarray(db_labels), len(db_labels), "db_labels")
    if len(q) == 0 or len(d) == 0:
        return 0.0
    sets, counts = np.unique(d.astype(bool), axis=0, return_counts=True)
    relevant = (q.astype(np.int64) @ sets.T.astype(np.int64) > 0) @ counts
    return float(np.mean(relevant / len(d)))


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    out = np.zeros_like(p)
    inner = (p > 0) & (p < 1)
    q = p[inner]
    out[inner] = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
    return out


def _redundancy(bit_matrix: np.ndarray) -> float:
    """Mean |Pearson r| over off-diagonal bit pairs; a constant bit has correlation 0 with every bit."""
    n, nbits = bit_matrix.shape
    if nbits < 2:
        return 0.0
    x = bit_matrix.astype(np.float64)
    x -= x.mean(axis=0)
    std = np.sqrt((x * x).mean(axis=0))
    z = np.divide(x, std, out=np.zeros_like(x), where=std > 0)
    corr = np.abs(z.T @ z / n)
    np.fill_diagonal(corr, 0.0)
    return float(np.clip(corr, 0.0, 1.0).sum() / (nbits * (nbits - 1)))


def _pairs(n: int, seed: int, max_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """All i < j pairs when they fit in max_pairs, else a seeded uniform sample of ordered pairs i != j."""
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        return i, j
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=max_pairs)
    j = rng.integers(0, n - 1, size=max_pairs)
    j += j >= i
    return i, j


def _class_hamming(codes: np.ndarray, labels: np.ndarray, seed: int, max_pairs: int) -> tuple[float, float]:
    """Mean Hamming distance over same-label and different-label pairs (NaN when there are none)."""
    i, j = _pairs(codes.shape[0], seed, max_pairs)
    words = _as_words(codes)
    sums, counts = np.zeros(2), np.zeros(2, dtype=np.int64)
    step = 1 << 17
    for s in range(0, i.size, step):
        a, b = i[s : s + step], j[s : s + step]
        dist = np.bitwise_count(words[a] ^ words[b]).sum(axis=1, dtype=np.int64)
        same = (labels[a] & labels[b]).any(axis=1)
        sums += (dist[same].sum(), dist[~same].sum())
        counts += (same.sum(), (~same).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return float(means[0]), float(means[1])


def _code_entropy(codes: np.ndarray) -> tuple[int, float]:
    """(number of distinct codes, empirical entropy in bits of the code distribution)."""
    rows = np.ascontiguousarray(codes).view(np.dtype((np.void, codes.shape[1]))).ravel()
    _, counts = np.unique(rows, return_counts=True)
    p = counts / counts.sum()
    return int(counts.size), float(-(p * np.log2(p)).sum())


def bit_diagnostics(
    codes: np.ndarray, labels: np.ndarray, bits: int, seed: int = 0, max_pairs: int = 1_000_000
) -> dict[str, float | list[float]]:
    """Per-bit balance and entropy, redundancy, intra/inter-class Hamming distance and code entropy.

    Definitions: docs/ARCHITECTURE.md, "Evaluation protocol and metric definitions". Bit k is the k-th column of
    ``np.unpackbits``. Class distances are exact over all pairs when n(n-1)/2 <= max_pairs, else over a
    seeded sample of max_pairs pairs; same-label means sharing at least one label.
    """
    codes = _check_codes(codes, bits)
    n = codes.shape[0]
    if n == 0:
        raise ValueError("bit_diagnostics needs at least one code")
    labels = _check_labels(labels, n)
    bit_matrix = np.unpackbits(codes, axis=1)
    ones = bit_matrix.mean(axis=0, dtype=np.float64)
    entropy = _binary_entropy(ones)
    intra, inter = _class_hamming(codes, labels, seed, max_pairs)
    unique, code_ent = _code_entropy(codes)
    return {
        "ones_rate": [float(v) for v in ones],
        "mean_ones_rate": float(ones.mean()),
        "min_ones_rate": float(ones.min()),
        "max_ones_rate": float(ones.max()),
        "entropy": [float(v) for v in entropy],
        "mean_entropy": float(entropy.mean()),
        "redundancy": _redundancy(bit_matrix),
        "intra_class_hamming": intra,
        "inter_class_hamming": inter,
        "intra_class_hamming_frac": intra / bits,
        "inter_class_hamming_frac": inter / bits,
        "unique_codes": unique,
        "code_entropy": code_ent,
        "bytes_per_image": bits / 8,
    }


def code_stability(codes_a: np.ndarray, codes_b: np.ndarray, bits: int) -> dict[str, float]:
    """Row-wise agreement of two encodings of the same images (e.g. clean vs lightly augmented)."""
    codes_a = _check_codes(codes_a, bits, "codes_a")
    codes_b = _check_codes(codes_b, bits, "codes_b")
    if codes_a.shape != codes_b.shape or codes_a.shape[0] == 0:
        raise ValueError(f"need equal, non-empty shapes, got {codes_a.shape} and {codes_b.shape}")
    flips = np.bitwise_count(codes_a ^ codes_b).sum(axis=1, dtype=np.int64)
    flip_rate = float(flips.mean() / bits)
    return {
        "exact_match_rate": float((flips == 0).mean()),
        "bit_flip_rate": flip_rate,
        "stability": 1.0 - flip_rate,
    }


def map_from_ranking(sorted_rel: np.ndarray) -> float:
    """mAP@k of rankings given as relevance in rank order (nq, k) — e.g. an index's top-k results —
    with the AP@k definition above (normalised by relevant items retrieved; none retrieved -> 0)."""
    sorted_rel = np.asarray(sorted_rel, dtype=bool)
    k = sorted_rel.shape[1]
    aps, _, _ = _ranked_stats(sorted_rel, sorted_rel.sum(axis=1), [k], [k])
    return float(aps[:, 0].mean()) if len(aps) else 0.0
