"""``ivf``: approximate, ``IndexBinaryIVF`` (nlist, nprobe, train_size) with the coarse quantizer trained on a
seeded sample of the codes. Results are ordered by (distance, row_id) among what it returns."""

from __future__ import annotations

import numpy as np

from storage.index.base import ADD_CHUNK, BinaryIndex, u8
from storage.index.registry import Param, register_kind
from storage.index.threads import omp_threads, run_chunked, search_threads


def train_ivf(codes: np.ndarray, bits: int, params: dict, seed: int):
    """An empty ``IndexBinaryIVF`` whose coarse quantizer is trained on a seeded sample of ``codes``."""
    import faiss

    rng = np.random.default_rng(seed)
    n_train = min(params["train_size"], len(codes))
    pick = (
        np.sort(rng.choice(len(codes), size=n_train, replace=False)) if n_train < len(codes) else slice(None)
    )
    quantizer = faiss.IndexBinaryFlat(bits)
    fidx = faiss.IndexBinaryIVF(quantizer, bits, params["nlist"])
    fidx.own_fields = True
    quantizer.this.disown()
    fidx.cp.seed = 1234
    with omp_threads(1):  # k-means (BLAS + OpenMP) collapses when a core is busy; one thread is steady
        fidx.train(u8(codes[pick]))
    return fidx


def empty_ivf(fidx):
    """An empty ``IndexBinaryIVF`` with a copy of ``fidx``'s trained coarse quantizer (same lists)."""
    import faiss

    quantizer = faiss.clone_binary_index(fidx.quantizer)
    out = faiss.IndexBinaryIVF(quantizer, fidx.d, fidx.nlist)
    out.own_fields = True
    quantizer.this.disown()
    out.is_trained = True
    return out


def add_assigned(fidx, ids: np.ndarray, codes: np.ndarray) -> None:
    """Add to an ``IndexBinaryIVF`` with the coarse assignment computed on the search pool (dynamic chunks, one
    OpenMP thread each) instead of faiss' OpenMP loop, which stalls when another process holds a core."""
    import faiss

    ids = np.ascontiguousarray(ids, dtype=np.int64)
    codes = u8(codes)
    quantizer = faiss.downcast_IndexBinary(fidx.quantizer)

    def assign(q, k):
        return quantizer.search(q, k)

    for lo in range(0, len(ids), ADD_CHUNK):
        c, r = (
            np.ascontiguousarray(codes[lo : lo + ADD_CHUNK]),
            np.ascontiguousarray(ids[lo : lo + ADD_CHUNK]),
        )
        _, lists = run_chunked(assign, c, 1, search_threads(), 8192)
        lists = np.ascontiguousarray(lists[:, 0], dtype=np.int64)
        fidx.add_core(len(c), faiss.swig_ptr(c), faiss.swig_ptr(r), faiss.swig_ptr(lists))


def list_contents(fidx, nbytes: int, codes: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(ids, codes or None) held in an ``IndexBinaryIVF``'s inverted lists, list after list."""
    import faiss

    inv = fidx.invlists
    ids, out = [], []
    for lst in range(fidx.nlist):
        n = inv.list_size(lst)
        if n:
            ids.append(faiss.rev_swig_ptr(inv.get_ids(lst), n).copy())
            if codes:
                out.append(faiss.rev_swig_ptr(inv.get_codes(lst), n * nbytes).copy())
    held = np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, np.int64)
    flat = np.concatenate(out) if out else np.zeros(0, np.uint8)
    return held, (flat.reshape(-1, nbytes) if codes else None)


