"""``flat-dedup``: exact. The same faiss file as ``flat``, but stored sorted by (code, row_id); at load the
distinct codes are indexed once (``IndexBinaryFlat``) with a CSR map code -> row_ids. A query batch is reduced
to its distinct codes, each is searched once against the distinct database codes and its rows are expanded.
Trained codes repeat heavily, so this scans a small fraction of the pairs ``flat`` scans."""

from __future__ import annotations

import numpy as np

from storage.index.base import BinaryIndex, add_chunked, flat_codes_view, idmap_ids, u8
from storage.index.build import build_index
from storage.index.distinct import DistinctRows, order_by_code, run_starts
from storage.index.kinds.flat import remove_from_idmap
from storage.index.registry import register_kind


@register_kind
class DedupFlatIndex(DistinctRows, BinaryIndex):
    """Exact search over distinct codes; the faiss object holds every row sorted by (code, row_id)."""

    kind = "flat-dedup"
    exact = True
    incremental_add = False
    removable = True  # remove_ids keeps the (code, row_id) order; the distinct codes are re-read
    selector_search = True  # over the distinct codes that keep at least one row

    @classmethod
    def from_codes(cls, row_ids, codes, bits, params, increasing, seed) -> DedupFlatIndex:
        import faiss

        fidx = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(bits))
        add_chunked(fidx, row_ids, codes, order_by_code(row_ids, codes))
        return cls(fidx, bits, params)

    @classmethod
    def read_flags(cls) -> int:
        import faiss

        return faiss.IO_FLAG_MMAP_IFC  # the codes are mapped in place

    def configure(self) -> None:
        import faiss

        n = self.ntotal
        codes = flat_codes_view(faiss.downcast_IndexBinary(self.index.index), n, self.nbytes)
        starts = run_starts(codes)
        self._set_rows(idmap_ids(self.index, copy=False), np.concatenate((starts, [n])).astype(np.int64))
        uniq = faiss.IndexBinaryFlat(self.bits)
        uniq.use_heap = False  # counting top-k
        if len(starts):
            uniq.add(np.ascontiguousarray(codes[starts]))
        self.uniq = uniq

    def _distinct_search(self, uq, kk):
        return self.uniq.search(uq, kk, params=self.search_params)

    def _distinct_range(self, uq, radius):
        return self.uniq.range_search(uq, radius, params=self.search_params)

    def row_codes(self) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        codes = flat_codes_view(faiss.downcast_IndexBinary(self.index.index), self.ntotal, self.nbytes)
        return idmap_ids(self.index, copy=False), codes

    def remove(self, row_ids: np.ndarray) -> int:
        return remove_from_idmap(self, row_ids)

    def restricted(self, allow: np.ndarray | None, exclude: np.ndarray | None) -> DedupFlatIndex:
        import faiss

        return self._restricted_rows(allow, exclude, faiss.SearchParameters())

    def add(self, row_ids: np.ndarray, codes: np.ndarray) -> None:
        """Merge new rows (every row is re-sorted by code; flat has nothing to train)."""
        import faiss

        old_codes = flat_codes_view(
            faiss.downcast_IndexBinary(self.index.index), self.ntotal, self.nbytes
        ).copy()
        rebuilt = build_index(
            np.concatenate((self.rows, np.asarray(row_ids, np.int64))),
            np.concatenate((old_codes, u8(codes))),
            self.bits,
            self.kind,
            self.params,
        )
        self.index = rebuilt.index
        self.configure()

    def memory_bytes(self) -> int:
        return self.ntotal * (self.nbytes + 8) + self.n_unique * (self.nbytes + 16)
