"""FAISS binary indexes with ids = row_id, written atomically with a manifest and published via CURRENT.

Kinds (``KINDS``), chosen per catalogue in the ``binary_index`` config:

- ``flat`` (default): exact ``IndexBinaryFlat`` inside ``IndexBinaryIDMap``, codes stored in row_id order and
  searched with faiss' counting top-k (``use_heap = False``). The counting selection keeps, per distance, the
  first rows in storage order, so the result is already ranked by (Hamming distance, row_id): no re-ranking.
- ``flat-dedup``: exact as well. The same faiss file, but stored sorted by (code, row_id); at load the distinct
  codes are indexed once (``IndexBinaryFlat``) with a CSR map code -> row_ids. A query batch is reduced to its
  distinct codes, each is searched once against the distinct database codes and its rows are expanded.
  Trained codes repeat heavily, so this scans a small fraction of the pairs ``flat`` scans.
- ``hnsw`` (``IndexBinaryHNSW``: m, ef_construction, ef_search), ``ivf`` (``IndexBinaryIVF``: nlist, nprobe,
  train_size), ``multihash`` (``IndexBinaryMultiHash``: nhash, hash_bits, nflip): approximate; their results are
  ordered by (distance, row_id) among what they return.

An index is loaded once per process where it matters (``load_index_cached``), memory-mapped for local roots
(``IO_FLAG_MMAP``; S3 roots copy to a local cache file first). No Dagster in here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np

from storage.fs import StorageRoot

KINDS = ("flat", "flat-dedup", "hnsw", "ivf", "multihash")
EXACT_KINDS = ("flat", "flat-dedup")

#: Defaults per kind; ``None`` values are derived from the database size at build time.
DEFAULT_PARAMS: dict[str, dict] = {
    "flat": {},
    "flat-dedup": {},
    "hnsw": {"m": 32, "ef_construction": 80, "ef_search": 128},
    "ivf": {"nlist": None, "nprobe": 8, "train_size": None},
    "multihash": {"nhash": None, "hash_bits": None, "nflip": 2},
}
ENV_THREADS = "VITRIEVE_SEARCH_THREADS"
ENV_BATCH = "VITRIEVE_SEARCH_BATCH"
DEFAULT_QUERY_BATCH = 256
_ADD_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------- manifest


@dataclass
class IndexManifest:
    kind: str
    bits: int
    ntotal: int
    codes_rows: int
    sha256: str
    build_seconds: float
    catalogue: str
    model_id: str
    file: str
    params: dict
    created_at: str
    file_bytes: int = 0
    faiss_class: str = ""
    mode: str = "rebuild"
    companion_file: str = ""  # hnsw: rows per distinct code (.npy), sha256-checked like the index file
    companion_sha256: str = ""

    @classmethod
    def from_json(cls, text: str) -> IndexManifest:
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def index_dir(catalogue: str, model_id: str) -> tuple[str, ...]:
    return ("indexes", catalogue, model_id)


# --------------------------------------------------------------------------------------------- params


def resolve_params(kind: str, params: dict | None, ntotal: int, bits: int, item: str = "index") -> dict:
    """Complete and check the parameters of ``kind`` for ``ntotal`` codes of ``bits`` bits; raises ValueError
    naming ``item`` and the reason."""
    if kind not in KINDS:
        raise ValueError(f"{item}: unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    given = {k: v for k, v in (params or {}).items() if v is not None}
    unknown = sorted(set(given) - set(DEFAULT_PARAMS[kind]))
    if unknown:
        raise ValueError(
            f"{item}: parameters {unknown} do not apply to kind {kind!r} "
            f"(it takes {sorted(DEFAULT_PARAMS[kind]) or 'none'})"
        )
    p = {**DEFAULT_PARAMS[kind], **given}
    for k, v in p.items():
        if v is not None and (not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{item}: {kind} parameter {k}={v!r} must be a positive integer")
    if bits % 8 or bits < 8:
        raise ValueError(f"{item}: code length {bits} bits is not a positive multiple of 8")
    if kind == "hnsw":
        if p["m"] < 2:
            raise ValueError(f"{item}: hnsw m={p['m']} must be at least 2")
    elif kind == "ivf":
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
    elif kind == "multihash":
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
    return {k: (int(v) if v is not None else None) for k, v in p.items()}


# --------------------------------------------------------------------------------------------- threads


_THREADS: list[int] = []  # search threads set for this process (empty = faiss' OpenMP default)


def set_search_threads(threads: int | None = None) -> int:
    """Threads for searching and building (``threads`` or $VITRIEVE_SEARCH_THREADS; 0/None = leave as is,
    default = faiss' OpenMP thread count); returns the count in force."""
    import faiss

    threads = threads or int(os.environ.get(ENV_THREADS, "0") or 0)
    if threads:
        faiss.omp_set_num_threads(int(threads))
        _THREADS[:] = [int(threads)]
    return search_threads()


def search_threads() -> int:
    """Threads a search uses: set_search_threads(), else $VITRIEVE_SEARCH_THREADS, else faiss' OpenMP count."""
    import faiss

    return (
        _THREADS[0]
        if _THREADS
        else (int(os.environ.get(ENV_THREADS, "0") or 0) or faiss.omp_get_max_threads())
    )


def default_query_batch() -> int:
    return int(os.environ.get(ENV_BATCH, "0") or 0) or DEFAULT_QUERY_BATCH


@functools.lru_cache(maxsize=4)
def _pool(threads: int):
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(threads, thread_name_prefix="vitrieve-search", initializer=_one_omp_thread)


def _one_omp_thread() -> None:
    import faiss

    faiss.omp_set_num_threads(1)  # OpenMP's thread count is per OS thread: the pool's workers scan alone


@contextlib.contextmanager
def _omp_threads(n: int):
    """OpenMP threads of the calling OS thread for the block (the setting is per thread in libgomp)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def run_chunked(fn, queries: np.ndarray, k: int, threads: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """``fn(queries, k)`` over chunks of ``chunk`` queries on ``threads`` pool threads (faiss and NumPy release
    the GIL). Dynamic chunks instead of OpenMP's static split keep both cores useful when another process
    takes one: 2-thread OpenMP search then loses up to 10x, the pool degrades gracefully."""
    if threads <= 1 or len(queries) <= 1:  # one scanning thread: no OpenMP team to wait for
        with _omp_threads(1):
            return fn(queries, k)
    chunk = max(1, min(chunk, -(-len(queries) // threads)))
    pieces = [queries[lo : lo + chunk] for lo in range(0, len(queries), chunk)]
    parts = list(_pool(threads).map(lambda q: fn(q, k), pieces))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# --------------------------------------------------------------------------------------------- helpers


def _u8(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.uint8)


def _code_words(codes: np.ndarray) -> np.ndarray:
    """Codes as big-endian uint64 words (n, ceil(nbytes/8)); word order = byte order = lexicographic order."""
    n, nbytes = codes.shape
    w = -(-nbytes // 8)
    if nbytes == 8 * w:
        return np.ascontiguousarray(codes).view(">u8")
    padded = np.zeros((n, 8 * w), np.uint8)
    padded[:, :nbytes] = codes
    return padded.view(">u8")


def _order_by_code(row_ids: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Permutation sorting rows by (code, row_id)."""
    words = _code_words(codes)
    if len(row_ids) < 2:
        return np.arange(len(row_ids))
    if bool(np.all(row_ids[1:] >= row_ids[:-1])):
        if words.shape[1] == 1:
            return np.argsort(words[:, 0], kind="stable")
        return np.lexsort(tuple(words[:, j] for j in range(words.shape[1] - 1, -1, -1)))
    return np.lexsort((row_ids, *(words[:, j] for j in range(words.shape[1] - 1, -1, -1))))


def _sort_rows(dist: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query, order (distance, row_id) ascending; missing results (id -1) go last."""
    if dist.size == 0:
        return dist, ids
    d = np.where(ids < 0, np.iinfo(np.int32).max, dist).astype(np.int64)
    key_ids = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    order = np.lexsort((key_ids, d), axis=-1)
    return np.take_along_axis(dist, order, -1), np.take_along_axis(ids, order, -1)


def _add_chunked(fidx, row_ids: np.ndarray, codes: np.ndarray, order: np.ndarray | None = None) -> None:
    """Add in chunks (in ``order`` if given, without materialising the permuted arrays)."""
    row_ids = np.ascontiguousarray(row_ids, dtype=np.int64)
    codes = _u8(codes)
    for lo in range(0, len(row_ids), _ADD_CHUNK):
        if order is None:
            fidx.add_with_ids(codes[lo : lo + _ADD_CHUNK], row_ids[lo : lo + _ADD_CHUNK])
        else:
            pick = order[lo : lo + _ADD_CHUNK]
            fidx.add_with_ids(np.ascontiguousarray(codes[pick]), np.ascontiguousarray(row_ids[pick]))


def _ivf_add(fidx, row_ids: np.ndarray, codes: np.ndarray) -> None:
    """IVF add with the coarse assignment computed on the search pool (dynamic chunks, one OpenMP thread
    each) instead of faiss' OpenMP loop, which stalls when another process holds a core."""
    import faiss

    row_ids = np.ascontiguousarray(row_ids, dtype=np.int64)
    codes = _u8(codes)
    quantizer = faiss.downcast_IndexBinary(fidx.quantizer)

    def assign(q, k):
        return quantizer.search(q, k)

    for lo in range(0, len(row_ids), _ADD_CHUNK):
        c, r = (
            np.ascontiguousarray(codes[lo : lo + _ADD_CHUNK]),
            np.ascontiguousarray(row_ids[lo : lo + _ADD_CHUNK]),
        )
        _, lists = run_chunked(assign, c, 1, search_threads(), 8192)
        lists = np.ascontiguousarray(lists[:, 0], dtype=np.int64)
        fidx.add_core(len(c), faiss.swig_ptr(c), faiss.swig_ptr(r), faiss.swig_ptr(lists))


def _faiss_class(index) -> str:
    return type(index).__name__


def _idmap_ids(idmap, copy: bool = True) -> np.ndarray:
    """The row_ids of an IndexBinaryIDMap (a zero-copy view when ``copy`` is False: valid while it lives)."""
    import faiss

    n = int(idmap.ntotal)
    if n == 0:
        return np.zeros(0, np.int64)
    view = faiss.rev_swig_ptr(idmap.id_map.data(), n).view(np.int64)
    return view.copy() if copy else view


def _flat_codes_view(flat, ntotal: int, nbytes: int) -> np.ndarray:
    """Zero-copy view of an IndexBinaryFlat's codes (works on memory-mapped storage too)."""
    import faiss

    if ntotal == 0:
        return np.zeros((0, nbytes), np.uint8)
    return faiss.rev_swig_ptr(flat.xb.data(), ntotal * nbytes).reshape(ntotal, nbytes)


# --------------------------------------------------------------------------------------------- index classes


class BinaryIndex:
    """A faiss binary index whose ids are row_ids, with the search semantics of its kind."""

    kind = "?"
    exact = False
    incremental_add = True  # add() appends rows; False: add() rebuilds (index_from_codes rebuilds instead)

    def __init__(self, faiss_index, bits: int, params: dict):
        self.index = faiss_index
        self.bits = bits
        self.nbytes = bits // 8
        self.params = dict(params)
        self.query_batch = default_query_batch()
        self.threads = 0  # 0 = search_threads()
        self.configure()

    # - to override
    def configure(self) -> None:
        """Apply runtime search parameters (after build or load)."""

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, ids = self.index.search(queries, k)
        return _sort_rows(dist, ids)

    def ids(self) -> np.ndarray:
        return _idmap_ids(self.index)

    # - common
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def d(self) -> int:
        return self.bits

    def add(self, row_ids: np.ndarray, codes: np.ndarray) -> None:
        if isinstance(self, IVFIndex):
            _ivf_add(self.index, row_ids, codes)
        else:
            _add_chunked(self.index, row_ids, codes)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (distances int32, row_ids int64) per query; exact kinds rank by (distance, row_id)."""
        queries = _u8(queries).reshape(-1, self.nbytes)
        k = int(min(k, self.ntotal))
        if k <= 0 or len(queries) == 0:
            return np.zeros((len(queries), max(k, 0)), np.int32), np.zeros(
                (len(queries), max(k, 0)), np.int64
            )
        return self._search_batch(queries, k)

    def _search_batch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return run_chunked(self._search, queries, k, self.threads or search_threads(), self.query_batch)

    def range_search(self, queries: np.ndarray, radius: int):
        """(lims, distances, row_ids) of database codes at distance < radius (exact kinds: all of them)."""
        return self.index.range_search(_u8(queries).reshape(-1, self.nbytes), int(radius))

    def memory_bytes(self) -> int:
        """Approximate resident size of the index structures."""
        return self.ntotal * (self.nbytes + 8)

    def writable(self):
        """The faiss object to serialise."""
        return self.index


class FlatIndex(BinaryIndex):
    kind = "flat"
    exact = True

    def __init__(self, faiss_index, bits: int, params: dict, ordered: bool | None = None):
        self._ordered = ordered
        super().__init__(faiss_index, bits, params)

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
        row_ids, codes = row_ids[order], _u8(codes)[order]
        if self.ntotal and len(row_ids):
            last = int(self.index.id_map.at(self.ntotal - 1))
            if row_ids[0] <= last:
                self._ordered = False
        super().add(row_ids, codes)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, ids = self.index.search(queries, k)
        if self._ordered:
            return dist, ids
        return _rerank_by_range(self.index, queries, dist, ids, k)

    def memory_bytes(self) -> int:
        return self.ntotal * (self.nbytes + 8)


class _DistinctRows:
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

    def _distinct_range(self, uq: np.ndarray, radius: int):
        return None

    def _search_batch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each distinct query code is searched once; identical queries share the result."""
        if len(queries) == 1:
            return run_chunked(self._search_unique, queries, k, 1, 1)
        words = _code_words(queries)
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


def _distinct_layout(row_ids: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows sorted by (code, row_id), offsets of each distinct code's rows, the distinct codes)."""
    order = _order_by_code(row_ids, codes)
    rows, sorted_codes = row_ids[order], codes[order]
    starts = _run_starts(sorted_codes)
    return (
        rows,
        np.concatenate((starts, [len(rows)])).astype(np.int64),
        np.ascontiguousarray(sorted_codes[starts]),
    )


def _run_starts(sorted_codes: np.ndarray) -> np.ndarray:
    """First position of each run of equal codes in codes sorted by code."""
    if len(sorted_codes) == 0:
        return np.zeros(0, np.int64)
    words = _code_words(sorted_codes)
    change = np.any(words[1:] != words[:-1], axis=1) if words.shape[1] > 1 else words[1:, 0] != words[:-1, 0]
    return np.concatenate(([0], np.flatnonzero(change) + 1)).astype(np.int64)


class DedupFlatIndex(_DistinctRows, BinaryIndex):
    """Exact search over distinct codes; the faiss object holds every row sorted by (code, row_id)."""

    kind = "flat-dedup"
    exact = True
    incremental_add = False

    def configure(self) -> None:
        import faiss

        n = self.ntotal
        codes = _flat_codes_view(faiss.downcast_IndexBinary(self.index.index), n, self.nbytes)
        starts = _run_starts(codes)
        self._set_rows(_idmap_ids(self.index, copy=False), np.concatenate((starts, [n])).astype(np.int64))
        uniq = faiss.IndexBinaryFlat(self.bits)
        uniq.use_heap = False  # counting top-k
        if len(starts):
            uniq.add(np.ascontiguousarray(codes[starts]))
        self.uniq = uniq

    def _distinct_search(self, uq, kk):
        return self.uniq.search(uq, kk)

    def _distinct_range(self, uq, radius):
        return self.uniq.range_search(uq, radius)

    def add(self, row_ids: np.ndarray, codes: np.ndarray) -> None:
        """Merge new rows (every row is re-sorted by code; flat has nothing to train)."""
        import faiss

        old_codes = _flat_codes_view(
            faiss.downcast_IndexBinary(self.index.index), self.ntotal, self.nbytes
        ).copy()
        rebuilt = build_index(
            np.concatenate((self.rows, np.asarray(row_ids, np.int64))),
            np.concatenate((old_codes, _u8(codes))),
            self.bits,
            "flat-dedup",
            self.params,
        )
        self.index = rebuilt.index
        self.configure()

    def memory_bytes(self) -> int:
        return self.ntotal * (self.nbytes + 8) + self.n_unique * (self.nbytes + 16)

    def range_search(self, queries: np.ndarray, radius: int):
        return self.index.range_search(_u8(queries).reshape(-1, self.nbytes), int(radius))


class HNSWIndex(_DistinctRows, BinaryIndex):
    """HNSW graph over the distinct codes (duplicate codes form distance-0 plateaus that strand the greedy
    search), faiss ids = the smallest row_id of each code; a companion array lists every row per code."""

    kind = "hnsw"
    incremental_add = False

    def __init__(self, faiss_index, bits: int, params: dict, companion: np.ndarray | None = None):
        self._companion = companion
        super().__init__(faiss_index, bits, params)

    def configure(self) -> None:
        import faiss

        self.inner = faiss.downcast_IndexBinary(self.index.index)
        self.inner.hnsw.efSearch = int(self.params.get("ef_search", 128))
        c = self._companion
        if c is None:
            raise ValueError("an hnsw index needs its rows companion file")
        n_u, n = int(c[0]), int(c[1])
        self._set_rows(np.asarray(c[3 + n_u : 3 + n_u + n]), np.asarray(c[2 : 3 + n_u]))

    def companion(self) -> np.ndarray:
        return np.concatenate(([self.n_unique, len(self.rows)], self.offsets, self.rows)).astype(np.int64)

    @property
    def ntotal(self) -> int:
        return len(self.rows)

    def ids(self) -> np.ndarray:
        return np.asarray(self.rows)

    def _distinct_search(self, uq, kk):
        return self.inner.search(uq, kk)  # labels = positions of the distinct codes

    def add(self, row_ids: np.ndarray, codes: np.ndarray) -> None:
        """Rebuild over old + new rows (the graph holds distinct codes only)."""
        distinct = np.zeros((0, self.nbytes), np.uint8)
        if self.n_unique:
            distinct = np.asarray(self.inner.storage.reconstruct_n(0, self.n_unique), np.uint8).reshape(
                -1, self.nbytes
            )
        old = np.repeat(distinct, self.counts, axis=0)
        rebuilt = build_index(
            np.concatenate((self.rows, np.asarray(row_ids, np.int64))),
            np.concatenate((old, _u8(codes))),
            self.bits,
            "hnsw",
            self.params,
        )
        self.index, self._companion = rebuilt.index, rebuilt.companion()
        self.configure()

    def range_search(self, queries, radius):
        raise NotImplementedError("hnsw indexes do not support range search")

    def memory_bytes(self) -> int:
        return self.n_unique * (self.nbytes + 8 + 4 * 2 * int(self.params.get("m", 32))) + 16 * len(self.rows)


class IVFIndex(BinaryIndex):
    kind = "ivf"

    def configure(self) -> None:
        self.index.nprobe = int(self.params.get("nprobe", 8))

    def ids(self) -> np.ndarray:
        import faiss

        inv = self.index.invlists
        out = []
        for lst in range(self.index.nlist):
            n = inv.list_size(lst)
            if n:
                out.append(faiss.rev_swig_ptr(inv.get_ids(lst), n).copy())
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)

    def memory_bytes(self) -> int:
        return self.ntotal * (self.nbytes + 8) + int(self.index.nlist) * self.nbytes


class MultiHashIndex(BinaryIndex):
    kind = "multihash"

    def configure(self) -> None:
        import faiss

        self.inner = faiss.downcast_IndexBinary(self.index.index)
        self.inner.nflip = int(self.params.get("nflip", 2))

    def memory_bytes(self) -> int:
        return self.ntotal * (self.nbytes + 8 + 24 * int(self.params.get("nhash", 4)))


_CLASSES = {
    "flat": FlatIndex,
    "flat-dedup": DedupFlatIndex,
    "hnsw": HNSWIndex,
    "ivf": IVFIndex,
    "multihash": MultiHashIndex,
}


def _rerank_by_range(index, queries: np.ndarray, dist: np.ndarray, ids: np.ndarray, k: int):
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


# --------------------------------------------------------------------------------------------- build


def _new_faiss(kind: str, bits: int, p: dict, train_codes: np.ndarray | None):
    import faiss

    if kind in ("flat", "flat-dedup"):
        return faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(bits))
    if kind == "hnsw":
        inner = faiss.IndexBinaryHNSW(bits, p["m"])
        inner.hnsw.efConstruction = p["ef_construction"]
        idx = faiss.IndexBinaryIDMap(inner)
        idx.own_fields = True
        inner.this.disown()
        return idx
    if kind == "ivf":
        quantizer = faiss.IndexBinaryFlat(bits)
        idx = faiss.IndexBinaryIVF(quantizer, bits, p["nlist"])
        idx.own_fields = True
        quantizer.this.disown()
        idx.cp.seed = 1234
        with _omp_threads(1):  # k-means (BLAS + OpenMP) collapses when a core is busy; one thread is steady
            idx.train(_u8(train_codes))
        return idx
    if kind == "multihash":
        inner = faiss.IndexBinaryMultiHash(bits, p["nhash"], p["hash_bits"])
        idx = faiss.IndexBinaryIDMap(inner)
        idx.own_fields = True
        inner.this.disown()
        return idx
    raise AssertionError(kind)


def build_index(
    row_ids: np.ndarray,
    codes: np.ndarray,
    bits: int,
    kind: str = "flat",
    params: dict | None = None,
    item: str = "index",
    seed: int = 0,
) -> BinaryIndex:
    """A binary index of ``kind`` over ``codes`` whose ids are ``row_ids`` (params checked, see ``resolve_params``)."""
    row_ids = np.ascontiguousarray(row_ids, dtype=np.int64)
    codes = _u8(codes).reshape(len(row_ids), -1) if len(row_ids) else _u8(codes).reshape(0, bits // 8)
    if codes.shape[1] != bits // 8:
        raise ValueError(f"{item}: codes have {codes.shape[1]} bytes, expected {bits // 8} for {bits} bits")
    increasing = len(row_ids) < 2 or bool(np.all(row_ids[1:] > row_ids[:-1]))
    if not increasing and len(np.unique(row_ids)) != len(row_ids):
        raise ValueError(f"{item}: duplicate row_ids among the codes to index")
    p = resolve_params(kind, params, len(row_ids), bits, item)
    train = None
    if kind == "ivf":
        rng = np.random.default_rng(seed)
        n_train = min(p["train_size"], len(codes))
        pick = (
            np.sort(rng.choice(len(codes), size=n_train, replace=False))
            if n_train < len(codes)
            else slice(None)
        )
        train = codes[pick]
    if kind == "flat":
        order = None if increasing else np.argsort(row_ids, kind="stable")
    elif kind == "flat-dedup":
        order = _order_by_code(row_ids, codes)
    else:
        order = None
    fidx = _new_faiss(kind, bits, p, train)
    if kind == "hnsw":  # the graph holds each distinct code once, id = its smallest row_id
        rows, offsets, distinct = _distinct_layout(row_ids, codes)
        _add_chunked(fidx, rows[offsets[:-1]], distinct)
        companion = np.concatenate(([len(distinct), len(rows)], offsets, rows)).astype(np.int64)
        return HNSWIndex(fidx, bits, p, companion)
    if kind == "ivf":
        _ivf_add(fidx, row_ids, codes)
    else:
        _add_chunked(fidx, row_ids, codes, order)
    if kind == "flat":
        return FlatIndex(fidx, bits, p, ordered=True)
    return _CLASSES[kind](fidx, bits, p)


def verify_index(
    index,
    row_ids: np.ndarray,
    codes: np.ndarray,
    probes: int = 256,
    seed: int = 0,
    min_self_found: float = 0.99,
) -> list[str]:
    """Problems found (empty = good): the index must hold exactly the codes' rows, and sampled codes must
    find their own row at Hamming distance 0 (approximate kinds: find their code at distance 0 for at least
    ``min_self_found`` of the probes)."""
    problems = []
    if index.ntotal != len(row_ids):
        problems.append(f"index holds {index.ntotal} codes but the database has {len(row_ids)}")
    if len(row_ids) == 0:
        return problems
    if isinstance(index, BinaryIndex) and not problems:
        ids = np.sort(index.ids())
        ref = np.asarray(row_ids, np.int64)
        if not np.array_equal(ids, ref if bool(np.all(ref[1:] > ref[:-1])) else np.sort(ref)):
            missing = np.setdiff1d(row_ids, ids)
            problems.append(
                f"index ids differ from the database rows ({len(missing)} rows missing, e.g. "
                f"{missing[:3].tolist()})"
            )
    pick = np.random.default_rng(seed).choice(len(row_ids), size=min(probes, len(row_ids)), replace=False)
    q = _u8(codes[pick])
    exact = not isinstance(index, BinaryIndex) or index.exact
    if exact:
        lims, dist, ids = index.range_search(q, 1)
        for j, i in enumerate(pick):
            if row_ids[i] not in ids[lims[j] : lims[j + 1]]:
                problems.append(f"row {row_ids[i]} does not find itself at distance 0")
                break
    else:
        dist, ids = index.search(q, 1)
        found = float(np.mean(dist[:, 0] == 0))
        if found < min_self_found:
            problems.append(
                f"only {found:.1%} of {len(pick)} probes find their own code at distance 0 "
                f"(need {min_self_found:.0%})"
            )
    return problems


# --------------------------------------------------------------------------------------------- write / publish


def _hash_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def write_index(
    root: StorageRoot,
    index,
    catalogue: str,
    model_id: str,
    kind: str,
    bits: int,
    codes_rows: int,
    build_seconds: float,
    params: dict | None = None,
    mode: str = "rebuild",
) -> IndexManifest:
    """Serialise ``index`` and its manifest atomically under ``indexes/<catalogue>/<model_id>/``.

    Never overwrites the published file: if ``CURRENT`` points at ``<kind>.faiss`` of this model, the build
    goes to ``<kind>.b.faiss`` (and back again next time), so a run killed or failing its checks before
    ``publish`` leaves the published index whole. ``<kind>.manifest.json`` describes the latest build,
    ``<file>.json`` each file."""
    import faiss

    fidx = index.writable() if isinstance(index, BinaryIndex) else index
    if params is None and isinstance(index, BinaryIndex):
        params = index.params
    parts = index_dir(catalogue, model_id)
    slot = f"{kind}.b" if _published_file(root, catalogue, model_id, kind) == f"{kind}.faiss" else kind
    with tempfile.TemporaryDirectory(prefix="vitrieve-index-") as tmp:
        local = os.path.join(tmp, f"{kind}.faiss")
        faiss.write_index_binary(fidx, local)
        sha, size = _hash_file(local), os.path.getsize(local)
        with open(local, "rb") as src, root.atomic_open(*parts, f"{slot}.faiss") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        companion_file = companion_sha = ""
        if isinstance(index, HNSWIndex):
            companion_file = f"{slot}.rows.npy"
            local = os.path.join(tmp, companion_file)
            np.save(local, index.companion())
            companion_sha, size = _hash_file(local), size + os.path.getsize(local)
            with open(local, "rb") as src, root.atomic_open(*parts, companion_file) as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
    manifest = IndexManifest(
        kind=kind,
        bits=bits,
        ntotal=int(index.ntotal),
        codes_rows=codes_rows,
        sha256=sha,
        build_seconds=round(float(build_seconds), 4),
        catalogue=catalogue,
        model_id=model_id,
        file=f"{slot}.faiss",
        params=params or {},
        created_at=datetime.now(UTC).isoformat(),
        file_bytes=int(size),
        faiss_class=_faiss_class(fidx),
        mode=mode,
        companion_file=companion_file,
        companion_sha256=companion_sha,
    )
    text = json.dumps(asdict(manifest), indent=2)
    root.write_text(
        text, *parts, f"{slot}.faiss.json"
    )  # this file's manifest, for readers of the published index
    root.write_text(text, *parts, f"{kind}.manifest.json")
    root.write_text(text, *parts, "manifest.json")
    return manifest


def _published_file(root: StorageRoot, catalogue: str, model_id: str, kind: str) -> str | None:
    """The index file ``CURRENT`` serves if it is this model's ``kind``, else None."""
    if not root.exists("indexes", catalogue, "CURRENT"):
        return None
    pointer = current(root, catalogue)
    if pointer.get("model_id") != model_id or pointer.get("kind") != kind:
        return None
    manifest = published_manifest(root, catalogue, pointer)
    return manifest.file if manifest else f"{kind}.faiss"


def published_manifest(root: StorageRoot, catalogue: str, pointer: dict) -> IndexManifest | None:
    """The manifest of the index ``pointer`` (CURRENT) serves: the latest build's, else the one of either
    file slot, whichever has the pointer's sha256."""
    parts = index_dir(catalogue, pointer["model_id"])
    kind = pointer["kind"]
    for name in (f"{kind}.manifest.json", f"{kind}.faiss.json", f"{kind}.b.faiss.json"):
        if root.exists(*parts, name):
            manifest = IndexManifest.from_json(root.read_text(*parts, name))
            if manifest.sha256 == pointer["sha256"]:
                return manifest
    return None


def publish(root: StorageRoot, manifest: IndexManifest) -> str:
    """Point ``indexes/<catalogue>/CURRENT`` at this index (atomic replace); call only after checks pass."""
    pointer = {
        "model_id": manifest.model_id,
        "kind": manifest.kind,
        "sha256": manifest.sha256,
        "params": manifest.params,
        "published_at": datetime.now(UTC).isoformat(),
    }
    return root.write_text(json.dumps(pointer, indent=2), "indexes", manifest.catalogue, "CURRENT")


def current(root: StorageRoot, catalogue: str) -> dict:
    """The published pointer of a catalogue (model_id, kind, sha256, params)."""
    if not root.exists("indexes", catalogue, "CURRENT"):
        raise FileNotFoundError(
            f"catalogue {catalogue!r} has no published index (no {root.url('indexes', catalogue, 'CURRENT')})"
        )
    return json.loads(root.read_text("indexes", catalogue, "CURRENT"))


def read_manifest(root: StorageRoot, catalogue: str, model_id: str, kind: str = "flat") -> IndexManifest:
    return IndexManifest.from_json(root.read_text(*index_dir(catalogue, model_id), f"{kind}.manifest.json"))


# --------------------------------------------------------------------------------------------- load


def cache_dir() -> str:
    return os.environ.get("VITRIEVE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vitrieve"))


def _local_verified_copy(root: StorageRoot, parts: tuple[str, ...], file: str, sha256: str) -> str:
    """A local file holding ``file``'s bytes, whose sha256 matched (local root: the file itself; S3: a
    copy in the local cache, named by its sha256)."""
    url = root.url(*parts, file)
    if root.is_local:
        path = root.path(*parts, file)
        if _hash_file(path) != sha256:
            raise ValueError(f"index file {url} does not match its manifest's sha256")
        return path
    target_dir = os.path.join(cache_dir(), "indexes")
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, f"{sha256}{os.path.splitext(file)[1]}")
    if os.path.exists(target) and _hash_file(target) == sha256:
        return target
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target_dir, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, root.fs.open(root.path(*parts, file), "rb") as src:
            while chunk := src.read(1 << 22):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != sha256:
            raise ValueError(f"index file {url} does not match its manifest's sha256")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def read_index_file(
    path: str, kind: str, bits: int, params: dict, mmap: bool = True, companion: str | None = None
) -> BinaryIndex:
    """Open a serialised index of ``kind``; flat kinds are memory-mapped when ``mmap``."""
    import faiss

    if kind not in KINDS:
        raise ValueError(f"index file {path}: unknown index kind {kind!r}")
    # flat codes are mapped in place (IO_FLAG_MMAP_IFC). IVF is read into memory: IO_FLAG_MMAP turns its lists
    # into OnDiskInvertedLists, whose per-search prefetch threads cost ~1-4 ms a query (measured); the graph
    # (hnsw) and hash tables (multihash) are rebuilt in memory by faiss whatever the flag
    flags = {"flat": faiss.IO_FLAG_MMAP_IFC, "flat-dedup": faiss.IO_FLAG_MMAP_IFC}.get(kind, 0)
    fidx = faiss.read_index_binary(path, flags) if (mmap and flags) else faiss.read_index_binary(path)
    if kind == "hnsw":
        if not companion:
            raise ValueError(f"index file {path}: an hnsw index needs its rows companion file")
        return HNSWIndex(fidx, bits, params, np.load(companion, mmap_mode="r" if mmap else None))
    return _CLASSES[kind](fidx, bits, params)