def member(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Which ``values`` are among ``ids`` (int64): a mark per id where they are dense enough (linear, no
    sort), else ``np.isin``."""
    if (
        len(values)
        and len(ids)
        and int(values.min()) >= 0
        and int(values.max()) < 8 * len(values) + (1 << 20)
    ):
        mark = np.zeros(int(values.max()) + 1, bool)
        mark[ids[(ids >= 0) & (ids < len(mark))]] = True
        return mark[values]
    return np.isin(values, ids)


def rewrite_lists(fidx, nbytes: int, drop: np.ndarray | None = None, remap: np.ndarray | None = None) -> int:
    """Rewrite an ``IndexBinaryIVF``'s in-memory lists from numpy: entries whose id is in ``drop`` leave, and
    with ``remap`` (old id -> new id, ids in [0, len(remap))) every other id is renamed (faiss renames none);
    only touched lists are written. Returns how many entries left."""
    import faiss

    drop = np.unique(np.asarray(drop if drop is not None else [], np.int64))
    if not len(drop) and remap is None:
        return 0
    mark = None
    if not len(drop) or (int(drop[0]) >= 0 and int(drop[-1]) < (1 << 31)):
        mark = np.zeros(int(drop[-1]) + 1 if len(drop) else 0, bool)
        mark[drop] = True
    inv, removed = fidx.invlists, 0
    for lst in range(fidx.nlist):
        n = inv.list_size(lst)
        if not n:
            continue
        held = faiss.rev_swig_ptr(inv.get_ids(lst), n)
        if mark is not None:
            out = np.zeros(n, bool)
            inside = (held >= 0) & (held < len(mark))
            out[inside] = mark[held[inside]]
        else:
            out = np.isin(held, drop)
        keep = np.flatnonzero(~out)
        new_ids = held[keep] if remap is None else remap[held[keep]]
        if len(keep) == n and (remap is None or np.array_equal(new_ids, held)):
            continue
        new_ids = np.ascontiguousarray(new_ids, np.int64)
        new_codes = np.ascontiguousarray(
            faiss.rev_swig_ptr(inv.get_codes(lst), n * nbytes).reshape(n, nbytes)[keep]
        )
        inv.resize(lst, len(keep))
        if len(keep):
            inv.update_entries(lst, 0, len(keep), faiss.swig_ptr(new_ids), faiss.swig_ptr(new_codes))
        removed += n - len(keep)
    fidx.ntotal = int(fidx.ntotal) - removed
    return removed


@register_kind
class IVFIndex(BinaryIndex):
    kind = "ivf"
    removable = True  # rows leave their lists in place; its binary search takes no selector
    supports_delta = True  # a delta shares the coarse quantizer
    param_specs = (
        Param("nlist", None, "inverted lists (default ~4 sqrt(n))"),
        Param("nprobe", 8, "lists visited per query"),
        Param("train_size", None, "codes sampled to train the coarse quantizer"),
    )

    @classmethod
    def derive_params(cls, p: dict, ntotal: int, bits: int, item: str) -> dict:
        if p["nlist"] is None:
            p["nlist"] = int(
                max(1, min(ntotal // 39 if ntotal >= 39 else 1, 4 * int(np.sqrt(max(ntotal, 1)))))
            )
        if p["nlist"] > max(ntotal, 1):
            raise ValueError(
                f"{item}: ivf nlist={p['nlist']} exceeds the {ntotal} codes to index "
                f"(each list needs at least one code to train on)"
            )
        if p["nprobe"] > p["nlist"]:
            raise ValueError(f"{item}: ivf nprobe={p['nprobe']} exceeds nlist={p['nlist']}")
        if p["train_size"] is None:
            p["train_size"] = int(min(ntotal, max(p["nlist"] * 64, 10_000)))
        if p["train_size"] < p["nlist"]:
            raise ValueError(f"{item}: ivf train_size={p['train_size']} is smaller than nlist={p['nlist']}")
        return p

    @classmethod
    def from_codes(cls, row_ids, codes, bits, params, increasing, seed) -> IVFIndex:
        index = cls(train_ivf(codes, bits, params, seed), bits, params)
        index.add(row_ids, codes)
        return index

    def configure(self) -> None:
        self.index.nprobe = int(self.params.get("nprobe", 8))

    # read_flags() stays 0: IO_FLAG_MMAP would turn the lists into OnDiskInvertedLists, whose per-search
    # prefetch threads cost ~1-4 ms a query (measured), so the file is read into memory

    def add(self, row_ids: np.ndarray, codes: np.ndarray) -> None:
        add_assigned(self.index, row_ids, codes)

    def empty_like(self) -> IVFIndex:
        return IVFIndex(empty_ivf(self.index), self.bits, self.params)

    def ids(self) -> np.ndarray:
        return list_contents(self.index, self.nbytes, codes=False)[0]

    def row_codes(self) -> tuple[np.ndarray, np.ndarray]:
        return list_contents(self.index, self.nbytes, codes=True)

    def remove(self, row_ids: np.ndarray) -> int:
        import faiss

        ids = np.ascontiguousarray(np.unique(np.asarray(row_ids, np.int64)))
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids))) if len(ids) else 0

    def memory_bytes(self) -> int:
        return self.ntotal * (self.nbytes + 8) + int(self.index.nlist) * self.nbytes
