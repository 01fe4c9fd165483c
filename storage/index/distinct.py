"""Search over distinct codes: trained codes repeat heavily, so kinds that index each distinct code once
(``flat-dedup``, ``hnsw``) search a query batch's distinct codes and expand each found code into its rows."""

from __future__ import annotations

import copy

import numpy as np

from storage.index.threads import run_chunked, search_threads


def code_words(codes: np.ndarray) -> np.ndarray:
    """Codes as big-endian uint64 words (n, ceil(nbytes/8)); word order = byte order = lexicographic order."""
    n, nbytes = codes.shape
    w = -(-nbytes // 8)
    if nbytes == 8 * w:
        return np.ascontiguousarray(codes).view(">u8")
    padded = np.zeros((n, 8 * w), np.uint8)
    padded[:, :nbytes] = codes
    return padded.view(">u8")


def order_by_code(row_ids: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Permutation sorting rows by (code, row_id)."""
    words = code_words(codes)
    if len(row_ids) < 2:
        return np.arange(len(row_ids))
    if bool(np.all(row_ids[1:] >= row_ids[:-1])):
        if words.shape[1] == 1:
            return np.argsort(words[:, 0], kind="stable")
        return np.lexsort(tuple(words[:, j] for j in range(words.shape[1] - 1, -1, -1)))
    return np.lexsort((row_ids, *(words[:, j] for j in range(words.shape[1] - 1, -1, -1))))


class DistinctRows:
    """Rows grouped by distinct code: ``rows`` sorted by (code, row_id), ``offsets`` (U+1) delimiting each
    distinct code's rows, ``counts``. Expands a search over distinct codes into ranked rows."""

    rows: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray
    n_unique: int

    def _set_rows(self, rows: np.ndarray, offsets: np.ndarray) -> None:
        self.rows, self.offsets = rows, offsets
        self.counts = np.diff(offsets)
        self.n_unique = len(offsets) - 1
        n = len(rows)
        self._raw_keys = n == 0 or (int(rows.min()) >= 0 and int(rows.max()) < (1 << 34))
        if not self._raw_keys:  # rank keys for exotic row_ids
            ranks = np.empty(n, np.int64)
            ranks[np.argsort(rows, kind="stable")] = np.arange(n)
            self._rank, self._by_rank = ranks, np.sort(rows)

    def _distinct_search(self, uq: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _restricted_rows(self, allow: np.ndarray | None, exclude: np.ndarray | None, params):
        """A view keeping only the rows in ``allow`` (None = all) and not in ``exclude``: each distinct code's
        rows are filtered, and ``params`` gets a selector over the distinct codes that keep a row."""
        from storage.index.base import id_set_selector

        keep = np.ones(len(self.rows), bool) if allow is None else np.isin(self.rows, allow)
        if exclude is not None and len(exclude):
            keep &= ~np.isin(self.rows, exclude)
        counts = (
            np.add.reduceat(keep.astype(np.int64), self.offsets[:-1])
            if self.n_unique
            else np.zeros(0, np.int64)
        )
        view = copy.copy(self)
        view._set_rows(np.asarray(self.rows)[keep], np.concatenate(([0], np.cumsum(counts))).astype(np.int64))
        live = np.flatnonzero(counts > 0).astype(np.int64)
        sel, view._keep_alive = id_set_selector(live)  # positions of the distinct codes
        params.sel = sel
        view.search_params = params
        return view

    def _distinct_range(self, uq: np.ndarray, radius: int):
        return None

    def _search_batch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each distinct query code is searched once; identical queries share the result."""
        if len(queries) == 1:
            return run_chunked(self._search_unique, queries, k, 1, 1)
        words = code_words(queries)
        if words.shape[1] == 1:
            _, first, inv = np.unique(words[:, 0], return_index=True, return_inverse=True)
        else:
            _, first, inv = np.unique(queries, axis=0, return_index=True, return_inverse=True)
        dist, rows = run_chunked(
            self._search_unique,
            np.ascontiguousarray(queries[first]),
            k,
            self.threads or search_threads(),
            self.query_batch,
        )
        inv = inv.ravel()
        return dist[inv], rows[inv]

    def _search_unique(self, uq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        nq, n_u = len(uq), self.n_unique
        kk = min(n_u, k)
        dist, lab = self._distinct_search(uq, kk)  # top-kk distinct codes per query
        valid = lab >= 0
        cnt = np.where(valid, self.counts[np.maximum(lab, 0)], 0)
        cum = np.cumsum(cnt, axis=1)
        reach = cum >= k
        full = reach.any(axis=1)
        pos = np.where(full, np.argmax(reach, axis=1), kk - 1)
        big = np.iinfo(np.int32).max
        r = np.where(full, dist[np.arange(nq), pos], np.where(valid, dist, -1).max(axis=1, initial=-1))
        r = r.astype(np.int64)
        # distinct codes tied at the k-th distance may reach past the kk returned: complete them by range
        # search (exact kinds); approximate kinds keep what they returned
        complete = (~full | (dist[:, -1] > r)) if kk < n_u else np.ones(nq, bool)
        sel = valid & (dist <= r[:, None]) & complete[:, None]  # noqa: SIM300
        sq, sj = np.nonzero(sel)
        s_u, s_d = lab[sq, sj], dist[sq, sj].astype(np.int64)
        if not complete.all():
            inc = np.flatnonzero(~complete)
            found = self._distinct_range(uq[inc], int(r[inc].max()) + 1)
            if found is None:  # no range search: keep the returned codes
                sel = valid & (dist <= r[:, None])  # noqa: SIM300
                sq, sj = np.nonzero(sel)
                s_u, s_d = lab[sq, sj], dist[sq, sj].astype(np.int64)
            else:
                lims, rd, ri = found
                qq = np.repeat(inc, np.diff(lims).astype(np.int64))
                keep = rd <= r[qq]
                sq = np.concatenate((sq, qq[keep]))
                s_u = np.concatenate((s_u, ri[keep]))
                s_d = np.concatenate((s_d, rd[keep].astype(np.int64)))
                o = np.argsort(sq, kind="stable")
                sq, s_u, s_d = sq[o], s_u[o], s_d[o]
        s_cnt = self.counts[s_u]
        below = s_d < r[sq]
        rows_below = np.bincount(sq, weights=np.where(below, s_cnt, 0), minlength=nq).astype(np.int64)
        need = np.maximum(k - rows_below, 0)  # rows still needed from the codes at distance r
        take = np.where(below, s_cnt, np.minimum(s_cnt, need[sq]))
        total = int(take.sum())
        q_exp = np.repeat(sq, take)  # grouped by query
        seg_start = np.cumsum(take) - take
        pos_exp = np.arange(total, dtype=np.int64) - np.repeat(seg_start - self.offsets[s_u], take)
        rkey = self.rows[pos_exp] if self._raw_keys else self._rank[pos_exp]
        key = (np.repeat(s_d, take) << 34) | rkey
        per_q = np.bincount(q_exp, minlength=nq)
        first = np.cumsum(per_q) - per_q
        width = max(int(per_q.max(initial=0)), k)
        empty = np.iinfo(np.int64).max
        if nq * width <= 4 * total + 1024:  # small per-query rows: sort each row of a padded matrix
            m = np.full((nq, width), empty, np.int64)
            m[q_exp, np.arange(total, dtype=np.int64) - first[q_exp]] = key
            m.sort(axis=1)
            top = m[:, :k]
        else:
            order = np.lexsort((key, q_exp))
            idx = np.minimum(first[:, None] + np.arange(k), max(total - 1, 0))
            ok = np.arange(k)[None, :] < per_q[:, None]
            top = np.where(ok, key[order[idx]], empty) if total else np.full((nq, k), empty, np.int64)
        missing = top == empty
        out_d = np.where(missing, big, top >> 34).astype(np.int32)
        low = np.where(missing, 0, top & ((1 << 34) - 1))
        out_r = low if self._raw_keys else self._by_rank[low]
        return out_d, np.where(missing, -1, out_r)


def packed_rows(offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The companion array of ``CompanionRows``: [n_unique, n_rows, offsets (n_unique + 1), rows]."""
    return np.concatenate(([len(offsets) - 1, len(rows)], offsets, rows)).astype(np.int64)


class CompanionRows(DistinctRows):
    """``DistinctRows`` whose layout travels in a companion array beside the faiss file (``packed_rows``), for
    kinds whose faiss structure holds each distinct code once (``hnsw``, ``ivf-dedup``)."""

    companion_name = "rows"

    def __init__(self, faiss_index, bits: int, params: dict, companion: np.ndarray | None = None):
        self._companion = companion
        super().__init__(faiss_index, bits, params)

    @classmethod
    def open(cls, faiss_index, bits: int, params: dict, companion: np.ndarray | None):
        return cls(faiss_index, bits, params, companion)

    def _read_companion(self) -> None:
        """Set the rows from the companion array (call from ``configure``)."""
        c = self._companion
        if c is None:
            raise ValueError(f"an {self.kind} index needs its rows companion file")
        n_u, n = int(c[0]), int(c[1])
        self._set_rows(np.asarray(c[3 + n_u : 3 + n_u + n]), np.asarray(c[2 : 3 + n_u]))

    def _set_layout(self, rows: np.ndarray, offsets: np.ndarray) -> None:
        """New rows and offsets, the companion array with them."""
        self._companion = packed_rows(offsets, rows)
        self._set_rows(rows, offsets)

    def companion(self) -> np.ndarray:
        return packed_rows(self.offsets, self.rows)

    @property
    def ntotal(self) -> int:
        return len(self.rows)

    def ids(self) -> np.ndarray:
        return np.asarray(self.rows)


def repeat_codes(distinct: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each distinct code repeated ``counts`` times (the codes of every row, in layout order); 8-byte codes as
    one word each, a 1-D repeat several times faster than one along axis 0."""
    if distinct.shape[1] == 8:
        words = np.ascontiguousarray(distinct).view(np.uint64).ravel()
        return np.repeat(words, counts).view(np.uint8).reshape(-1, 8)
    return np.repeat(distinct, counts, axis=0)


def distinct_layout(row_ids: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows sorted by (code, row_id), offsets of each distinct code's rows, the distinct codes)."""
    order = order_by_code(row_ids, codes)
    rows, sorted_codes = row_ids[order], codes[order]
    starts = run_starts(sorted_codes)
    return (
        rows,
        np.concatenate((starts, [len(rows)])).astype(np.int64),
        np.ascontiguousarray(sorted_codes[starts]),
    )


def run_starts(sorted_codes: np.ndarray) -> np.ndarray:
    """First position of each run of equal codes in codes sorted by code."""
    if len(sorted_codes) == 0:
        return np.zeros(0, np.int64)
    words = code_words(sorted_codes)
    change = np.any(words[1:] != words[:-1], axis=1) if words.shape[1] > 1 else words[1:, 0] != words[:-1, 0]
    return np.concatenate(([0], np.flatnonzero(change) + 1)).astype(np.int64)
