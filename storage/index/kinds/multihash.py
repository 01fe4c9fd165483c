"""``multihash``: approximate, ``IndexBinaryMultiHash`` (nhash tables of hash_bits bits, probing nflip bit
flips). Results are ordered by (distance, row_id) among what it returns."""

from __future__ import annotations

import numpy as np

from storage.index.base import BinaryIndex, add_chunked, flat_codes_view, id_mapped, idmap_ids
from storage.index.registry import Param, register_kind


@register_kind
class MultiHashIndex(BinaryIndex):
    """faiss 1.15 can neither remove from nor select in an IndexBinaryMultiHash: deletes are tombstones and
    filtered searches oversample or scan the selected rows' codes (storage/index/filters.py)."""

    kind = "multihash"
    param_specs = (
        Param("nhash", None, "hash tables"),
        Param("hash_bits", None, "bits per hash table"),
        Param("nflip", 2, "bit flips probed per table"),
    )

    @classmethod
    def derive_params(cls, p: dict, ntotal: int, bits: int, item: str) -> dict:
        if p["hash_bits"] is None:
            p["hash_bits"] = 16 if bits >= 32 else max(1, bits // 2)
        if p["nhash"] is None:
            p["nhash"] = max(1, bits // p["hash_bits"])
        if p["hash_bits"] > 64:
            raise ValueError(f"{item}: multihash hash_bits={p['hash_bits']} exceeds 64")
        if p["nhash"] * p["hash_bits"] > bits:
            raise ValueError(
                f"{item}: multihash nhash*hash_bits = {p['nhash'] * p['hash_bits']} exceeds the "
                f"{bits}-bit code"
            )
        if p["nflip"] > p["hash_bits"]:
            raise ValueError(f"{item}: multihash nflip={p['nflip']} exceeds hash_bits={p['hash_bits']}")
        return p

    @classmethod
    def from_codes(cls, row_ids, codes, bits, params, increasing, seed) -> MultiHashIndex:
        import faiss

        fidx = id_mapped(faiss.IndexBinaryMultiHash(bits, params["nhash"], params["hash_bits"]))
        add_chunked(fidx, row_ids, codes)
        return cls(fidx, bits, params)

    def configure(self) -> None:
        import faiss

        self.inner = faiss.downcast_IndexBinary(self.index.index)
        self.inner.nflip = int(self.params.get("nflip", 2))

    def row_codes(self) -> tuple[np.ndarray, np.ndarray]:
        storage = self.inner.storage  # an IndexBinaryFlat in insertion order, as the id map
        return idmap_ids(self.index, copy=False), flat_codes_view(storage, self.ntotal, self.nbytes)

    def memory_bytes(self) -> int:
        return self.ntotal * (self.nbytes + 8 + 24 * int(self.params.get("nhash", 4)))
