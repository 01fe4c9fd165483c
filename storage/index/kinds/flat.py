"""``flat``: exact ``IndexBinaryFlat`` inside ``IndexBinaryIDMap``, codes stored in row_id order and searched with
faiss' counting top-k (``use_heap = False``). The counting selection keeps, per distance, the first rows in
storage order, so the result is already ranked by (Hamming distance, row_id): no re-ranking."""

from __future__ import annotations

import copy

import numpy as np

from storage.index.base import BinaryIndex, add_chunked, flat_codes_view, idmap_ids, row_selector, u8
from storage.index.registry import register_kind


@register_kind
class FlatIndex(BinaryIndex):
    kind = "flat"
    exact = True
    removable = True  # IndexBinaryIDMap.remove_ids keeps the storage (= row_id) order
    selector_search = True  # the counting top-k honours an IDSelector and still ranks ties by row_id

    def __init__(self, faiss_index, bits: int, params: dict, ordered: bool | None = None):
        self._ordered = ordered
        self._selector = None  # the IDSelector of a restricted() view
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
        dist, ids = self.index.search(queries, k, params=self._call_params())
        if self._ordered:
            return dist, ids
        return rerank_by_range(self.index, queries, dist, ids, k, self._call_params())

    def _call_params(self):
        """Fresh SearchParameters per call: IndexBinaryIDMap swaps in a translated selector while it searches,
        so one object shared by the pool's threads would be raced."""
        import faiss

        if self._selector is None:
            return None
        params = faiss.SearchParameters()
        params.sel = self._selector
        return params

    def row_codes(self) -> tuple[np.ndarray, np.ndarray]:
        return idmap_ids(self.index, copy=False), flat_codes_view(self.inner, self.ntotal, self.nbytes)

    def remove(self, row_ids: np.ndarray) -> int:
        return remove_from_idmap(self, row_ids)

    def restricted(self, allow: np.ndarray | None, exclude: np.ndarray | None) -> FlatIndex:
        view = copy.copy(self)
        view._selector, view._keep_alive = row_selector(allow, exclude)
        return view


def remove_from_idmap(index: BinaryIndex, row_ids: np.ndarray) -> int:
    """``remove_ids`` on an IndexBinaryIDMap over an IndexBinaryFlat read into memory (not memory-mapped)."""
    import faiss

    if not faiss.downcast_IndexBinary(index.index.index).xb.is_owned:
        raise ValueError(f"a memory-mapped {index.kind} index cannot remove rows; load it with mmap=False")
    ids = np.ascontiguousarray(np.unique(np.asarray(row_ids, np.int64)))
    if len(ids) == 0:
        return 0
    removed = int(index.index.remove_ids(faiss.IDSelectorBatch(ids)))
    index.configure()
    return removed


def rerank_by_range(
    index, queries: np.ndarray, dist: np.ndarray, ids: np.ndarray, k: int, params=None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (distance, row_id) order across ties at the k-th distance, via one range search per k-th distance
    (missing results, id -1, stay last)."""
    out_d, out_i = np.full_like(dist, np.iinfo(np.int32).max), np.full_like(ids, -1)
    kth = np.where(ids[:, -1] < 0, np.iinfo(np.int32).max - 1, dist[:, -1])  # short rows: every match
    for radius in np.unique(kth):
        group = np.flatnonzero(kth == radius)
        lims, rdist, rids = index.range_search(queries[group], int(radius) + 1, params=params)
        for j, q in enumerate(group):
            d, i = rdist[lims[j] : lims[j + 1]], rids[lims[j] : lims[j + 1]]
            order = np.lexsort((i, d))[:k]
            out_d[q, : len(order)], out_i[q, : len(order)] = d[order], i[order]
    return out_d, out_i
