"""``ivf-dedup``: approximate, ``IndexBinaryIVF`` over the distinct codes (faiss ids = distinct-code ids), with
every row per code in a companion array (``<file>.rows.npy``), as ``hnsw`` keeps them. Trained codes repeat
heavily (a few codes can hold millions of rows): an IVF over every row puts such a code's rows in one list
that each nearby query scans, here they are one entry. A code's id is its rank among the distinct codes, so
rows sit in (code, row_id) order as ``distinct_layout`` gives them. Appends add only unseen codes to the lists
(renaming the ids after them) and splice new rows into their code's group; deletes drop rows and remove codes
left with none. Results are ordered by (distance, row_id) among what it returns."""

from __future__ import annotations

import numpy as np

from storage.index.base import BinaryIndex, u8
from storage.index.distinct import CompanionRows, distinct_layout, packed_rows, repeat_codes
from storage.index.kinds.ivf import (
    IVFIndex,
    add_assigned,
    empty_ivf,
    list_contents,
    member,
    rewrite_lists,
    train_ivf,
)
from storage.index.registry import register_kind


def _code_keys(codes: np.ndarray) -> np.ndarray:
    """One sortable, comparable key per code (lexicographic byte order)."""
    codes = np.ascontiguousarray(codes, np.uint8)
    if codes.shape[1] == 8:
        return codes.view(">u8").ravel()
    return codes.view(np.dtype((np.void, codes.shape[1]))).ravel()


@register_kind
class IVFDedupIndex(CompanionRows, BinaryIndex):
    """IVF over the distinct codes, with every row per code in the companion array."""

    kind = "ivf-dedup"
    removable = True  # rows leave their code's group; codes left with none leave the lists
    supports_delta = True  # a delta shares the coarse quantizer
    param_specs = IVFIndex.param_specs

    @classmethod
    def derive_params(cls, p: dict, ntotal: int, bits: int, item: str) -> dict:
        return IVFIndex.derive_params(p, ntotal, bits, item)

    @classmethod
    def from_codes(cls, row_ids, codes, bits, params, increasing, seed) -> IVFDedupIndex:
        rows, offsets, distinct = distinct_layout(row_ids, codes)
        params = dict(params)
        if params["nlist"] > max(len(distinct), 1):  # fewer distinct codes than lists: one list each at most
            params["nlist"] = max(len(distinct), 1)
            params["nprobe"] = min(params["nprobe"], params["nlist"])
        fidx = train_ivf(distinct, bits, params, seed)
        add_assigned(fidx, np.arange(len(distinct), dtype=np.int64), distinct)
        return cls(fidx, bits, params, packed_rows(offsets, rows))

    def empty_like(self) -> IVFDedupIndex:
        empty = np.zeros(0, np.int64)
        return IVFDedupIndex(
            empty_ivf(self.index), self.bits, self.params, packed_rows(np.zeros(1, np.int64), empty)
        )

    def configure(self) -> None:
        self.index.nprobe = int(self.params.get("nprobe", 8))
        self._read_companion()

    def _distinct_search(self, uq, kk):
        return self.index.search(uq, kk)  # labels = distinct-code ids

    def distinct_codes(self) -> np.ndarray:
        """The distinct codes in id order (= code order)."""
        held, codes = list_contents(self.index, self.nbytes, codes=True)
        out = np.zeros((self.n_unique, self.nbytes), np.uint8)
        out[held] = codes
        return out

    def row_codes(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.rows), repeat_codes(self.distinct_codes(), self.counts)

    def add(self, row_ids: np.ndarray, codes: np.ndarray) -> None:
        """New rows join their code's group; unseen codes join the lists. Code ids stay the codes' ranks (ids
        after an inserted code shift up by one), so the layout stays that of a fresh build."""
        row_ids, codes = np.asarray(row_ids, np.int64), u8(codes)
        if not len(row_ids):
            return
        held = _code_keys(self.distinct_codes())  # sorted: ids are code ranks
        keys = _code_keys(codes)
        pos = np.searchsorted(held, keys)
        hit = pos < len(held)
        hit[hit] = held[pos[hit]] == keys[hit]
        _, first, inv = np.unique(keys[~hit], return_index=True, return_inverse=True)
        ins = np.searchsorted(held, keys[~hit][first])  # where each unseen code goes among the held ones
        remap = np.arange(self.n_unique, dtype=np.int64) + np.searchsorted(
            ins, np.arange(self.n_unique), "right"
        )
        fresh = ins + np.arange(len(ins), dtype=np.int64)
        group = np.empty(len(row_ids), np.int64)
        group[hit] = remap[pos[hit]]
        group[~hit] = fresh[inv.ravel()]
        if len(fresh):
            rewrite_lists(self.index, self.nbytes, remap=remap)
            add_assigned(self.index, fresh, codes[~hit][first])
        n_u = self.n_unique + len(fresh)
        counts = np.zeros(n_u, np.int64)
        counts[remap] = self.counts
        counts += np.bincount(group, minlength=n_u)
        rows = np.asarray(self.rows)
        if len(rows) and int(row_ids.min()) <= int(rows.max()):  # interleaved row_ids: regroup every row
            old_group = np.repeat(remap, self.counts)
            all_rows, all_groups = np.concatenate((rows, row_ids)), np.concatenate((old_group, group))
            new_rows = all_rows[np.lexsort((all_rows, all_groups))]
        else:  # appended row_ids: after their group's rows, new groups before the next held code's rows
            at = np.empty(len(row_ids), np.int64)
            at[hit] = self.offsets[pos[hit] + 1]
            at[~hit] = self.offsets[ins[inv.ravel()]]
            o = np.lexsort((row_ids, group))
            new_rows = np.insert(rows, at[o], row_ids[o])
        offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        self._set_layout(new_rows, offsets)

    def remove(self, row_ids: np.ndarray) -> int:
        """Drop ``row_ids``; codes left with no row leave the lists and the ids after them shift down."""
        rows = np.asarray(self.rows)
        drop = member(rows, np.asarray(row_ids, np.int64))
        gone = np.flatnonzero(drop)
        if not len(gone):
            return 0
        lost = np.bincount(np.searchsorted(self.offsets, gone, "right") - 1, minlength=self.n_unique)
        counts = self.counts - lost
        live = counts > 0
        if not live.all():
            remap = np.cumsum(live) - 1
            rewrite_lists(self.index, self.nbytes, drop=np.flatnonzero(~live), remap=remap)
        offsets = np.concatenate(([0], np.cumsum(counts[live]))).astype(np.int64)
        kept = rows[~drop]
        self._set_layout(kept, offsets)
        return len(gone)

    def range_search(self, queries, radius):
        raise NotImplementedError("ivf-dedup indexes do not support range search")

    def memory_bytes(self) -> int:
        return self.n_unique * (self.nbytes + 16) + 8 * len(self.rows)
