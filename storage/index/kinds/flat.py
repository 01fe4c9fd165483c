"""``flat``: exact ``IndexBinaryFlat`` inside ``IndexBinaryIDMap``, codes stored in row_id order and searched with
faiss' counting top-k (``use_heap = False``). The counting selection keeps, per distance, the first rows in
storage order, so the result is already ranked by (Hamming distance, row_id): no re-ranking."""

from __future__ import annotations

import numpy as np

from storage.index.base import BinaryIndex, add_chunked, u8
from storage.index.registry import register_kind


@register_kind
class FlatIndex(BinaryIndex):
    kind = "flat"
    exact = True

    def __init__(self, faiss_index, bits: int, params: dict, ordered: bool | None = None):
        self._ordered = ordered
        super().__init__(faiss_index, bits, params)

    @classmethod
    def from_codes(cls, row_ids, codes, bits, params, increasing, seed) -> FlatIndex:
        import faiss

        fidx = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(bits))
        add_chunked(fidx, row_ids, codes, None if increasing else np.argsort(row_ids, kind="stable"))
        return cls(fidx, bits, params, ordered=True)

    @classmethod
    def read_flags(cls) -> int:
        import faiss

        return faiss.IO_FLAG_MMAP_IFC  # the codes are mapped in place

    def configure(self) -> None:
        import faiss

        inner = faiss.downcast_IndexBinary(self.index.index)
        inner.use_heap = False  # counting top-k: exact, and ties in storage (= row_id) order
        self.inner = inner
        if self._ordered is None:
            ids = self.ids()
            self._ordered = bool(len(ids) < 2 or np.all(ids[1:] > ids[:-1]))

    @property
    def ordered(self) -> bool:
        return bool(self._ordered)

    def add(self, row_ids: np.ndarray, codes: np.ndarray) -> None:
        row_ids = np.ascontiguousarray(row_ids, dtype=np.int64)
        order = np.argsort(row_ids, kind="stable")
        row_ids, codes = row_ids[order], u8(codes)[order]
        if self.ntotal and len(row_ids):
            last = int(self.index.id_map.at(self.ntotal - 1))
            if row_ids[0] <= last:
                self._ordered = False
        super().add(row_ids, codes)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, ids = self.index.search(queries, k)
        if self._ordered:
            return dist, ids
        return rerank_by_range(self.index, queries, dist, ids, k)


def rerank_by_range(index, queries: np.ndarray, dist: np.ndarray, ids: np.ndarray, k: int):
    """Exact (distance, row_id) order across ties at the k-th distance, via one range search per k-th distance."""
    out_d, out_i = np.empty_like(dist), np.empty_like(ids)
    kth = dist[:, -1]
    for radius in np.unique(kth):
        group = np.flatnonzero(kth == radius)
        lims, rdist, rids = index.range_search(queries[group], int(radius) + 1)
        for j, q in enumerate(group):
            d, i = rdist[lims[j] : lims[j + 1]], rids[lims[j] : lims[j + 1]]
            order = np.lexsort((i, d))[:k]
            out_d[q], out_i[q] = d[order], i[order]
    return out_d, out_i
