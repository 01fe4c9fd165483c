"""``hnsw``: approximate, ``IndexBinaryHNSW`` over the distinct codes (duplicate codes form distance-0
plateaus that strand the greedy search); faiss ids = the smallest row_id of each code, and a companion array
(``<file>.rows.npy``) lists every row per code. Results are ordered by (distance, row_id) among what it
returns."""

from __future__ import annotations

import numpy as np

from storage.index.base import BinaryIndex, add_chunked, id_mapped, u8
from storage.index.build import build_index
from storage.index.distinct import CompanionRows, distinct_layout, packed_rows, repeat_codes
from storage.index.registry import Param, register_kind


@register_kind
class HNSWIndex(CompanionRows, BinaryIndex):
    """HNSW graph over the distinct codes, with every row per code in the companion array."""

    kind = "hnsw"
    incremental_add = False
    selector_search = True  # over the distinct codes that keep at least one row (faiss cannot remove)
    param_specs = (
        Param("m", 32, "links per node"),
        Param("ef_construction", 80, "candidate list size while building"),
        Param("ef_search", 128, "candidate list size while searching"),
    )

    @classmethod
    def derive_params(cls, p: dict, ntotal: int, bits: int, item: str) -> dict:
        if p["m"] < 2:
            raise ValueError(f"{item}: hnsw m={p['m']} must be at least 2")
        return p

    @classmethod
    def from_codes(cls, row_ids, codes, bits, params, increasing, seed) -> HNSWIndex:
        import faiss

        inner = faiss.IndexBinaryHNSW(bits, params["m"])
        inner.hnsw.efConstruction = params["ef_construction"]
        fidx = id_mapped(inner)
        rows, offsets, distinct = distinct_layout(row_ids, codes)  # each distinct code once
        add_chunked(fidx, rows[offsets[:-1]], distinct)
        return cls(fidx, bits, params, packed_rows(offsets, rows))

    def configure(self) -> None:
        import faiss

        self.inner = faiss.downcast_IndexBinary(self.index.index)
        self.inner.hnsw.efSearch = int(self.params.get("ef_search", 128))
        self._read_companion()

    def _distinct_search(self, uq, kk):
        return self.inner.search(uq, kk, params=self.search_params)  # labels = positions of the codes

    def distinct_codes(self) -> np.ndarray:
        if not self.n_unique:
            return np.zeros((0, self.nbytes), np.uint8)
        codes = self.inner.storage.reconstruct_n(0, self.n_unique)
        return np.asarray(codes, np.uint8).reshape(-1, self.nbytes)

    def row_codes(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.rows), repeat_codes(self.distinct_codes(), self.counts)

    def restricted(self, allow: np.ndarray | None, exclude: np.ndarray | None) -> HNSWIndex:
        import faiss

        params = faiss.SearchParametersHNSW()
        params.efSearch = int(self.params.get("ef_search", 128))
        return self._restricted_rows(allow, exclude, params)

    def add(self, row_ids: np.ndarray, codes: np.ndarray) -> None:
        """Rebuild over old + new rows (the graph holds distinct codes only)."""
        _, old = self.row_codes()
        rebuilt = build_index(
            np.concatenate((self.rows, np.asarray(row_ids, np.int64))),
            np.concatenate((old, u8(codes))),
            self.bits,
            self.kind,
            self.params,
        )
        self.index, self._companion = rebuilt.index, rebuilt.companion()
        self.configure()

    def range_search(self, queries, radius):
        raise NotImplementedError("hnsw indexes do not support range search")

    def memory_bytes(self) -> int:
        return self.n_unique * (self.nbytes + 8 + 4 * 2 * int(self.params.get("m", 32))) + 16 * len(self.rows)
