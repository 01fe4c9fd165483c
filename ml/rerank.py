"""Re-ranking of a Hamming shortlist: the Hamming top ``R = oversample x k`` re-scored, then cut to k. NumPy only.

Scorers (lower is better):

* ``none``: the Hamming distance itself (the shortlist cut to k: what search returns without re-ranking);
* ``asymmetric``: the query's real-valued output ``u`` (the pre-sign output whose sign is its code,
  ``ml.encode.encode_outputs``) against each candidate's binary code ``b`` in ±1: ``(sum|u| - u.b) / 2``, i.e.
  the sum of ``|u_i|`` over the bits where the candidate disagrees with the query's sign (a Hamming distance
  weighted by the query's confidence per bit). Needs nothing stored beyond the codes;
* ``stored``: cosine distance ``1 - cos(u_q, e)`` between ``u`` and the candidate's stored compact embedding
  ``e`` (int8 with a per-row scale, or fp16, of its own ``u``; :func:`quantise`).

Ties are broken deterministically: by score, then Hamming distance, then row_id. Scores are float64 sums
over the bit axis, so equal candidates (same code or embedding) score exactly equal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "EMBEDDING_DTYPES",
    "SCORERS",
    "CandidateTable",
    "asymmetric_scores",
    "asymmetric_tables",
    "dequantise",
    "order_candidates",
    "quantise",
    "rerank",
    "rerank_search",
    "stored_scores",
    "unpack_signs",
]

SCORERS = ("none", "asymmetric", "stored")
EMBEDDING_DTYPES = ("int8", "fp16")
CHUNK = 64  # queries scored at a time (bounds the (chunk, R, bits) temporaries)


def unpack_signs(codes: np.ndarray, bits: int) -> np.ndarray:
    """Packed codes (..., bits/8) -> ±1 int8 (..., bits) (bit 1 -> +1)."""
    return (np.unpackbits(codes, axis=-1, count=bits).astype(np.int8) * 2 - 1).astype(np.int8)


def quantise(u: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Real-valued outputs (n, bits) -> (bytes (n, width) uint8, per-row float32 scale for int8 else None)."""
    u = np.asarray(u, dtype=np.float32)
    if dtype == "fp16":
        return np.ascontiguousarray(u.astype("<f2")).view(np.uint8).reshape(len(u), -1), None
    if dtype == "int8":
        scale = (np.abs(u).max(axis=1) / 127.0).astype(np.float32)
        q = np.round(u / np.where(scale > 0, scale, 1.0)[:, None]).clip(-127, 127).astype(np.int8)
        return q.view(np.uint8), scale
    raise ValueError(f"embedding dtype {dtype!r}: expected one of {', '.join(EMBEDDING_DTYPES)}")