def load_index(
    root: StorageRoot, catalogue: str, model_id: str | None = None, kind: str | None = None, mmap: bool = True
) -> tuple[BinaryIndex, IndexManifest]:
    """Load an index (default: the published one) and its manifest; checks the file's sha256 first."""
    manifest = None
    if model_id is None:
        pointer = current(root, catalogue)
        model_id, kind = pointer["model_id"], pointer["kind"]
        manifest = published_manifest(root, catalogue, pointer)
    parts = index_dir(catalogue, model_id)
    manifest = manifest or read_manifest(root, catalogue, model_id, kind or "flat")
    path = _local_verified_copy(root, parts, manifest.file, manifest.sha256)
    companion = None
    if manifest.companion_file:
        companion = _local_verified_copy(root, parts, manifest.companion_file, manifest.companion_sha256)
    return read_index_file(path, manifest.kind, manifest.bits, manifest.params, mmap, companion), manifest


@functools.lru_cache(maxsize=8)
def _cached(
    uri: str, catalogue: str, model_id: str, kind: str, sha256: str
) -> tuple[BinaryIndex, IndexManifest]:
    index, manifest = load_index(StorageRoot(uri), catalogue)  # the published one; the key pins its version
    if manifest.sha256 != sha256:
        raise ValueError(
            f"index of {catalogue!r} changed while loading (sha256 {manifest.sha256} != {sha256})"
        )
    return index, manifest


