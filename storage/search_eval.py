"""Search evaluation shared by the ``retrieval_diagnostics`` asset and ``vitrieve bench search``: the exact
top-k by a plain NumPy scan, recall@k of an approximate top-k against it, and per-query latency / QPS of a
search function. Pure NumPy and timing; no Dagster, no index."""

from __future__ import annotations

import time

import numpy as np


def exact_topk_numpy(
    row_ids: np.ndarray, codes: np.ndarray, queries: np.ndarray, k: int, block: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Plain NumPy exact top-k: XOR + popcount (``np.bitwise_count``) + ``argpartition`` on a
    (distance, position) key; ``row_ids`` sorted ascending so ties come out by row_id."""
    n = len(row_ids)
    k = min(k, n)
    db = np.ascontiguousarray(codes).view(np.uint64) if codes.shape[1] % 8 == 0 else None
    if db is None:
        pad = np.zeros((n, -(-codes.shape[1] // 8) * 8), np.uint8)
        pad[:, : codes.shape[1]] = codes
        db = pad.view(np.uint64)
        qpad = np.zeros((len(queries), pad.shape[1]), np.uint8)
        qpad[:, : codes.shape[1]] = queries
        queries = qpad
    qw = np.ascontiguousarray(queries).view(np.uint64)
    span = min(n, 1 << 20)  # database slice scanned at a time (bounded memory at 10M codes)
    block = block or max(1, min(64, (1 << 22) // max(span, 1)))
    out_d = np.empty((len(queries), k), np.int32)
    out_i = np.empty((len(queries), k), np.int64)
    for lo in range(0, len(queries), block):
        q = qw[lo : lo + block]
        best = []
        for s0 in range(0, n, span):
            part_db = db[s0 : s0 + span]
            dist = np.zeros((len(q), len(part_db)), np.int64)
            for w in range(db.shape[1]):
                dist += np.bitwise_count(q[:, None, w] ^ part_db[None, :, w])
            key = (dist << 40) | np.arange(s0, s0 + len(part_db), dtype=np.int64)
            kk = min(k, key.shape[1])
            part = np.argpartition(key, kk - 1, axis=1)[:, :kk] if kk < key.shape[1] else None
            best.append(key if part is None else np.take_along_axis(key, part, 1))
        cand = np.concatenate(best, axis=1)
        top = np.sort(cand, axis=1)[:, :k] if cand.shape[1] > k else np.sort(cand, axis=1)
        out_d[lo : lo + len(q)] = top >> 40
        out_i[lo : lo + len(q)] = row_ids[top & ((1 << 40) - 1)]
    return out_d, out_i


def recall_at_k(
    exact_d: np.ndarray, exact_i: np.ndarray, got_d: np.ndarray, got_i: np.ndarray
) -> tuple[float, float]:
    """(tie-aware recall, id recall) of an approximate top-k against the exact one (both (nq, k))."""
    nq, k = exact_i.shape
    if nq == 0 or k == 0:
        return 1.0, 1.0
    valid = got_i >= 0
    top = int(max(exact_d.max(), got_d[valid].max() if valid.any() else 0)) + 1
    q = np.repeat(np.arange(nq), k).reshape(nq, k)
    ce = np.bincount((q * top + exact_d).ravel(), minlength=nq * top)
    ca = np.bincount((q[valid] * top + got_d[valid]).ravel(), minlength=nq * top)
    tie = float(np.minimum(ce, ca).sum()) / (nq * k)
    if max(int(exact_i.max()), int(got_i.max())) < (1 << 40):
        ke = (q.astype(np.int64) << 40) | exact_i
        ka = (q[valid].astype(np.int64) << 40) | got_i[valid]
        ids = float(np.isin(ka, ke).sum()) / (nq * k)
    else:
        ids = float(
            np.mean([len(np.intersect1d(exact_i[j], got_i[j][got_i[j] >= 0])) / k for j in range(nq)])
        )
    return tie, ids


def time_batches(search, queries: np.ndarray, k: int, batch: int) -> dict:
    """p50/p99 per-query latency (ms) and QPS when searching ``batch`` queries per call."""
    per_query, start = [], time.perf_counter()
    for lo in range(0, len(queries), batch):
        t = time.perf_counter()
        search(queries[lo : lo + batch], k)
        per_query.append((time.perf_counter() - t) * 1000 / len(queries[lo : lo + batch]))
    total = time.perf_counter() - start
    return {
        "batch": batch,
        "p50_ms": float(np.percentile(per_query, 50)),
        "p99_ms": float(np.percentile(per_query, 99)),
        "qps": len(queries) / total,
        "n_queries": len(queries),
    }