def dequantise(data: np.ndarray, scale: np.ndarray | None, dtype: str) -> np.ndarray:
    """Inverse of :func:`quantise`: float32 (n, bits)."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if dtype == "fp16":
        return data.view("<f2").astype(np.float32)
    if dtype == "int8":
        if scale is None:
            raise ValueError("int8 embeddings need their per-row scale")
        return data.view(np.int8).astype(np.float32) * np.asarray(scale, np.float32)[:, None]
    raise ValueError(f"embedding dtype {dtype!r}: expected one of {', '.join(EMBEDDING_DTYPES)}")


_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float64)  # (256, 8)


def asymmetric_tables(u: np.ndarray) -> np.ndarray:
    """Per query, per code byte, per byte value: the sum of ``|u_i|`` over that byte's bits where the value
    disagrees with ``sign(u)``; (nq, bits/8, 256) float64."""
    u = np.asarray(u, dtype=np.float64).reshape(len(u), -1, 8)
    pos = (u >= 0).astype(np.float64)  # bit 1 where u >= 0 (ml.encode.pack_outputs)
    a = np.abs(u)
    # disagree(v, t) = v_t XOR pos_t = v_t (1 - pos_t) + (1 - v_t) pos_t
    return (a * (1 - pos)) @ _BYTE_BITS.T + (a * pos) @ (1 - _BYTE_BITS).T


def asymmetric_scores(u: np.ndarray, cand_codes: np.ndarray, bits: int) -> np.ndarray:
    """(nq, R) sums of ``|u_i|`` over the bits where each candidate's code (nq, R, bits/8) disagrees with
    the sign of ``u`` (nq, bits): a lookup table per query and code byte (``asymmetric_tables``), summed over
    the bytes in order, so equal codes score exactly equal."""
    nbytes = bits // 8
    out = np.empty(cand_codes.shape[:2], np.float64)
    offsets = (np.arange(nbytes) * 256)[None, None, :]
    for lo in range(0, len(u), CHUNK):
        tables = asymmetric_tables(u[lo : lo + CHUNK]).reshape(-1, 1, nbytes * 256)  # (c, 1, nbytes*256)
        idx = cand_codes[lo : lo + CHUNK].astype(np.intp) + offsets  # (c, R, nbytes)
        flat = np.take_along_axis(tables[:, 0, :], idx.reshape(len(idx), -1), axis=1)
        out[lo : lo + CHUNK] = flat.reshape(idx.shape).sum(-1)
    return out


def stored_scores(u: np.ndarray, cand_emb: np.ndarray) -> np.ndarray:
    """(nq, R) cosine distances ``1 - cos`` between ``u`` (nq, bits) and candidate embeddings (nq, R, bits)."""
    u = np.asarray(u, dtype=np.float64)
    out = np.empty(cand_emb.shape[:2], np.float64)
    for lo in range(0, len(u), CHUNK):
        q = u[lo : lo + CHUNK]
        e = np.asarray(cand_emb[lo : lo + CHUNK], np.float64)
        qn = np.sqrt((q * q).sum(-1))[:, None]
        en = np.sqrt((e * e).sum(-1))
        dot = (q[:, None, :] * e).sum(-1)
        out[lo : lo + CHUNK] = 1.0 - dot / np.maximum(qn * en, 1e-12)
    return out


def order_candidates(scores: np.ndarray, hamming: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per query, the order of candidates by (score, Hamming, row_id); missing ones (id < 0) last."""
    missing = ids < 0
    key_s = np.where(missing, np.inf, scores)
    key_h = np.where(missing, np.iinfo(np.int64).max, hamming.astype(np.int64))
    key_i = np.where(missing, np.iinfo(np.int64).max, ids)
    return np.lexsort((key_i, key_h, key_s), axis=-1)


@dataclass
class CandidateTable:
    """Database rows sorted by row_id with their codes and, optionally, their stored embeddings (float32)."""

    row_ids: np.ndarray
    codes: np.ndarray
    bits: int
    embeddings: np.ndarray | None = None

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ``ids`` (any shape; -1 = missing, mapped to 0 and masked by the caller)."""
        pos = np.searchsorted(self.row_ids, np.maximum(ids, 0))
        pos = np.minimum(pos, len(self.row_ids) - 1)
        bad = (ids >= 0) & (self.row_ids[pos] != ids)
        if bad.any():
            raise KeyError(f"row {int(ids[bad].flat[0])} is not among the stored codes")
        return pos


def rerank(
    scorer: str,
    u: np.ndarray | None,
    cand_ids: np.ndarray,
    cand_hamming: np.ndarray,
    table: CandidateTable,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-score candidates (nq, R) with ``scorer`` and keep the k best: (row_ids, scores, Hamming), each (nq, k)."""
    if scorer not in SCORERS:
        raise ValueError(f"re-ranking {scorer!r}: expected one of {', '.join(SCORERS)}")
    cand_ids = np.asarray(cand_ids, np.int64)
    cand_hamming = np.asarray(cand_hamming)
    if scorer == "none":
        scores = cand_hamming.astype(np.float64)
    else:
        if u is None:
            raise ValueError(f"re-ranking {scorer!r} needs the queries' real-valued outputs")
        pos = table.positions(cand_ids)
        if scorer == "asymmetric":
            scores = asymmetric_scores(u, table.codes[pos], table.bits)
        else:
            if table.embeddings is None:
                raise ValueError("re-ranking 'stored' needs stored embeddings (encode with embeddings on)")
            scores = stored_scores(u, table.embeddings[pos])
    order = order_candidates(scores, cand_hamming, cand_ids)[:, :k]
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    ids = take(cand_ids)
    return ids, np.where(ids < 0, np.inf, take(scores)), take(cand_hamming)


def rerank_search(
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    codes: np.ndarray,
    u: np.ndarray | None,
    k: int,
    oversample: int,
    scorer: str,
    table: CandidateTable,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``search(codes, R)`` -> (Hamming, row_ids) shortlist of ``R = oversample x k``, re-ranked to k."""
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    dist, ids = search(codes, k * oversample)
    return rerank(scorer, u, ids, dist, table, k)