def load_index_cached(root: StorageRoot, catalogue: str) -> tuple[BinaryIndex, IndexManifest]:
    """The published index of ``catalogue``, loaded (and sha256-checked, memory-mapped) once per process and
    published version: each call reads only the small ``CURRENT`` pointer."""
    pointer = current(root, catalogue)
    return _cached(root.uri, catalogue, pointer["model_id"], pointer["kind"], pointer["sha256"])


# --------------------------------------------------------------------------------------------- search


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (distances, row_ids) per query, ranked by Hamming distance then row_id ascending (DESIGN.md);
    exact across ties at the k-th distance for exact kinds."""
    if isinstance(index, BinaryIndex):
        return index.search(queries, k)
    k = min(k, index.ntotal)  # a bare faiss index: heap search, then exact ties by range search
    queries = _u8(queries)
    dist, ids = index.search(queries, k)
    if k == 0:
        return dist, ids
    return _rerank_by_range(index, queries, dist, ids, k)


def timed_build(row_ids, codes, bits, kind="flat", params=None, item="index") -> tuple[BinaryIndex, float]:
    start = time.perf_counter()
    index = build_index(row_ids, codes, bits, kind, params, item)
    return index, time.perf_counter() - start


# --------------------------------------------------------------------------------------------- from codes


@dataclass
class BuildReport:
    mode: str  # rebuild | incremental | unchanged
    rows: int
    added_rows: int
    read_seconds: float
    build_seconds: float


def index_from_codes(
    root: StorageRoot,
    catalogue: str,
    model_id: str,
    kind: str = "flat",
    params: dict | None = None,
    keep_rows: np.ndarray | None = None,
    previous: tuple[BinaryIndex, IndexManifest] | None = None,
    item: str | None = None,
) -> tuple[BinaryIndex, np.ndarray, np.ndarray, BuildReport]:
    """Build (or extend) an index from the stored codes of (catalogue, model), streamed from Parquet in batches.

    ``keep_rows`` (sorted row_ids) restricts the index to those rows (the database). With ``previous`` (an
    index of the same model, kind and parameters, loaded with ``mmap=False``), rows it already holds are not
    re-added: when it holds a subset of the rows, only the new rows are added ("incremental"); when it holds
    exactly the rows, it is returned as is ("unchanged"); anything else (rows deleted) rebuilds. Codes are read,
    never re-encoded. Returns (index, row_ids, codes, report) where row_ids/codes are the indexed rows."""
    from storage.codes import codes_meta, read_code_arrays

    item = item or f"binary_index of {catalogue!r}"
    t0 = time.perf_counter()
    bits = int(codes_meta(root, catalogue, model_id)["bits"])
    row_ids, codes = read_code_arrays(root, catalogue, model_id, keep=keep_rows)
    read_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    if previous is not None:
        prev, manifest = previous
        same = (
            manifest.model_id == model_id
            and manifest.kind == kind
            and manifest.bits == bits
            and manifest.params
            == resolve_params(kind, {**manifest.params, **(params or {})}, len(row_ids), bits, item)
        )
        old = np.sort(prev.ids()) if same else None
        if same and len(old) <= len(row_ids) and bool(np.isin(old, row_ids, assume_unique=True).all()):
            new = ~np.isin(row_ids, old, assume_unique=True)
            if not new.any():
                return prev, row_ids, codes, BuildReport("unchanged", len(row_ids), 0, read_s, 0.0)
        if same and not prev.incremental_add:
            same = False  # this kind re-sorts every row on add: build from the codes instead
        if same and len(old) <= len(row_ids) and bool(np.isin(old, row_ids, assume_unique=True).all()):
            prev.add(row_ids[new], codes[new])
            report = BuildReport(
                "incremental", len(row_ids), int(new.sum()), read_s, time.perf_counter() - t1
            )
            return prev, row_ids, codes, report
    index = build_index(row_ids, codes, bits, kind, params, item)
    return (
        index,
        row_ids,
        codes,
        BuildReport("rebuild", len(row_ids), len(row_ids), read_s, time.perf_counter() - t1),
    )
