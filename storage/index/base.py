"""``BinaryIndex``: a faiss binary index whose ids are row_ids; each registered kind is a subclass of it."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from storage.index.registry import Param
from storage.index.threads import default_query_batch, run_chunked, search_threads

ADD_CHUNK = 1 << 20


def u8(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.uint8)


def sort_rows(dist: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query, order (distance, row_id) ascending; missing results (id -1) go last."""
    if dist.size == 0:
        return dist, ids
    d = np.where(ids < 0, np.iinfo(np.int32).max, dist).astype(np.int64)
    key_ids = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    order = np.lexsort((key_ids, d), axis=-1)
    return np.take_along_axis(dist, order, -1), np.take_along_axis(ids, order, -1)


def merge_top_k(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the k best (distance, row_id) of several (distances, row_ids) result arrays, in that order."""
    dist, ids = sort_rows(np.concatenate([d for d, _ in parts], 1), np.concatenate([i for _, i in parts], 1))
    return dist[:, :k], ids[:, :k]


def add_chunked(fidx, row_ids: np.ndarray, codes: np.ndarray, order: np.ndarray | None = None) -> None:
    """Add in chunks (in ``order`` if given, without materialising the permuted arrays)."""
    row_ids = np.ascontiguousarray(row_ids, dtype=np.int64)
    codes = u8(codes)
    for lo in range(0, len(row_ids), ADD_CHUNK):
        if order is None:
            fidx.add_with_ids(codes[lo : lo + ADD_CHUNK], row_ids[lo : lo + ADD_CHUNK])
        else:
            pick = order[lo : lo + ADD_CHUNK]
            fidx.add_with_ids(np.ascontiguousarray(codes[pick]), np.ascontiguousarray(row_ids[pick]))


def id_set_selector(ids: np.ndarray) -> tuple:
    """(selector, objects to keep alive) of the sorted int64 ``ids``: a bitmap when it stays small (at most
    1 MiB or 8 bytes per id; faster to probe), else faiss' hash set."""
    import faiss

    ids = np.ascontiguousarray(ids, dtype=np.int64)
    top = int(ids[-1]) if len(ids) else 0
    if len(ids) and int(ids[0]) >= 0 and top < max(1 << 23, 64 * len(ids)):
        bits = np.zeros(top // 8 + 1, np.uint8)
        np.bitwise_or.at(bits, ids >> 3, (1 << (ids & 7)).astype(np.uint8))
        sel = faiss.IDSelectorBitmap(bits)
        return sel, (sel, bits)
    sel = faiss.IDSelectorBatch(ids)
    return sel, (sel,)


def row_selector(allow: np.ndarray | None, exclude: np.ndarray | None) -> tuple:
    """(selector, objects to keep alive) selecting row_ids in ``allow`` (None = all) and not in ``exclude``
    (sorted int64 arrays)."""
    import faiss

    if allow is not None:
        if exclude is not None and len(exclude):
            allow = np.setdiff1d(allow, exclude, assume_unique=True)
        return id_set_selector(allow)
    inner, alive = id_set_selector(exclude)
    sel = faiss.IDSelectorNot(inner)
    return sel, (sel, *alive)


def id_mapped(inner):
    """``inner`` wrapped in an IndexBinaryIDMap that owns it."""
    import faiss

    idx = faiss.IndexBinaryIDMap(inner)
    idx.own_fields = True
    inner.this.disown()
    return idx


def idmap_ids(idmap, copy: bool = True) -> np.ndarray:
    """The row_ids of an IndexBinaryIDMap (a zero-copy view when ``copy`` is False: valid while it lives)."""
    import faiss

    n = int(idmap.ntotal)
    if n == 0:
        return np.zeros(0, np.int64)
    view = faiss.rev_swig_ptr(idmap.id_map.data(), n).view(np.int64)
    return view.copy() if copy else view


def flat_codes_view(flat, ntotal: int, nbytes: int) -> np.ndarray:
    """Zero-copy view of an IndexBinaryFlat's codes (works on memory-mapped storage too)."""
    import faiss

    if ntotal == 0:
        return np.zeros((0, nbytes), np.uint8)
    return faiss.rev_swig_ptr(flat.xb.data(), ntotal * nbytes).reshape(ntotal, nbytes)


class BinaryIndex:
    """A faiss binary index whose ids are row_ids, with the search semantics of its kind.

    A kind subclass declares ``kind``, ``exact``, ``param_specs`` and ``incremental_add``, and implements
    ``from_codes``; it overrides ``derive_params``, ``read_flags``, ``open``, ``add`` and the companion file
    where its kind needs to."""

    kind: ClassVar[str] = "?"
    exact: ClassVar[bool] = False
    incremental_add: ClassVar[bool] = True  # add() appends rows; False: index_from_codes rebuilds instead
    param_specs: ClassVar[tuple[Param, ...]] = ()
    companion_name: ClassVar[str] = ""  # a companion array written beside the faiss file ("" = none)
    removable: ClassVar[bool] = False  # remove() drops rows in place (faiss remove_ids); else rebuild
    selector_search: ClassVar[bool] = False  # restricted() searches through a faiss IDSelector
    supports_delta: ClassVar[bool] = False  # empty_like() starts a delta segment (storage.index.segments)

    def __init__(self, faiss_index, bits: int, params: dict):
        self.index = faiss_index
        self.bits = bits
        self.nbytes = bits // 8
        self.params = dict(params)
        self.query_batch = default_query_batch()
        self.threads = 0  # 0 = search_threads()
        self.search_params = None  # faiss SearchParameters (an IDSelector) of a restricted() view
        self.stored = None  # the manifest it was loaded from (storage.index.load), None when built here
        self.configure()

    # - the kind: parameters, build, read
    @classmethod
    def default_params(cls) -> dict:
        """Parameters and their defaults; ``None`` values are derived from the database size at build time."""
        return {p.name: p.default for p in cls.param_specs}

    @classmethod
    def derive_params(cls, p: dict, ntotal: int, bits: int, item: str) -> dict:
        """Fill the derived parameters of ``p`` (the defaults merged with the given ones) and check them for
        ``ntotal`` codes of ``bits`` bits; raises ValueError naming ``item``."""
        return p

    @classmethod
    def from_codes(
        cls, row_ids: np.ndarray, codes: np.ndarray, bits: int, params: dict, increasing: bool, seed: int
    ) -> BinaryIndex:
        """A new index over checked rows (int64 row_ids, distinct; ``increasing`` if sorted) and their uint8
        codes, with resolved ``params``."""
        raise NotImplementedError

    @classmethod
    def read_flags(cls) -> int:
        """faiss IO flags to read a file of this kind with when memory-mapping is asked for (0 = read it)."""
        return 0

    @classmethod
    def open(cls, faiss_index, bits: int, params: dict, companion: np.ndarray | None) -> BinaryIndex:
        """The index around a faiss object read from a file (and its companion array, if the kind has one)."""
        return cls(faiss_index, bits, params)

    def companion(self) -> np.ndarray | None:
        """The array to write beside the faiss file (kinds with a ``companion_name``)."""
        return None

    # - search behaviour
    def configure(self) -> None:
        """Apply runtime search parameters (after build or load)."""

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, ids = self.index.search(queries, k, params=self.search_params)
        return sort_rows(dist, ids)

    def ids(self) -> np.ndarray:
        return idmap_ids(self.index)

    def id_parts(self) -> list[np.ndarray]:
        """The row_ids as the index keeps them, one array per part (no concatenated copy)."""
        return [self.ids()]

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def d(self) -> int:
        return self.bits

    def add(self, row_ids: np.ndarray, codes: np.ndarray) -> None:
        add_chunked(self.index, row_ids, codes)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (distances int32, row_ids int64) per query; exact kinds rank by (distance, row_id)."""
        queries = u8(queries).reshape(-1, self.nbytes)
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
        return self.index.range_search(u8(queries).reshape(-1, self.nbytes), int(radius))

    def self_probe_problems(self, queries: np.ndarray, rows: np.ndarray, min_self_found: float) -> list[str]:
        """Probes (codes of ``rows``) must find themselves: exact kinds each its own row at distance 0,
        approximate kinds their code at distance 0 for at least ``min_self_found`` of them."""
        if self.exact:
            lims, _, ids = self.range_search(queries, 1)
            for j, row in enumerate(rows):
                if row not in ids[lims[j] : lims[j + 1]]:
                    return [f"row {row} does not find itself at distance 0"]
            return []
        dist, _ = self.search(queries, 1)
        found = float(np.mean(dist[:, 0] == 0))
        if found < min_self_found:
            return [
                f"only {found:.1%} of {len(rows)} probes find their own code at distance 0 "
                f"(need {min_self_found:.0%})"
            ]
        return []

    # - deletes and filters
    def row_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(row_ids, codes) of every row the index holds (views where the kind allows: read, never write)."""
        raise NotImplementedError(f"{self.kind} indexes do not list their codes")

    def remove(self, row_ids: np.ndarray) -> int:
        """Drop ``row_ids`` in place (kinds with ``removable``); returns how many rows the index held."""
        raise NotImplementedError(f"{self.kind} indexes cannot remove rows in place; rebuild them")

    def restricted(self, allow: np.ndarray | None, exclude: np.ndarray | None) -> BinaryIndex:
        """A view of this index whose searches return only rows in ``allow`` (None = any) and not in
        ``exclude`` (sorted int64 row_ids), through a faiss IDSelector (kinds with ``selector_search``)."""
        raise NotImplementedError(f"{self.kind} indexes do not search through ID selectors")

    def empty_like(self) -> BinaryIndex:
        """An empty index of this kind sharing its trained structure, for a delta segment (``supports_delta``)."""
        raise NotImplementedError(f"{self.kind} indexes do not start delta segments")

    def memory_bytes(self) -> int:
        """Approximate resident size of the index structures."""
        return self.ntotal * (self.nbytes + 8)

    def writable(self):
        """The faiss object to serialise."""
        return self.index
